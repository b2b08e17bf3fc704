"""SQLite ledger (the embedded default): one connection, WAL, explicit transactions."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from gateway.ledger.base import Entry, Ledger
from gateway.ledger.tx import Row, Tx

_T = TypeVar("_T")

# Another process (a second persister, `callgate audit`) may hold the write lock briefly.
BUSY_TIMEOUT_MS = 10_000


class _SqliteTx(Tx):
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> None:
        await self._db.execute(sql, args)

    async def execute_many(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await self._db.executemany(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._db.execute(sql, args) as cur:
            return [tuple(r) for r in await cur.fetchall()]


class _BlockingTx(Tx):
    """A transaction on the sqlite3 connection itself, for code running in aiosqlite's
    thread: its awaits never suspend (see SqliteLedger.apply_batches)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        self._conn.execute(sql, args)

    async def execute_many(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [tuple(r) for r in self._conn.execute(sql, args).fetchall()]


def _run_blocking(coro: Coroutine[Any, Any, _T]) -> _T:
    """The result of a coroutine that never suspends, run to its end here."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(_T, done.value)
    coro.close()
    raise RuntimeError("a blocking ledger transaction suspended")


class SqliteLedger(Ledger):
    kind = "sqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()  # one transaction at a time on the one connection

    @classmethod
    async def open(cls, path: Path) -> SqliteLedger:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await db.execute("PRAGMA journal_mode = WAL")
        # FULL: a committed batch survives a power loss before its XACK is sent.
        await db.execute("PRAGMA synchronous = FULL")
        return cls(db)

    async def apply_batches(self, batches: Sequence[tuple[str, Sequence[Entry]]]) -> int:
        """As Ledger.apply_batches, in ONE hop to aiosqlite's thread: the whole transaction
        (BEGIN, the presence checks, the inserts, the projections, COMMIT) runs there on the
        sqlite3 connection. Statement by statement, every statement would cost a round trip
        between the event loop and that thread (a queue put, a thread wake-up, a callback
        back): most of the persister's CPU per event at a switch's pace (docs/pace.md)."""
        async with self._lock:
            run_in_thread: Any = self._db._execute  # aiosqlite's: runs fn in its thread
            return int(await run_in_thread(self._apply_blocking, batches))

    def _apply_blocking(self, batches: Sequence[tuple[str, Sequence[Entry]]]) -> int:
        conn = self._db._conn  # in aiosqlite's thread: the connection's own
        conn.execute("BEGIN IMMEDIATE")
        try:
            new = _run_blocking(self._apply_in(_BlockingTx(conn), batches))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return new

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._db)
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def close(self) -> None:
        await self._db.close()
