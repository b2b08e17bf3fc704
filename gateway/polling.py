"""The workers' background re-reads (rate decks, run-time tokens): steps run when a change is
pushed (``SharedPoll.wake``, from gateway.redis.changes) and on a slow shared tick as a
safety net. A failing step is logged once per outage and retried at the next wake-up or
tick, never raised, so that Redis being away only delays what the step picks up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)


class SharedPoll:
    """Background steps of one worker: each runs when woken (``wake``: a change was pushed)
    and, every ``interval_s``, all of them at once (their Redis reads leave in one write),
    so that an idle worker wakes up once per tick at most. One run of a step at a time: a
    wake-up during a run makes it run once more after (the run in flight may have read
    before the change), however many wake-ups came. Each step fails on its own, logged
    once per outage and counted by its ``on_failure``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._steps: dict[str, tuple[Callable[[], Awaitable[None]],
                                     Callable[[], None] | None]] = {}
        self._failing: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, what: str, step: Callable[[], Awaitable[None]],
            on_failure: Callable[[], None] | None = None) -> None:
        """Run ``step`` from the next tick or wake-up on (the tick starts with the first
        step)."""
        self._steps[what] = (step, on_failure)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="poller")

    async def remove(self, what: str) -> None:
        """Stop running ``what`` (a run in flight is cancelled); the tick ends with the last
        step."""
        self._steps.pop(what, None)
        self._again.discard(what)
        running = self._running.pop(what, None)
        if running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        if not self._steps and self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self, *whats: str) -> None:
        """Run these steps (all of them if none is named) now; unknown names are ignored."""
        for what in whats or tuple(self._steps):
            if what not in self._steps:
                continue
            if what in self._running:
                self._again.add(what)
            else:
                self._running[what] = asyncio.create_task(self._serial(what),
                                                          name=f"poll-{what}")

    async def _serial(self, what: str) -> None:
        try:
            while True:
                self._again.discard(what)
                entry = self._steps.get(what)
                if entry is None:
                    return
                await self._one(what, *entry)
                if what not in self._again:
                    return
        finally:
            if self._running.get(what) is asyncio.current_task():
                del self._running[what]

    async def _one(self, what: str, step: Callable[[], Awaitable[None]],
                   on_failure: Callable[[], None] | None) -> None:
        try:
            await step()
            if what in self._failing:
                log.info("%s poll works again", what)
            self._failing.discard(what)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep going whatever happened; the next run retries
            if what not in self._failing:  # once per outage, not at every run
                if on_failure is not None:
                    on_failure()
                log.warning("%s poll failed (retrying quietly): %r", what, exc)
            self._failing.add(what)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.wake()


# The worker's shared poll (gateway.app creates it; decks and tokens register their steps).
POLLER = web.AppKey("poller", SharedPoll)
