"""The reaper (D33): closes calls whose grant expired more than a grace period ago,
billed as fully used.

Candidates come from each partition's ``active`` zset (scored by grant expiry); the close
itself is the Lua ``end_call`` with ``expired``: atomic, re-checks expiry + grace inside
Redis and is idempotent, so several reapers (one per gateway process) may run at once and
each call is still billed exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from gateway import metrics
from gateway.ledger.backoff import Outage
from gateway.redis.keys import all_partitions
from gateway.redis.store import Status, Store, StoreError
from gateway.rules.clock import Clock, candidate_months

log = logging.getLogger(__name__)

REAP_BATCH_MAX = 100
# A pass reads every partition's active set (one command each), idle or not: every 5 s keeps
# an idle gateway quiet, and a lost call is closed at most that long after its grace.
REAP_INTERVAL_SECONDS = 5.0


@dataclass
class Reaper:
    store: Store
    clock: Clock
    grace_seconds: int
    clock_skew_seconds: int
    retention_seconds: int
    reaped_total: int = 0
    # Its passes are a second apart already: back off from there.
    outage: Outage = field(default_factory=lambda: Outage(
        "reaper", log, delay_min_seconds=REAP_INTERVAL_SECONDS))

    async def run_once(self) -> int:
        """One pass over every partition; returns the calls this reaper closed."""
        now = int(self.clock.now())
        months = candidate_months(now, self.clock_skew_seconds)
        closed = 0
        partitions = all_partitions(self.store.partitions)
        # Every partition's candidates at once: the reads leave in one write and come back
        # in one read (a pass costs one wake-up, not one per partition); each is O(log n).
        dues = await asyncio.gather(*(
            self.store.backend.execute(p.active, "ZRANGEBYSCORE", p.active, "-inf",
                                       now - self.grace_seconds, "LIMIT", 0, REAP_BATCH_MAX)
            for p in partitions))
        for p, due in zip(partitions, dues, strict=True):
            for member in due:
                tenant_id, _, call_id = str(member).partition("/")
                try:
                    bill = await self.store.end(
                        tenant_id, call_id, now, 0, months, self.retention_seconds,
                        expired=True, grace_seconds=self.grace_seconds)
                except StoreError as exc:
                    if exc.status is Status.CALL_NOT_FOUND:  # record gone: stale member
                        await self.store.backend.execute(p.active, "ZREM", p.active, member)
                    continue  # CALL_ENDED: extended meanwhile, not due yet
                if not bill.replayed:
                    closed += 1
        self.reaped_total += closed
        return closed

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """A pass every REAP_INTERVAL_SECONDS; while Redis fails, backed off (one log line
        per change of state, gateway.ledger.backoff)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            wait = REAP_INTERVAL_SECONDS
            try:
                metrics.count_grants_reaped(await self.run_once())
            except Exception as exc:
                wait = await self.outage.failed("redis", exc)
            else:
                await self.outage.succeeded()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
