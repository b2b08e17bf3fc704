"""The ledger's one small async interface, shared by the SQLite and PostgreSQL backends.

SQL is written once with ``?`` placeholders (PostgreSQL's backend renumbers them to $n).
A backend supplies transactions; migrations, event application and queries live here.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.ledger.project import Stmt, run_statements, statements
from gateway.ledger.schema import LATEST_VERSION, MIGRATIONS
from gateway.ledger.tx import Row, Tx


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: id "ms-seq", event type, tenant and the JSON ``data`` field (type
    and tenant "" when the entry has only ``data``, whose JSON names them)."""

    entry_id: str
    type: str
    tenant: str
    data: str

    @property
    def ms(self) -> int:
        return int(self.entry_id.split("-", 1)[0])


CDR_COLUMNS = (
    "tenant", "call_id", "user_id", "direction", "from_number", "to_number", "dest_country",
    "dest_class", "started_at", "ended_at", "duration_seconds", "billed_seconds",
    "overrun_seconds", "pool", "month", "domestic_pool_minutes", "international_pool_minutes",
    "credits_micro", "rate_prefix", "reason", "state", "entry_id",
)


class Ledger(abc.ABC):
    kind: str

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Tx]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def migrate(self) -> int:
        """Bring the schema to the latest version; returns it. Safe to run concurrently:
        each migration's version row is inserted in its own transaction (unique)."""
        async with self.transaction() as tx:
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                             "version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)")
        for version, migration in MIGRATIONS:
            with contextlib.suppress(Exception):  # lost a race with another process
                async with self.transaction() as tx:
                    done = await tx.fetch(
                        "SELECT 1 FROM schema_version WHERE version = ?", version)
                    if done:
                        continue
                    for sql in migration:
                        await tx.execute(sql)
                    await tx.execute("INSERT INTO schema_version VALUES (?, "
                                     "CAST(strftime('%s','now') AS INTEGER))"
                                     if self.kind == "sqlite" else
                                     "INSERT INTO schema_version VALUES (?, "
                                     "CAST(EXTRACT(EPOCH FROM now()) AS BIGINT))", version)
        rows = await self.query("SELECT MAX(version) FROM schema_version")
        version = int(rows[0][0] or 0)
        if version < LATEST_VERSION:  # a migration failed, and not because of a race
            raise RuntimeError(f"ledger schema at version {version}, expected "
                               f"{LATEST_VERSION}: a migration failed")
        return version

    async def apply(self, stream: str, entries: Sequence[Entry]) -> int:
        """Write a batch in one transaction; entries already present change nothing.
        Returns how many were new."""
        return await self.apply_batches([(stream, entries)])

    async def apply_batches(self, batches: Sequence[tuple[str, Sequence[Entry]]]) -> int:
        """Batches of several streams in ONE transaction (one commit, one fsync). A
        concurrent writer of the same entries makes one of the two transactions fail on
        the primary key (never a double projection); the persister retries it and then
        finds them present."""
        async with self.transaction() as tx:
            return await self._apply_in(tx, batches)

    async def _apply_in(self, tx: Tx, batches: Sequence[tuple[str, Sequence[Entry]]]) -> int:
        """apply_batches' work inside its transaction ``tx``: awaits nothing but ``tx``."""
        new = 0
        stmts: list[Stmt] = []
        balance: dict[str, int] = {}
        for stream, entries in batches:
            rows = await self._new_rows(tx, stream, entries, stmts, balance)
            if rows:
                await tx.execute_many(
                    "INSERT INTO events (stream, entry_id, entry_ms, type, tenant, ts, "
                    "data) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                new += len(rows)
        stmts += [("UPDATE tenants SET balance_micro = balance_micro + ? "
                   "WHERE tenant = ?", (delta, t)) for t, delta in balance.items()]
        await run_statements(tx, stmts)
        return new

    @staticmethod
    async def _new_rows(tx: Tx, stream: str, entries: Sequence[Entry], stmts: list[Stmt],
                        balance: dict[str, int]) -> list[tuple[Any, ...]]:
        if not entries:
            return []
        ids = [e.entry_id for e in entries]
        marks = ", ".join("?" * len(ids))
        present = {str(r[0]) for r in await tx.fetch(
            f"SELECT entry_id FROM events WHERE stream = ? AND entry_id IN ({marks})",
            stream, *ids)}
        rows: list[tuple[Any, ...]] = []
        for e in entries:
            if e.entry_id in present:
                continue
            present.add(e.entry_id)
            data: dict[str, Any] = orjson.loads(e.data)
            # An entry of 'data' alone (call events since library version 3: lua/00_lib.lua
            # emit_text) names its type and tenant in its JSON.
            etype, tenant = e.type or str(data["type"]), e.tenant or str(data["tenant"])
            rows.append((stream, e.entry_id, e.ms, etype, tenant, int(data.get("ts", 0)),
                         e.data))
            stmts += statements(e.entry_id, etype, tenant, data, balance)
        return rows

    async def query(self, sql: str, *args: Any) -> list[Row]:
        async with self.transaction() as tx:
            return await tx.fetch(sql, *args)

    async def cdrs(self, tenant: str, from_ts: int | None, to_ts: int | None, limit: int,
                   before: tuple[int, str] | None) -> list[dict[str, Any]]:
        """Ended calls newest first (ended_at, call_id descending); ``before`` is the
        cursor: the (ended_at, call_id) of the last row of the previous page."""
        sql = f"SELECT {', '.join(CDR_COLUMNS)} FROM cdrs WHERE tenant = ?"
        args: list[Any] = [tenant]
        if from_ts is not None:
            sql += " AND ended_at >= ?"
            args.append(from_ts)
        if to_ts is not None:
            sql += " AND ended_at < ?"
            args.append(to_ts)
        if before is not None:
            sql += " AND (ended_at < ? OR (ended_at = ? AND call_id < ?))"
            args += [before[0], before[0], before[1]]
        sql += " ORDER BY ended_at DESC, call_id DESC LIMIT ?"
        args.append(limit)
        return [dict(zip(CDR_COLUMNS, r, strict=True)) for r in await self.query(sql, *args)]

    async def stream_cdrs(self, tenant: str, from_ts: int, to_ts: int,
                          page: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """Every CDR of a time range, oldest first, in pages (exports)."""
        after: tuple[int, str] = (from_ts - 1, "\uffff")
        while True:
            rows = await self.query(
                f"SELECT {', '.join(CDR_COLUMNS)} FROM cdrs WHERE tenant = ? AND ended_at < ? "
                "AND (ended_at > ? OR (ended_at = ? AND call_id > ?)) "
                "ORDER BY ended_at, call_id LIMIT ?",
                tenant, to_ts, after[0], after[0], after[1], page)
            for r in rows:
                yield dict(zip(CDR_COLUMNS, r, strict=True))
            if len(rows) < page:
                return
            after = (int(rows[-1][9]), str(rows[-1][1]))
