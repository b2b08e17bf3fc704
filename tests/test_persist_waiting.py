"""The persister waits for events instead of polling (one Redis server): idle, it costs
Redis one blocking read per BLOCK_MILLISECONDS; an event wakes it at once; nothing is
lost or persisted twice, and a stop ends it at once, not at the end of its blocking read
(CLIENT UNBLOCK: BLOCK_MILLISECONDS is longer than the bound on the task's end below)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis

from gateway.ledger import Ledger, open_ledger
from gateway.ledger import persister as persist_mod
from gateway.ledger.persister import Persister
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock
from tests.support.gateway import T0, start_gateway
from tests.support.persist_helpers import entries_added, scalar

NEW_YORK = "+12125550123"


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    led = await open_ledger(ledger_url)
    yield led
    await led.close()


def xreadgroup_calls(r: redis.Redis) -> int:
    stats = cast(dict[str, Any], r.info("commandstats"))
    return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))


async def until(check: Any, what: str, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_an_idle_persister_blocks_instead_of_polling(
        own_redis: RedisServer, aiohttp_client: Any, ledger: Ledger) -> None:
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url, partitions=8)
    store = Store.from_url(own_redis.url, 8)
    waiter = Store.from_url(own_redis.url, 8)
    persister = Persister(store, ledger, consumer="w", waiter=waiter)
    stop = asyncio.Event()
    task = asyncio.create_task(persister.run(stop))
    r = redis.Redis.from_url(own_redis.url)
    try:
        await gw.tenant("t1")
        await gw.user("t1", "u", "US", "domestic")
        assert (await gw.call("t1", "c1", NEW_YORK, user="u"))["decision"] == "allow"
        await gw.end("t1", "c1", 61)

        async def all_persisted() -> bool:
            return bool(await scalar(ledger, "SELECT COUNT(*) FROM events")
                        == await entries_added(store))
        await until(all_persisted, "the events reached the ledger")
        # Idle: the reads Redis serves in a second are the blocking ones, not a round of
        # one read per stream (9 streams here) every 50 ms as a polling persister makes.
        before, t0 = xreadgroup_calls(r), time.monotonic()
        await asyncio.sleep(1.5)  # the idle period measured, not a synchronisation
        reads_per_s = (xreadgroup_calls(r) - before) / (time.monotonic() - t0)
        assert reads_per_s <= 1000 / persist_mod.BLOCK_MILLISECONDS + 2, reads_per_s
        # An event wakes it: the new call reaches the ledger.
        assert (await gw.call("t1", "c2", NEW_YORK, user="u"))["decision"] == "allow"

        async def c2_persisted() -> bool:
            return bool(await scalar(
                ledger, "SELECT COUNT(*) FROM calls WHERE call_id = ?", "c2") == 1)
        await until(c2_persisted, "the call after the idle period reached the ledger")
    finally:
        stop.set()
        assert persist_mod.BLOCK_MILLISECONDS > 5000  # so the bound below tests the unblock
        await asyncio.wait_for(task, 5)
        r.close()
        await store.close()
        await waiter.close()
    assert await scalar(ledger, "SELECT COUNT(*) FROM events") == await entries_added(store)
    assert await scalar(ledger, "SELECT COUNT(*) FROM calls WHERE tenant = ?", "t1") == 2
