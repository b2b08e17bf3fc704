"""Voids: an authorize answered other than allow leaves nothing in Redis, whatever happened.

The gateway answers a switch within its Redis deadline. When that passes with the FCALL
written (a stalled or overloaded Redis, a connection that broke with the command in flight),
the switch is told deny / service_unavailable, but Redis may still run the function, or
have run it already, and reserve the call. Two things keep the answer true:

* the function refuses work Redis starts after the caller's deadline (authorize's ARGV[25],
  wall-clock milliseconds: status LATE, nothing written);
* for the window the deadline cannot close (the function ran in time but its reply came
  late or never, or the two clocks disagree), the worker voids the call: one void_call per
  such attempt (lua/65_void.lua), queued here and retried with back-off until it lands.
  Sent on the same connection after the authorize, it runs after it.

void_call undoes the call only for the attempt that last answered it allow, and only while
the switch has neither extended nor ended it, so a retry answered allow meanwhile keeps its
call. Never on the call path: a background task per worker drains the queue in batches.
What is not voided when a worker dies with voids queued is the documented residual
(docs/overload.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import NamedTuple

from gateway import metrics
from gateway.config import Settings
from gateway.errors import StoreUnavailable
from gateway.redis.store import Store
from gateway.rules.clock import Clock, candidate_months

log = logging.getLogger(__name__)

# Voids sent together (gathered) per round; a round that fails waits, doubling from the
# first delay to the last, then tries again.
BATCH = 64
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0


class Void(NamedTuple):
    tenant_id: str
    call_id: str
    attempt: str


class Voider:
    """The worker's queue of voids, drained by one background task."""

    def __init__(self, settings: Settings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._queue: collections.deque[Void] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while the queue is empty
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.voided = 0  # calls undone since start (tests, logs)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def add(self, tenant_id: str, call_id: str, attempt: str) -> None:
        self._queue.append(Void(tenant_id, call_id, attempt))
        metrics.set_voids_pending(len(self._queue))
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._drain_queue()
        finally:
            if not self._queue:
                self._idle.set()

    async def _drain_queue(self) -> None:
        delay = RETRY_FIRST_SECONDS
        down_since: float | None = None
        while self._queue:
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            results = await asyncio.gather(*(self._void(v) for v in batch),
                                            return_exceptions=True)
            failed: list[Void] = []
            error: BaseException | None = None
            for v, r in zip(batch, results, strict=True):
                if isinstance(r, BaseException):
                    failed.append(v)
                    error = r
                else:
                    metrics.count_void(r)
                    self.voided += int(r)
            for _ in batch:
                self._queue.popleft()
            self._queue.extendleft(reversed(failed))
            metrics.set_voids_pending(len(self._queue))
            if not failed:
                if down_since is not None:
                    log.warning("voids reach Redis again after %.1f s; %d pending",
                                time.monotonic() - down_since, len(self._queue))
                delay, down_since = RETRY_FIRST_SECONDS, None
                continue
            if down_since is None:
                down_since = time.monotonic()
                log.warning("voids cannot reach Redis (%r); %d pending, retrying",
                            error, len(self._queue))
            if self._closing:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _void(self, v: Void) -> bool:
        now = int(self.clock.now())
        return await self.store.void_call(
            v.tenant_id, v.call_id, now, v.attempt,
            candidate_months(now, self.settings.clock_skew_seconds),
            self.settings.call_retention_seconds)

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the queue to empty (graceful shutdown); True if it
        did. Afterwards no retry is scheduled."""
        if self._queue:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._run())
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout_s)
        self._closing = True
        if self._queue:
            log.error("%d voids not delivered at shutdown: those calls may stay reserved until "
                      "the reaper bills them", len(self._queue))
        return not self._queue

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable, TimeoutError):
                await self._task
