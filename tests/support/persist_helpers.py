"""Helpers of the persistence tests: drain the persister with a deadline, compare Redis
streams with the ledger."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.ledger import Ledger
from gateway.ledger.persister import Persister, persister_status
from gateway.redis.keys import all_partitions
from gateway.redis.store import Store

DRAIN_DEADLINE_SECONDS = 30.0


async def drain(persister: Persister, deadline_s: float = DRAIN_DEADLINE_SECONDS) -> None:
    """Run the persister until nothing is left unacknowledged (polls; no fixed sleeps)."""
    end = time.monotonic() + deadline_s
    while True:
        await persister.run_once()
        status = await persister_status(persister.store)
        if status["backlog_entries"] == 0:
            return
        assert time.monotonic() < end, f"persister did not drain: {status}"
        await asyncio.sleep(0.01)


async def wait_drained(store: Store, deadline_s: float = DRAIN_DEADLINE_SECONDS) -> None:
    """Wait until another process's persister has acknowledged everything."""
    end = time.monotonic() + deadline_s
    while True:
        status = await persister_status(store)
        if status["backlog_entries"] == 0:
            return
        assert time.monotonic() < end, f"persister did not drain: {status}"
        await asyncio.sleep(0.05)


async def entries_added(store: Store) -> int:
    """Entries ever appended to every partition stream (survives trimming)."""
    total = 0
    for p in all_partitions(store.partitions):
        if int(await store.backend.execute(p.events, "EXISTS", p.events)):
            info = await store.backend.execute(p.events, "XINFO", "STREAM", p.events)
            d = {str(info[i]): info[i + 1] for i in range(0, len(info), 2)}
            total += int(d["entries-added"])
    return total


async def scalar(ledger: Ledger, sql: str, *args: Any) -> Any:
    return (await ledger.query(sql, *args))[0][0]
