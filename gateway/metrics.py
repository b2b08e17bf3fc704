"""Every Prometheus metric of callgate, in one place, and the /metrics exposition.

Names follow the client_python conventions: ``callgate_`` prefix, base units (seconds),
counters end in ``_total``; labels carry bounded vocabularies only (decision, reason,
source, operation, function), never a tenant, user or call id.

Multi-process: ``callgate serve`` sets PROMETHEUS_MULTIPROC_DIR (a fresh directory under
the data directory) before any worker imports prometheus_client; every worker (and the
persist child process) then writes its samples to memory-mapped files there and /metrics,
served by whichever worker the kernel picks, aggregates them all with
MultiProcessCollector. Without the variable (tests,
embedding) the default in-process registry is used: one code path, two registries.

Hot path: each request adds to plain Python counters (a dict update and a bisect);
``flush()`` moves them into the prometheus objects in bulk, once a second and before each
exposition (see below for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from bisect import bisect_left
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

from gateway.errors import StoreErrorReply, StoreUnavailable

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: The exposition's Content-Type (text format 0.0.4).
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Latency budget: p99 of authorize <= 2 ms; buckets resolve 100 us up to 2.5 ms, then coarser.
LATENCY_BUCKETS_SECONDS: Final = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025,
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)

DECISIONS = Counter(
    "callgate_decisions_total",
    "Authorize and extend decisions, by decision, reason and source of the minutes",
    ("decision", "reason", "source"),
)
REQUEST_DURATION = Histogram(
    "callgate_request_duration_seconds",
    "Time to answer a call-control request inside the gateway (parse to answer)",
    ("operation",),
    buckets=LATENCY_BUCKETS_SECONDS,
)
REDIS_DURATION = Histogram(
    "callgate_redis_duration_seconds",
    "Round-trip time of one Redis function call (FCALL), by function",
    ("function",),
    buckets=LATENCY_BUCKETS_SECONDS,
)
REDIS_ERRORS = Counter(
    "callgate_redis_errors_total",
    "Redis round trips that failed: kind is error_reply, unavailable or timeout",
    ("kind",),
)
REDIS_TIMEOUTS = Counter(
    "callgate_redis_timeouts_total",
    "Call-control round trips that exceeded the Redis timeout (redis_timeout_ms)",
)
PERSISTER_BACKLOG = Gauge(
    "callgate_persister_backlog_events",
    "Events written to Redis streams and not yet persisted to the ledger",
    multiprocess_mode="livemostrecent",
)
PERSISTER_LAG = Gauge(
    "callgate_persister_lag_seconds",
    "Age of the oldest event not yet persisted to the ledger",
    multiprocess_mode="livemostrecent",
)
ACTIVE_CALLS = Gauge(
    "callgate_active_calls",
    "Calls holding a grant (all tenants), sampled from Redis when /metrics is scraped "
    "(at most once a second per worker)",
    multiprocess_mode="livemostrecent",
)
REAPER_OVERDUE = Gauge(
    "callgate_reaper_overdue_seconds",
    "How long past the reaper's grace the earliest expired grant is (0: none overdue); "
    "sampled from Redis when /metrics is scraped. It grows when no reaper runs",
    multiprocess_mode="livemostrecent",
)
GRANTS_REAPED = Counter(
    "callgate_grants_reaped_total",
    "Grants that expired without an end or extend and were billed by the reaper",
)
DECK_RELOADS = Counter(
    "callgate_deck_reloads_total",
    "Rate-deck reloads, by result (ok or error)",
    ("result",),
)
REDIS_MEMORY_USED = Gauge(
    "callgate_redis_memory_used_bytes",
    "used_memory (INFO memory) of the Redis primary closest to its maxmemory (the one "
    "using most memory when none has a limit); sampled with the other Redis gauges",
    multiprocess_mode="livemostrecent",
)
REDIS_MEMORY_MAX = Gauge(
    "callgate_redis_memory_max_bytes",
    "maxmemory of that same Redis primary (0: no limit)",
    multiprocess_mode="livemostrecent",
)
REDIS_UP = Gauge(
    "callgate_redis_up",
    "1 when the last sampling of Redis for /metrics succeeded, 0 when it failed or did not "
    "answer in time (the sampled gauges then keep their last values)",
    multiprocess_mode="livemostrecent",
)
REDIS_OOM_ERRORS = Counter(
    "callgate_redis_oom_errors_total",
    "Redis error replies saying OOM (maxmemory reached under noeviction); also counted in "
    "callgate_redis_errors_total{kind=\"error_reply\"} when on the call path",
)
SHED_REQUESTS = Counter(
    "callgate_shed_requests_total",
    "Call-control requests answered service_unavailable at once, without Redis, because "
    "the worker already had max_inflight_calls in flight, by operation",
    ("operation",),
)
VOIDS = Counter(
    "callgate_voids_total",
    "Authorizes answered other than allow whose Redis function may have run, undone by "
    "void_call: result is voided (it had run and reserved) or nothing (it had not)",
    ("result",),
)
VOIDS_PENDING = Gauge(
    "callgate_voids_pending",
    "Voids waiting to reach Redis (retried until they land)",
    multiprocess_mode="livesum",
)
WEBHOOK_DELIVERIES = Counter(
    "callgate_webhook_deliveries_total",
    "Webhook delivery attempts by result: delivered (2xx), retry (scheduled again after an "
    "error, a timeout or a refused destination), failed (given up after 24 h, or its "
    "webhook removed or disabled)",
    ("result",),
)
WEBHOOK_PENDING = Gauge(
    "callgate_webhook_deliveries_pending",
    "Webhook deliveries not yet delivered nor failed (sampled by the notifier)",
    multiprocess_mode="livemostrecent",
)
WEBHOOK_OLDEST_PENDING = Gauge(
    "callgate_webhook_oldest_pending_seconds",
    "Age of the oldest pending webhook delivery (0: none; sampled by the notifier)",
    multiprocess_mode="livemostrecent",
)

#: Every metric family name defined here (the dashboard and alert tests check against it).
METRIC_NAMES: Final = frozenset({
    "callgate_decisions_total",
    "callgate_request_duration_seconds",
    "callgate_redis_duration_seconds",
    "callgate_redis_errors_total",
    "callgate_redis_timeouts_total",
    "callgate_persister_backlog_events",
    "callgate_persister_lag_seconds",
    "callgate_active_calls",
    "callgate_grants_reaped_total",
    "callgate_reaper_overdue_seconds",
    "callgate_deck_reloads_total",
    "callgate_redis_memory_used_bytes",
    "callgate_redis_memory_max_bytes",
    "callgate_redis_up",
    "callgate_redis_oom_errors_total",
    "callgate_shed_requests_total",
    "callgate_voids_total",
    "callgate_voids_pending",
    "callgate_http_connections",
    "callgate_http_connections_rejected_total",
    "callgate_http_head_timeouts_total",
    "callgate_http_bad_requests_total",
    "callgate_webhook_deliveries_total",
    "callgate_webhook_deliveries_pending",
    "callgate_webhook_oldest_pending_seconds",
})

# -- cheap hot-path accessors ------------------------------------------------------------
#
# prometheus-client's multi-process values call os.getpid() (a real system call) on every
# increment, and a histogram observation is two increments: strace showed ~10 getpid calls
# per authorize. So the hot path only adds to plain Python counters here, and flush()
# moves them into the prometheus objects in bulk: in a worker, FLUSH_INTERVAL_SECONDS after
# the first count since the last flush (one timer, armed by that count: flusher_ctx); in
# the persist and notify processes, from their rounds (flush_if_due; flush_until is their
# backstop); and before every exposition. An idle process does not wake to flush.

FLUSH_INTERVAL_SECONDS: Final = 1.0
# flush_until's own pace: the rounds of the process it runs beside flush more often.
FLUSH_BACKSTOP_SECONDS: Final = 10.0
_last_flush = 0.0
# Worker apps running flusher_ctx, and whether a count needs to arm the flush timer (False
# only while a worker's loop flushes and no timer is pending).
_flush_users = 0
_flush_armed = True
_BOUNDS: Final = (*LATENCY_BUCKETS_SECONDS, float("inf"))

_decisions: dict[tuple[str, str, str], int] = {}
# {(histogram, label): [count per bucket..., sum of seconds]}
_latencies: dict[tuple[Histogram, str], list[float]] = {}


def count_decision(decision: str, reason: str, source: str) -> None:
    key = (decision, reason, source)
    _decisions[key] = _decisions.get(key, 0) + 1
    if not _flush_armed:
        _arm_flush()


def _arm_flush() -> None:
    """The first count since the last flush: flush FLUSH_INTERVAL_SECONDS from now."""
    global _flush_armed
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # counted off the loop: the next count on it arms the timer
        return
    _flush_armed = True
    loop.call_later(FLUSH_INTERVAL_SECONDS, _timed_flush)


def _timed_flush() -> None:
    global _flush_armed
    _flush_armed = not _flush_users  # the next count arms again while a worker runs
    flush()


def _observe(hist: Histogram, label: str, seconds: float) -> None:
    slots = _latencies.get((hist, label))
    if slots is None:
        slots = _latencies[(hist, label)] = [0.0] * (len(_BOUNDS) + 1)
    slots[bisect_left(_BOUNDS, seconds)] += 1  # first bucket whose bound is >= seconds
    slots[-1] += seconds
    if not _flush_armed:
        _arm_flush()


def observe_request(operation: str, seconds: float) -> None:
    _observe(REQUEST_DURATION, operation, seconds)


def observe_redis(function: str, seconds: float) -> None:
    _observe(REDIS_DURATION, function, seconds)


def flush_if_due() -> None:
    """flush() when the last one is FLUSH_INTERVAL_SECONDS old."""
    if time.monotonic() - _last_flush >= FLUSH_INTERVAL_SECONDS:
        flush()


def flush() -> None:
    """Move the hot-path counts into the prometheus metrics (cheap when nothing is new)."""
    global _last_flush
    _last_flush = time.monotonic()
    if _decisions:
        pending = list(_decisions.items())
        _decisions.clear()
        for (decision, reason, source), n in pending:
            DECISIONS.labels(decision, reason, source or "none").inc(n)
    if _latencies:
        hists = list(_latencies.items())
        _latencies.clear()
        for (hist, label), slots in hists:
            child = hist.labels(label)
            # Histogram children keep non-cumulative bucket values and a sum (this is
            # what Histogram.observe updates); there is no public bulk observe.
            for i, count in enumerate(slots[:-1]):
                if count:
                    child._buckets[i].inc(count)
            child._sum.inc(slots[-1])


async def flush_until(stop: asyncio.Event) -> None:
    """Flush every FLUSH_BACKSTOP_SECONDS until ``stop``, then once more (processes
    without an aiohttp app: ``callgate persist``, ``callgate notify``, whose rounds call
    flush_if_due)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FLUSH_BACKSTOP_SECONDS)
        flush()


