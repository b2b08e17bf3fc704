"""What /metrics and /readyz read from Redis, sampled at most once a second per worker.

A scrape (no token) must cost the call path nothing, however many scrapers there are.
Reading every partition's active set and stream is a few hundred Redis commands; rendering
the exposition is milliseconds of CPU. So each worker keeps:

* a sampling round of Redis per purpose (:class:`Observer`'s ``metrics_rounds`` for
  /metrics: active grants, the earliest grant expiry, INFO memory; ``ready_rounds`` for
  /readyz: PING, the function library, the persister's backlog), started by a request when
  the last one started at least ``interval_s`` ago, and shared: concurrent requests join
  the round in flight (single flight), later ones reuse its result until the interval has
  passed. No request, no round: an idle gateway reads nothing;
* the rendered exposition, at most once per ``interval_s`` too, rendered in a worker
  thread after the hot-path counters are flushed on the loop.

A request waits for a round in flight at most ``wait_s``; Redis stalled or gone, it answers
with the last sample (/metrics, with callgate_redis_up 0) or "unknown" (/readyz, not
ready) instead of waiting for Redis's timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web

from gateway import metrics
from gateway.config import Settings
from gateway.ledger.persister import persister_status
from gateway.redis.client import ReplyError, parse_url
from gateway.redis.store import Store
from gateway.rules.clock import Clock

log = logging.getLogger(__name__)

T = TypeVar("T")

#: At most one sampling round (and one rendering) per worker this often.
INTERVAL_SECONDS = 1.0
#: How long a request waits for a round in flight before answering with what it has.
WAIT_SECONDS = 0.5
# The oldest event not yet in the ledger may be this old before the gateway reports itself
# not ready: the persister is then stalled (or absent), and Redis holds what the ledger lacks.
PERSISTER_STALLED_SECONDS = 300


@dataclass(frozen=True, slots=True)
class Sampled(Generic[T]):
    """What a request gets: the last completed round's outcome."""

    value: T | None  # the last successful round's value (None: none yet)
    error: BaseException | None  # the last completed round's failure (None: it succeeded)
    at: float | None  # time.monotonic() when ``value`` was taken
    pending: bool = False  # a round is still in flight after the request's wait

    @property
    def current(self) -> bool:
        """The value is the latest round's: that round succeeded and none is overdue."""
        return self.value is not None and self.error is None and not self.pending


