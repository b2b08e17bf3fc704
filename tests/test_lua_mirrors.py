"""Constants that lua/00_lib.lua and the Python side each hold a copy of: one value, two
copies, so a change to one that forgets the other fails here rather than in production."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.redis.keys import (
    CALL_PACKED_FIELDS,
    CLOSED_CODED,
    CLOSED_FIELDS,
    CLOSED_WORDS,
    CODE_ALPHABET,
)
from gateway.redis.store import Status

LIB = (Path(__file__).parent.parent / "lua" / "00_lib.lua").read_text()


def test_lua_packs_the_fields_python_unpacks() -> None:
    """CALL_PACKED and gateway.redis.keys.CALL_PACKED_FIELDS: the same fields, in one order."""
    body = LIB.split("local CALL_PACKED = {", 1)[1].split("}", 1)[0]
    assert tuple(re.findall(r"'([a-z0-9]+)'", body)) == CALL_PACKED_FIELDS


def test_lua_closes_a_call_with_the_fields_python_reads() -> None:
    """CLOSED_FIELDS of lua/00_lib.lua and gateway.redis.keys.CLOSED_FIELDS: one order."""
    body = LIB.split("local CLOSED_FIELDS = {", 1)[1].split("}", 1)[0]
    assert tuple(re.findall(r"'([a-z0-9]+)'", body)) == CLOSED_FIELDS
    coded = LIB.split("local CLOSED_CODED = {", 1)[1].split("}", 1)[0]
    assert tuple(CLOSED_FIELDS[int(k) - 1] for k in re.findall(r"\d+", coded)) == CLOSED_CODED
    words = LIB.split("local CLOSED_WORDS = {", 1)[1].split("}", 1)[0]
    assert tuple(re.findall(r"'([a-z_]+)'", words)) == CLOSED_WORDS
    assert f"local CODE_ALPHABET = '{CODE_ALPHABET}'" in LIB
    assert len(CLOSED_WORDS) <= len(CODE_ALPHABET)


def test_lua_status_codes_are_the_store_status() -> None:
    """The reply status constants (local NAME = N) and gateway.redis.store.Status."""
    lua = {name: int(value) for name, value in
           re.findall(r"^local ([A-Z_]+) = (-?\d+)$", LIB, re.MULTILINE)
           if name not in ("AUDIT_MAX_ENTRIES", "MEMO_MAX", "LIBRARY_VERSION",
                           "GC_PAUSE_PERCENT")}
    assert lua == {s.name: s.value for s in Status}
