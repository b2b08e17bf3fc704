"""Persister and reaper together until a stop event: the body of ``callgate persist``
(``callgate serve`` runs that command as a supervised child process, see persist_child).
They use a Store of their own: their traffic never queues behind or in front of call
control on the call path's connection."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from gateway import metrics
from gateway.config import Settings
from gateway.ledger.backoff import Outage, open_ledger_when_up
from gateway.ledger.persister import CLAIM_IDLE_MS, Persister
from gateway.ledger.reaper import Reaper
from gateway.redis.client import parse_url
from gateway.redis.store import Store
from gateway.rules.clock import Clock, SystemClock


def claim_idle_ms(env: Mapping[str, str] = os.environ) -> int:
    return int(env.get("CALLGATE_PERSIST_CLAIM_IDLE_MS", str(CLAIM_IDLE_MS)))


async def run_persister(settings: Settings, stop: asyncio.Event,
                        clock: Clock | None = None, reaper: bool = True) -> None:
    """Until ``stop``: persist every stream (and, with ``reaper``, close lost calls).
    The batched hot-path metrics (the reaper's FCALL latencies) are flushed every second
    and at the end, as an HTTP worker's are."""
    assert settings.redis_url, "the persister needs settings.redis_url"
    store = Store.from_url(settings.redis_url, settings.partitions)
    # A database down at start-up is waited for here, with the persister's back-off and
    # log lines, rather than crashing the process into the supervisor's restarts.
    outage = Outage("persister", logging.getLogger("gateway.ledger.persister"))
    ledger = await open_ledger_when_up(settings.database_url_effective, stop, outage)
    if ledger is None:
        await store.close()
        return
    # On one Redis server the persister waits for events on a connection of its own (a
    # blocking read over every stream) instead of polling; a cluster is polled.
    waiter = (Store.from_url(settings.redis_url, settings.partitions)
              if parse_url(settings.redis_url)[0] == "single" else None)
    try:
        tasks = [Persister(store, ledger, claim_idle_ms=claim_idle_ms(), outage=outage,
                           waiter=waiter).run(stop),
                 metrics.flush_until(stop)]
        if reaper:
            tasks.append(Reaper(store, clock or SystemClock(), settings.reaper_grace_seconds,
                                settings.clock_skew_seconds,
                                settings.call_retention_seconds).run(stop))
        await asyncio.gather(*tasks)
    finally:
        await ledger.close()
        await store.close()
        if waiter is not None:
            await waiter.close()
