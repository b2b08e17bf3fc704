"""The aiosqlite internals the SQLite ledger builds on (gateway/ledger/sqlite.py runs a
whole persister transaction in aiosqlite's thread, in one hop: docs/pace.md), checked by
name: an upgrade that renames or reshapes one fails here, loudly. pyproject.toml pins
aiosqlite to the minor version this was tested with."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

TESTED_MINOR = (0, 22)


def test_aiosqlite_is_a_tested_minor_version() -> None:
    version = tuple(int(x) for x in aiosqlite.__version__.split(".")[:2])
    assert version == TESTED_MINOR, (
        f"aiosqlite {aiosqlite.__version__}: the ledger was tested with {TESTED_MINOR}; "
        "check this file's internals, then the pin")


async def test_execute_runs_a_function_in_the_connections_thread(tmp_path: Path) -> None:
    db = await aiosqlite.connect(str(tmp_path / "x.db"), isolation_level=None)
    try:
        def in_thread() -> int:
            conn = db._conn
            assert isinstance(conn, sqlite3.Connection)
            conn.execute("CREATE TABLE t (x INTEGER)")
            conn.execute("INSERT INTO t VALUES (7)")
            return int(conn.execute("SELECT x FROM t").fetchone()[0])

        assert await db._execute(in_thread) == 7
    finally:
        await db.close()
