"""PostgreSQL ledger (production): an asyncpg pool; SQL placeholders ``?`` become $n."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from typing import Any

import asyncpg

from gateway.ledger.base import Ledger
from gateway.ledger.tx import Row, Tx

POOL_SIZE_MAX = 4
COMMAND_TIMEOUT_SECONDS = 30.0


@lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)


class _PgTx(Tx):
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(_numbered(sql), *args)

    async def execute_many(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(_numbered(sql), args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [tuple(r) for r in await self._conn.fetch(_numbered(sql), *args)]


class PostgresLedger(Ledger):
    kind = "postgres"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresLedger:
        # min_size 0: a pool with a floor reconnects on its own in the background while the
        # server is down, logging a traceback per try; the persister's back-off is the one
        # retry loop (gateway.ledger.backoff). The migration run at open still connects.
        pool = await asyncpg.create_pool(url, min_size=0, max_size=POOL_SIZE_MAX,
                                         command_timeout=COMMAND_TIMEOUT_SECONDS)
        return cls(pool)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PgTx(conn)

    async def close(self) -> None:
        await self._pool.close()
