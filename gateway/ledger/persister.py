"""The persister: every partition stream into the ledger, exactly once.

Per partition stream one consumer group (``GROUP``). A batch is read with XREADGROUP,
written to the ledger in one transaction and acknowledged (XACK) only after the commit; a
crash between commit and XACK re-delivers the batch, which the ledger's unique
(stream, entry id) turns into a no-op. Entries pending on a consumer idle for longer than
``claim_idle_ms`` (a dead process) are taken over with XAUTOCLAIM. Streams are trimmed
(XTRIM MINID) only below the group's oldest unacknowledged entry: Redis 7.0 trims without
regard to acknowledgement.

Every Redis command goes through ``Store.backend.execute(stream_key, …)``: routed by the
stream's hash tag, so the persister works on one server and on a cluster alike.

On a single Redis server the persister waits for work rather than polling: with a
``waiter`` (a Store of its own, whose one connection may block), a round reads every stream
with ONE ``XREADGROUP … BLOCK`` over all of them, which returns as soon as any has new
entries; an idle persister costs Redis two commands every ``BLOCK_MILLISECONDS`` (10 s),
and a stop ends the wait at once (``BlockingRead``: CLIENT UNBLOCK). A cluster
cannot serve one command over keys of many slots: there each stream is read on its own,
and rounds that find nothing wait longer and longer (up to ``IDLE_SLEEP_MAX_SECONDS``).

While Redis or the ledger fails, rounds back off exponentially (gateway.ledger.backoff:
0.1 s doubling to 5 s) with one log line per change of state; nothing is lost meanwhile,
the events wait in the streams, unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from gateway import metrics
from gateway.ledger import Entry, Ledger
from gateway.ledger.backoff import Outage
from gateway.redis.client import ReplyError
from gateway.redis.keys import DECKS_EVENTS, TOKENS_EVENTS, all_partitions
from gateway.redis.store import BlockingRead, Store, read_new_entries

log = logging.getLogger(__name__)
_T = TypeVar("_T")

GROUP = "persist"
# Entries read from one stream per round. Redis runs each command whole, and call control
# waits behind it: 200 call events (~1 kB each) keep one read or acknowledgement well
# under a millisecond of Redis time.
BATCH_ENTRIES_MAX = 200
# Streams read (and acknowledged) at once: a round's commands go out in small groups, not
# all 65 in one pipeline that Redis would run back to back while call control queues.
STREAMS_AT_ONCE = 4
# Pacing, not synchronisation: after a round that drained every stream, the next one waits
# this long. Each round costs Redis a command or two per partition stream however few
# events it carries; back-to-back rounds under a steady trickle cost Redis ~10 us of CPU
# per event on the call path's server (measured by make bench), paced rounds a fraction of
# that. A backlog (a stream that filled its batch) is read without pause. At a switch's
# pace (300 calls/s) a quarter of a second gathers ~150 events per round: the round's
# fixed costs (a read over every stream, a commit, an XACK per stream) are shared by that
# many (docs/pace.md); the ledger is that much later, still well under a second.
IDLE_SLEEP_SECONDS = 0.25
# Polling (a cluster): each round that finds nothing doubles the pause, up to this.
IDLE_SLEEP_MAX_SECONDS = 1.0
# Waiting (one server): how long one blocking read waits for new entries before the round
# goes on (claims, trims and status are looked at between rounds; a stop ends the wait at
# once: BlockingRead). Each timeout wakes the persister and Redis: an idle persister costs
# two commands (CLIENT ID, the read) every BLOCK_MILLISECONDS.
BLOCK_MILLISECONDS = 10_000
CLAIM_IDLE_MS = 30_000  # an entry pending this long on a silent consumer is taken over
TRIM_INTERVAL_SECONDS = 5.0
# Trimming every TRIM_INTERVAL_SECONDS covers the streams this persister acknowledged
# entries on since; every stream (another persister's, dead consumers) only this often: an
# idle persister sends Redis no trimming commands in between.
FULL_TRIM_INTERVAL_SECONDS = 600.0
DEAD_CONSUMER_IDLE_MS = 3_600_000


class LedgerError(Exception):
    """Writing a batch into the ledger failed (the cause is chained): tells a ledger
    outage from a Redis one in the persister's log."""


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _entries(raw: Sequence[Any]) -> list[Entry]:
    out: list[Entry] = []
    for item in raw:
        if item is None or item[1] is None:  # pending entry deleted from the stream
            continue
        entry_id, flat = item[0], item[1]
        f = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}
        out.append(Entry(str(entry_id), f.get("type", ""), f.get("tenant", ""),
                         f.get("data", "{}")))
    return out