class SingleFlight(Generic[T]):
    """``fetch`` run at most once per ``interval_s`` (measured from the start of a round,
    so never two rounds at a time), its outcome shared by every caller."""

    def __init__(self, fetch: Callable[[], Awaitable[T]], interval_s: float = INTERVAL_SECONDS,
                 wait_s: float | None = WAIT_SECONDS, name: str = "sample") -> None:
        """``wait_s``: how long get() waits for a round in flight (None: until it ends)."""
        self._fetch = fetch
        self.interval_s = interval_s
        self.wait_s = wait_s
        self.name = name
        self.rounds = 0  # rounds started (tests count them)
        self._state: Sampled[T] = Sampled(None, None, None)
        self._started: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def get(self) -> Sampled[T]:
        now = time.monotonic()
        if self._task is None and (self._started is None
                                   or now - self._started >= self.interval_s):
            self._started = now
            self.rounds += 1
            self._task = asyncio.create_task(self._round(), name=f"observe-{self.name}")
        task = self._task
        if task is not None:
            # asyncio.wait neither raises nor cancels the round on timeout: the next
            # caller joins it.
            await asyncio.wait({task}, timeout=self.wait_s)
            if not task.done():
                s = self._state
                return Sampled(s.value, s.error, s.at, pending=True)
        return self._state

    async def _round(self) -> None:
        try:
            value = await self._fetch()
        except Exception as exc:
            log.debug("%s: Redis not sampled: %r", self.name, exc)
            self._state = Sampled(self._state.value, exc, self._state.at)
        else:
            self._state = Sampled(value, None, time.monotonic())
        finally:
            self._task = None

    @property
    def in_flight(self) -> bool:
        return self._task is not None

    async def close(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- the two samples -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsSample:
    active_calls: int
    earliest_expiry: int | None  # seconds; None: no active grant
    memory_used_bytes: int | None  # None: INFO refused (some hosted Redis rename it)
    memory_max_bytes: int | None  # 0: no limit


@dataclass(frozen=True, slots=True)
class ReadySample:
    redis_ok: bool
    functions_ok: bool
    persister: dict[str, Any]  # persister_status(): backlog_entries, lag_seconds, …


def _info_fields(text: Any) -> dict[str, str]:
    out = {}
    for line in str(text).splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def fullest(infos: list[Any]) -> tuple[int, int]:
    """(used_memory, maxmemory) of the primary closest to its limit, from each primary's
    INFO memory; of the one using most when none has a limit (maxmemory 0)."""
    nodes = []
    for info in infos:
        f = _info_fields(info)
        nodes.append((int(f.get("used_memory", 0)), int(f.get("maxmemory", 0))))
    limited = [n for n in nodes if n[1] > 0]
    if limited:
        return max(limited, key=lambda n: n[0] / n[1])
    return max(nodes, default=(0, 0))


class Observer:
    """The per-worker samples of Redis and the cached exposition (see the module doc)."""

    def __init__(self, settings: Settings, store: Store, clock: Clock,
                 interval_s: float = INTERVAL_SECONDS, wait_s: float = WAIT_SECONDS) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.metrics_rounds: SingleFlight[MetricsSample] = SingleFlight(
            self._sample_metrics, interval_s, wait_s, "metrics")
        self.ready_rounds: SingleFlight[ReadySample] = SingleFlight(
            self._sample_ready, interval_s, wait_s, "readyz")
        self.renders: SingleFlight[bytes] = SingleFlight(
            self._render, interval_s, None, "render")

    def set_interval(self, interval_s: float) -> None:
        """Every cache's interval (tests set 0: a round per request, still single flight)."""
        for flight in (self.metrics_rounds, self.ready_rounds, self.renders):
            flight.interval_s = interval_s

    async def close(self) -> None:
        for flight in (self.renders, self.metrics_rounds, self.ready_rounds):
            await flight.close()

    # -- /metrics ---------------------------------------------------------------------

    async def exposition(self) -> bytes:
        """The text exposition, rendered at most once per interval (every caller of a
        rendering in flight waits for it: it never waits on Redis longer than wait_s)."""
        s = await self.renders.get()
        if s.value is None:  # the rendering failed: a bug, not Redis (which never fails it)
            assert s.error is not None
            raise s.error
        return s.value

    async def _render(self) -> bytes:
        sample = await self.metrics_rounds.get()
        v = sample.value
        if v is not None:
            metrics.ACTIVE_CALLS.set(v.active_calls)
            # The reaper closes a grant once it is grace seconds past its expiry (D33),
            # within a second when it runs; a grant much later than that means no reaper
            # is running. Computed now, from the sampled expiry.
            overdue = 0.0
            if v.earliest_expiry is not None:
                due_at = v.earliest_expiry + self.settings.reaper_grace_seconds
                overdue = max(0.0, self.clock.now() - due_at)
            metrics.REAPER_OVERDUE.set(overdue)
            if v.memory_used_bytes is not None and v.memory_max_bytes is not None:
                metrics.REDIS_MEMORY_USED.set(v.memory_used_bytes)
                metrics.REDIS_MEMORY_MAX.set(v.memory_max_bytes)
        metrics.REDIS_UP.set(1 if sample.current else 0)
        metrics.flush()  # on the loop: the hot path's counters are the loop's
        return await asyncio.to_thread(metrics.generate)

    async def _sample_metrics(self) -> MetricsSample:
        store = self.store
        active, earliest = await store.active_grants()
        used: int | None = None
        maximum: int | None = None
        try:
            async with asyncio.timeout(store.admin_timeout_s):
                infos = await store.backend.on_all_primaries("INFO", "memory")
        except ReplyError as exc:  # the active calls are worth having without it
            log.debug("INFO memory refused: %r", exc)
        else:
            used, maximum = fullest(infos)
        return MetricsSample(active, earliest, used, maximum)

    # -- /readyz ----------------------------------------------------------------------

    async def _sample_ready(self) -> ReadySample:
        store = self.store
        redis_ok = await store.ping()
        functions_ok = await store.functions_loaded()
        async with asyncio.timeout(store.admin_timeout_s):
            status = await persister_status(store)
        return ReadySample(redis_ok, functions_ok, status)

    async def readiness(self, details: bool = False) -> tuple[bool, dict[str, Any]]:
        """(ready, body). Without ``details`` the body names the failing checks from a
        fixed vocabulary only (no address, no error text: /readyz needs no token); with
        it (an operator's request) it adds what the operator needs to act."""
        s = await self.ready_rounds.get()
        v = s.value if s.error is None and not s.pending else None
        checks: dict[str, str]
        if v is None:
            redis = "unknown" if s.pending or s.error is None else "failing"
            checks = {"redis": redis, "functions": "unknown", "persister": "unknown"}
        else:
            lag = float(v.persister["lag_seconds"])
            checks = {
                "redis": "ok" if v.redis_ok else "failing",
                "functions": "ok" if v.functions_ok else "missing",
                "persister": "ok" if lag <= PERSISTER_STALLED_SECONDS else "stalled",
            }
        ready = all(c == "ok" for c in checks.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
        if details:
            body["details"] = self._details(s, v)
        return ready, body

    def _details(self, s: Sampled[ReadySample], v: ReadySample | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "redis_nodes": redis_nodes(self.settings.redis_url),
            "sampled_seconds_ago": (None if s.at is None
                                    else round(time.monotonic() - s.at, 3)),
            "sample_in_flight": s.pending,
            "persister_stalled_after_seconds": PERSISTER_STALLED_SECONDS,
        }
        if s.error is not None:
            out["error"] = f"{type(s.error).__name__}: {s.error}"
        if v is not None:
            out["persister"] = v.persister
        return out


def redis_nodes(url: str | None) -> list[str]:
    """The configured Redis addresses, without credentials."""
    if not url:
        return []
    try:
        _, addresses = parse_url(url)
    except ValueError:
        return ["(unparsable URL)"]
    return [a.unix_path or f"{a.host}:{a.port}" for a in addresses]


OBSERVER: web.AppKey[Observer] = web.AppKey("observer", Observer)

