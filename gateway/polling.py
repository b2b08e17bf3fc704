"""The workers' background polls (rate decks, run-time tokens): a step every interval,
forever; a failing step is logged once per outage and retried at the next tick, never
raised, so that Redis being away only delays what the poll picks up. ``SharedPoll`` runs
several such steps on one tick (one wake-up of an idle worker for all of them)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

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


class SharedPoll:
    """Background polls of one worker that share a tick: every ``interval_s`` all the
    registered steps run at once (their Redis reads leave in one write and come back
    together), so that an idle worker wakes up once per tick rather than once per poll.
    Each step fails on its own, logged and counted as by ``poll_quietly``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._steps: dict[str, tuple[Callable[[], Awaitable[None]],
                                     Callable[[], None] | None]] = {}
        self._failing: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, what: str, step: Callable[[], Awaitable[None]],
            on_failure: Callable[[], None] | None = None) -> None:
        """Poll ``step`` from the next tick on (the loop starts with the first step)."""
        self._steps[what] = (step, on_failure)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="poller")

    async def remove(self, what: str) -> None:
        """Stop polling ``what``; the loop ends with the last step."""
        self._steps.pop(what, None)
        if not self._steps and self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _one(self, what: str, step: Callable[[], Awaitable[None]],
                   on_failure: Callable[[], None] | None) -> None:
        try:
            await step()
            if what in self._failing:
                log.info("%s poll works again", what)
            self._failing.discard(what)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep polling whatever happened; the next tick retries
            if what not in self._failing:  # once per outage, not at every tick
                if on_failure is not None:
                    on_failure()
                log.warning("%s poll failed (retrying quietly): %r", what, exc)
            self._failing.add(what)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.gather(*(self._one(what, step, on_failure)
                                   for what, (step, on_failure) in list(self._steps.items())))


# The worker's shared poll (gateway.app creates it; decks and tokens register their steps).
POLLER = web.AppKey("poller", SharedPoll)