# How often the running persister publishes its backlog and lag (one XINFO per stream), and
# how often when it has written nothing since.
STATUS_INTERVAL_SECONDS = 5.0
IDLE_STATUS_INTERVAL_SECONDS = 60.0


def event_streams(partitions: int) -> list[str]:
    """Every stream the persister drains: one per partition, the rate decks' own and the
    run-time tokens'."""
    return [p.events for p in all_partitions(partitions)] + [DECKS_EVENTS, TOKENS_EVENTS]

@dataclass
class Persister:
    store: Store
    ledger: Ledger
    consumer: str = field(default_factory=consumer_name)
    batch_entries_max: int = BATCH_ENTRIES_MAX
    claim_idle_ms: int = CLAIM_IDLE_MS
    trim: bool = True
    persisted_total: int = 0
    backlogged: bool = False  # the last round filled a stream's batch: go on without pause
    _groups_ready: set[str] = field(default_factory=set)
    _last_claim: dict[str, float] = field(default_factory=dict)
    _claim_cursor: dict[str, str] = field(default_factory=dict)  # XAUTOCLAIM scan under way
    _last_trim: float = 0.0
    _last_full_trim: float = 0.0
    _acked_since_trim: set[str] = field(default_factory=set)
    _streams: list[str] | None = None
    _own_checked: set[str] = field(default_factory=set)  # own pending re-read after a fault
    outage: Outage = field(default_factory=lambda: Outage("persister", log))
    status_interval_seconds: float = STATUS_INTERVAL_SECONDS
    # A Store of its own for the blocking read over every stream (one Redis server only;
    # None: each stream read on its own, polling).
    waiter: Store | None = None
    _blocking: BlockingRead | None = None

    @property
    def streams(self) -> list[str]:
        return event_streams(self.store.partitions)

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups_ready:
            return
        try:
            await self.store.backend.execute(stream, "XGROUP", "CREATE", stream, GROUP, "0",
                                             "MKSTREAM")
        except ReplyError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(stream)

    async def _claim(self, stream: str) -> list[Entry]:
        """One page of entries left pending by a dead consumer (XAUTOCLAIM); a scan is
        started every claim_idle_ms / 2 and continued round after round until done."""
        cursor = self._claim_cursor.pop(stream, None)
        if cursor is None:
            now = time.monotonic()
            if now - self._last_claim.get(stream, 0.0) < self.claim_idle_ms / 2000:
                return []
            self._last_claim[stream] = now
            cursor = "0-0"
        reply = await self.store.backend.execute(
            stream, "XAUTOCLAIM", stream, GROUP, self.consumer, self.claim_idle_ms, cursor,
            "COUNT", self.batch_entries_max)
        if str(reply[0]) != "0-0":
            self._claim_cursor[stream] = str(reply[0])
        if len(reply) > 2 and reply[2]:
            log.error("%s: pending entries deleted before persisting: %s", stream, reply[2])
        return _entries(reply[1])

    async def read(self, stream: str) -> list[Entry]:
        """The next batch of one stream: claimed entries, our own pending ones (after a
        fault: written or not, unacknowledged), then new ones."""
        try:
            return await self._read(stream)
        except ReplyError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or its group vanished (Redis lost its data, or was flushed and
            # rebuilt): recreate the group from the stream's start.
            self._groups_ready.discard(stream)
            return await self._read(stream)

    async def _read(self, stream: str, new: bool = True) -> list[Entry]:
        """``new``: with the entries never delivered yet (else claimed and own pending
        entries only: the caller reads new ones itself)."""
        await self._ensure_group(stream)
        entries = await self._claim(stream)
        starts = [] if stream in self._own_checked else ["0"]
        if new:
            starts.append(">")
        for start in starts:
            room = self.batch_entries_max - len(entries)
            if room <= 0:
                break
            reply = await self.store.backend.execute(
                stream, "XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", room,
                "STREAMS", stream, start)
            got = _entries(reply[0][1]) if reply else []
            if start == "0" and len(got) < room:  # all our own pending entries are read
                self._own_checked.add(stream)
            entries += got
        return entries

    async def trim_stream(self, stream: str) -> None:
        """XTRIM MINID below everything unacknowledged. The last delivered id is read
        BEFORE the pending summary: an entry delivered in between is newer than it."""
        last = await _last_delivered(self.store, stream)
        if last is None:
            return
        summary = await self.store.backend.execute(stream, "XPENDING", stream, GROUP)
        floor = str(summary[1]) if int(summary[0]) > 0 else last
        await self.store.backend.execute(stream, "XTRIM", stream, "MINID", floor)
        await self._forget_dead_consumers(stream)

    async def _forget_dead_consumers(self, stream: str) -> None:
        """Each persister process joins under its own name; drop those that hold nothing
        and have been silent for long (a restarted process never comes back by name)."""
        for c in await self.store.backend.execute(stream, "XINFO", "CONSUMERS", stream, GROUP):
            info = {str(c[i]): c[i + 1] for i in range(0, len(c), 2)}
            if (info.get("name") != self.consumer and int(info.get("pending", 1)) == 0
                    and int(info.get("idle", 0)) > DEAD_CONSUMER_IDLE_MS):
                # DELCONSUMER drops a consumer's pending entries: only ever with none.
                await self.store.backend.execute(stream, "XGROUP", "DELCONSUMER", stream,
                                                 GROUP, str(info["name"]))

    async def _each(self, calls: list[Callable[[], Awaitable[_T]]]) -> list[_T]:
        """The calls' results in order, STREAMS_AT_ONCE of them in flight at a time."""
        out: list[_T] = []
        for i in range(0, len(calls), STREAMS_AT_ONCE):
            out += await asyncio.gather(*(c() for c in calls[i:i + STREAMS_AT_ONCE]))
        return out

    async def _read_waiting(self, waiter: Store, block_ms: int) -> list[list[Entry]]:
        """Every stream's batch: claimed and own pending entries stream by stream (rare:
        after a fault, or a claim scan every claim_idle_ms / 2), then the new entries of
        all streams with one XREADGROUP, blocking up to ``block_ms`` (0: not at all) when
        there was nothing else."""
        streams = self._streams_list()
        old = [s for s in streams if self._old_may_wait(s)]
        found = dict(zip(old, await self._each([partial(self._read_old, s) for s in old]),
                         strict=True)) if old else {}
        batches = [found.get(s, []) for s in streams]
        rooms = [self.batch_entries_max - len(b) for b in batches]
        room = min(rooms)
        if room <= 0:
            return batches
        wait_ms = block_ms if not any(batches) else 0  # something to do already: no wait
        reply = await read_new_entries(waiter, self._blocking, GROUP, self.consumer, room,
                                       streams, wait_ms)
        got = {str(stream): _entries(raw) for stream, raw in (reply or [])}
        return [b + got.get(s, []) for s, b in zip(streams, batches, strict=True)]

    def _streams_list(self) -> list[str]:
        """``streams``, made once (a round reads it several times)."""
        if self._streams is None:
            self._streams = self.streams
        return self._streams

    def _old_may_wait(self, stream: str) -> bool:
        """Whether ``stream`` may hold claimed or own pending entries to read this round: its
        group is not known to exist, its own pending entries were not read since a fault,
        or a claim scan is under way or due. Otherwise a round does not look (no command,
        no task: an idle or steady round costs one command over every stream)."""
        return (stream not in self._groups_ready or stream not in self._own_checked
                or stream in self._claim_cursor
                or time.monotonic() - self._last_claim.get(stream, 0.0)
                >= self.claim_idle_ms / 2000)

    async def _read_old(self, stream: str) -> list[Entry]:
        try:
            return await self._read(stream, new=False)
        except ReplyError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups_ready.discard(stream)
            return await self._read(stream, new=False)

    async def run_once(self, block_ms: int = 0) -> int:
        """One round over every stream: read them all (a few streams at a time, or all in
        one command with a ``waiter``, which may then block up to ``block_ms`` for new
        entries), write everything in ONE ledger transaction, then acknowledge. A round
        costs one commit however many partitions there are."""
        if self.waiter is not None:
            batches = await self._read_waiting(self.waiter, block_ms)
        else:
            batches = await self._each([partial(self.read, s) for s in self._streams_list()])
        self.backlogged = any(len(b) >= self.batch_entries_max for b in batches)
        work = [(s, b) for s, b in zip(self._streams_list(), batches, strict=True) if b]
        if work:
            try:
                self.persisted_total += await self.ledger.apply_batches(work)
            except Exception as exc:
                raise LedgerError(str(exc)) from exc
            await self._each([
                partial(self.store.backend.execute, s, "XACK", s, GROUP,
                        *(e.entry_id for e in b))
                for s, b in work])
            self._acked_since_trim.update(s for s, _ in work)
        now = time.monotonic()
        if self.trim and now - self._last_trim > TRIM_INTERVAL_SECONDS:
            self._last_trim = now
            if now - self._last_full_trim > FULL_TRIM_INTERVAL_SECONDS:
                self._last_full_trim = now
                trim = self._streams_list()
            else:
                trim = [s for s in self._streams_list() if s in self._acked_since_trim]
            await self._each([partial(self.trim_stream, s) for s in trim])
            self._acked_since_trim.clear()
        return sum(len(b) for _, b in work)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Until ``stop``: rounds back to back while there is a backlog, paced when idle,
        backed off exponentially (``self.outage``) while Redis or the ledger fails."""
        stop = stop or asyncio.Event()
        if self.waiter is not None:
            self._blocking = BlockingRead(self.store, self.waiter, self._streams_list()[0])
            self._blocking.start(stop)
        try:
            await self._run(stop)
        finally:
            if self._blocking is not None:
                await self._blocking.close()
                self._blocking = None

    async def _run(self, stop: asyncio.Event) -> None:
        last_status = 0.0
        idle = IDLE_SLEEP_SECONDS
        block_ms = 0
        written_since_status = False
        while not stop.is_set():
            wait = IDLE_SLEEP_SECONDS
            try:
                done = await self.run_once(block_ms)
            except Exception as exc:
                self._own_checked.clear()
                part, cause = ("ledger", exc.__cause__ or exc) if isinstance(exc, LedgerError) \
                    else ("redis", exc)
                wait = await self.outage.failed(part, cause, self.backlog_entries)
                done = 0
            else:
                await self.outage.succeeded(self.backlog_entries, written=done)
            metrics.flush_if_due()  # this process's batched metrics (reaper's included)
            # Published in an outage too (when Redis answers): the lag alerts then fire. An
            # idle persister (nothing written since it last published) publishes rarely.
            written_since_status = written_since_status or done > 0
            busy = (written_since_status or self.outage.down_since is not None
                    or last_status == 0.0)
            since = time.monotonic() - last_status
            if since > self.status_interval_seconds and (
                    busy or since > IDLE_STATUS_INTERVAL_SECONDS):
                written_since_status = False
                last_status = time.monotonic()
                with contextlib.suppress(Exception):
                    status = await persister_status(self.store)
                    metrics.set_persister_state(status["backlog_entries"],
                                                status["lag_seconds"])
            if self.waiter is not None and self.outage.down_since is None:
                # Waiting on Redis: an empty round blocked already; after a batch, a pause
                # lets the next one gather more events per commit.
                block_ms = BLOCK_MILLISECONDS
                if done == 0 or self.backlogged:
                    continue
            elif done == 0 and self.outage.down_since is None:
                wait = idle
                idle = min(idle * 2, IDLE_SLEEP_MAX_SECONDS)
            else:
                idle = IDLE_SLEEP_SECONDS
            if done == 0 or not self.backlogged:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)

    async def backlog_entries(self) -> int | None:
        """Entries not yet acknowledged (None when Redis cannot tell), for the log."""
        return int((await persister_status(self.store))["backlog_entries"])


async def _last_delivered(store: Store, stream: str) -> str | None:
    try:
        groups = await store.backend.execute(stream, "XINFO", "GROUPS", stream)
    except ReplyError:  # no stream yet
        return None
    for g in groups:
        info = {str(g[i]): g[i + 1] for i in range(0, len(g), 2)}
        if info.get("name") == GROUP:
            return str(info["last-delivered-id"])
    return None


async def persister_status(store: Store, now_s: float | None = None) -> dict[str, Any]:
    """Backlog (entries not yet acknowledged) and lag (seconds since the oldest of them
    was appended) over every partition; for metrics and ``callgate persist --status``."""
    now_ms = (time.time() if now_s is None else now_s) * 1000
    parts = await asyncio.gather(*(_stream_status(store, stream)
                                   for stream in event_streams(store.partitions)))
    backlog = sum(b for b, _, _ in parts)
    pending_total = sum(p for _, p, _ in parts)
    oldest = [ms for _, _, ms in parts if ms is not None]
    lag = 0.0 if not oldest else max(0.0, (now_ms - min(oldest)) / 1000)
    return {"backlog_entries": backlog, "pending_entries": pending_total,
            "lag_seconds": round(lag, 3)}


async def _stream_status(store: Store, stream: str) -> tuple[int, int, int | None]:
    """(backlog, pending, ms of the oldest unacknowledged entry) of one stream."""
    last = await _last_delivered(store, stream)
    if last is None:  # no group yet: everything in the stream is waiting
        backlog = int(await store.backend.execute(stream, "XLEN", stream))
        first = await store.backend.execute(stream, "XRANGE", stream, "-", "+", "COUNT", 1)
        return backlog, 0, int(str(first[0][0]).split("-")[0]) if first else None
    summary = await store.backend.execute(stream, "XPENDING", stream, GROUP)
    pending = int(summary[0])
    undelivered = await store.backend.execute(stream, "XRANGE", stream, f"({last}", "+",
                                              "COUNT", 1)
    candidates = [str(summary[1])] if pending else []
    backlog = pending
    if undelivered:
        candidates.append(str(undelivered[0][0]))
        backlog += await _undelivered_count(store, stream, last)
    oldest = min((int(c.split("-")[0]) for c in candidates), default=None)
    return backlog, pending, oldest


async def _undelivered_count(store: Store, stream: str, last: str) -> int:
    groups = await store.backend.execute(stream, "XINFO", "GROUPS", stream)
    for g in groups:
        info = {str(g[i]): g[i + 1] for i in range(0, len(g), 2)}
        if info.get("name") == GROUP and info.get("lag") is not None:
            return int(info["lag"])
    # lag unknown (Redis cannot tell after some deletions): count what is after last
    rows = await store.backend.execute(stream, "XRANGE", stream, f"({last}", "+")
    return len(rows)