async def flusher_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: while the app runs, the counts arm a flush a second after
    the first of them (none while idle); at shutdown, a last flush."""
    global _flush_users, _flush_armed
    _flush_users += 1
    _flush_armed = False
    try:
        yield
    finally:
        _flush_users -= 1
        if not _flush_users:
            _flush_armed = True
        flush()


def count_redis_failure(exc: BaseException) -> None:
    """One failed call-control round trip (a StoreUnavailable, whose kind is the label)."""
    from gateway.redis.client import ReplyError

    if isinstance(exc, StoreUnavailable):
        kind = exc.kind
    elif isinstance(exc, TimeoutError):
        kind = "timeout"
    elif isinstance(exc, ReplyError):
        kind = "error_reply"
    else:
        kind = "unavailable"
    if kind == "timeout":
        REDIS_TIMEOUTS.inc()
    REDIS_ERRORS.labels(kind).inc()
    count_redis_oom(exc)


def count_redis_oom(exc: BaseException) -> None:
    """Count ``exc`` in callgate_redis_oom_errors_total when it is Redis's OOM error reply
    (any path may call this with any Redis failure)."""
    from gateway.redis.client import ReplyError

    if isinstance(exc, ReplyError | StoreErrorReply) and str(exc).lstrip().startswith("OOM"):
        REDIS_OOM_ERRORS.inc()


def count_shed(operation: str) -> None:
    SHED_REQUESTS.labels(operation).inc()


def count_void(voided: bool) -> None:
    VOIDS.labels("voided" if voided else "nothing").inc()


def set_voids_pending(n: int) -> None:
    VOIDS_PENDING.set(n)


# -- for the persister, the reaper and the reloaders ------------------------------------------


def set_persister_state(backlog_events: int, lag_seconds: float) -> None:
    """The persister calls this after each batch (and when idle, with 0 and 0.0)."""
    PERSISTER_BACKLOG.set(backlog_events)
    PERSISTER_LAG.set(lag_seconds)


def count_grants_reaped(n: int = 1) -> None:
    if n > 0:
        GRANTS_REAPED.inc(n)


def count_deck_reload(ok: bool = True) -> None:
    DECK_RELOADS.labels("ok" if ok else "error").inc()


# -- exposition --------------------------------------------------------------------------


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def render() -> tuple[bytes, str]:
    """(body, content type) of the text exposition, aggregated over the workers when
    PROMETHEUS_MULTIPROC_DIR is set (other workers' last second may not be in yet)."""
    flush()
    return generate(), CONTENT_TYPE_LATEST


def generate() -> bytes:
    """The text exposition of what is flushed so far, without flushing: safe to call from
    a thread other than the event loop's (flush() is not; gateway.http.observe calls it on the
    loop, then this in a worker thread)."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def worker_exited(pid: int) -> None:
    """Drop the live-gauge files of a worker that is gone (its counters stay summed)."""
    if multiprocess_enabled():
        _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]


# -- HTTP connections (gateway.http.fastpath; docs/http-limits.md) ------------------------------
#
# Counted by the server in plain integers and moved here by its once-a-second sweep, like
# the hot-path counts above: no prometheus call per connection or per request.

HTTP_CONNECTIONS = Gauge(
    "callgate_http_connections",
    "Open HTTP connections (fast path and aiohttp), sampled every second",
    multiprocess_mode="livesum",
)
HTTP_CONNECTIONS_REJECTED = Counter(
    "callgate_http_connections_rejected_total",
    "Connections closed on arrival because the worker's connection cap was reached",
)
HTTP_HEAD_TIMEOUTS = Counter(
    "callgate_http_head_timeouts_total",
    "Connections closed because a request did not arrive whole within the head timeout",
)
HTTP_BAD_REQUESTS = Counter(
    "callgate_http_bad_requests_total",
    "Malformed HTTP requests (answered by aiohttp's parser with a 4xx and closed)",
)


def set_http_state(connections: int, rejected: int = 0, head_timeouts: int = 0,
                   bad_requests: int = 0) -> None:
    """The open connections now, and what was rejected, timed out or malformed since the
    last call."""
    HTTP_CONNECTIONS.set(connections)
    if rejected:
        HTTP_CONNECTIONS_REJECTED.inc(rejected)
    if head_timeouts:
        HTTP_HEAD_TIMEOUTS.inc(head_timeouts)
    if bad_requests:
        HTTP_BAD_REQUESTS.inc(bad_requests)
# -- for the notifier ----------------------------------------------------------------------


def count_webhook_delivery(result: str) -> None:
    WEBHOOK_DELIVERIES.labels(result).inc()


def set_webhook_pending(count: int, oldest_age_seconds: float) -> None:
    WEBHOOK_PENDING.set(count)
    WEBHOOK_OLDEST_PENDING.set(oldest_age_seconds)
