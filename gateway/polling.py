"""One loop for the workers' background polls (rate decks, run-time tokens): a step every
interval, forever; a failing step is logged once per outage and retried at the next tick,
never raised, so that Redis being away only delays what the poll picks up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def poll_quietly(what: str, step: Callable[[], Awaitable[None]], interval_s: float,
                       on_failure: Callable[[], None] | None = None) -> None:
    """Run ``step`` every ``interval_s`` until cancelled. ``what`` names it in the log;
    ``on_failure`` runs once per outage (a metric)."""
    failing = False
    while True:
        try:
            await step()
            if failing:
                log.info("%s poll works again", what)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep polling whatever happened; the next tick retries
            if not failing:  # once per outage, not at every tick
                if on_failure is not None:
                    on_failure()
                log.warning("%s poll failed (retrying quietly): %r", what, exc)
            failing = True
        await asyncio.sleep(interval_s)
