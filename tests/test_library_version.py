"""A process does not load its function library over one of a higher version: a newer
gateway runs against that Redis, and this version could neither read what that library
stores nor call its functions (docs/operations.md, "Upgrading")."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import NewerLibrary
from gateway.redis.contract import LIBRARY_VERSION
from gateway.redis.server import RedisServer
from gateway.redis.store import LIBRARY_NAME, Store, library_version


def library(version: int | None) -> str:
    declared = f"local LIBRARY_VERSION = {version}\n" if version is not None else ""
    return (f"#!lua name={LIBRARY_NAME}\n{declared}"
            "redis.register_function('stand_in', function() return 1 end)\n")


async def loaded_version(store: Store) -> int:
    listed: Any = await store.backend.execute(
        "", "FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME, "WITHCODE")
    return library_version(listed)


async def test_a_newer_library_stays_and_an_older_one_is_replaced(
        own_redis: RedisServer) -> None:
    store = Store.from_url(own_redis.url, 4)
    try:
        await store.load_functions()  # none yet
        assert await loaded_version(store) == LIBRARY_VERSION > 0
        await store.backend.execute("", "FUNCTION", "LOAD", "REPLACE",
                                    library(LIBRARY_VERSION + 1))
        with pytest.raises(NewerLibrary) as refused:
            await store.load_functions()
        assert (refused.value.held, refused.value.ours) == (LIBRARY_VERSION + 1,
                                                            LIBRARY_VERSION)
        assert await loaded_version(store) == LIBRARY_VERSION + 1  # left as it was
        # A library of an earlier version (before the declaration: none) is replaced.
        for older in (None, LIBRARY_VERSION - 1, LIBRARY_VERSION):
            await store.backend.execute("", "FUNCTION", "LOAD", "REPLACE", library(older))
            await store.load_functions()
            assert await loaded_version(store) == LIBRARY_VERSION
    finally:
        await store.close()
