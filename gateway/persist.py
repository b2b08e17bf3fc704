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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.keys import all_partitions
from gateway.ledger import Entry, Ledger
from gateway.redisclient import RedisUnavailable, ReplyError
from gateway.store import Store

log = logging.getLogger(__name__)

GROUP = "persist"
BATCH_ENTRIES_MAX = 500
IDLE_SLEEP_SECONDS = 0.05  # pacing when every stream is drained, not synchronisation
CLAIM_IDLE_MS = 30_000  # an entry pending this long on a silent consumer is taken over
TRIM_INTERVAL_SECONDS = 5.0
DEAD_CONSUMER_IDLE_MS = 3_600_000


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


@dataclass
class Persister:
    store: Store
    ledger: Ledger
    consumer: str = field(default_factory=consumer_name)
    batch_entries_max: int = BATCH_ENTRIES_MAX
    claim_idle_ms: int = CLAIM_IDLE_MS
    trim: bool = True
    persisted_total: int = 0
    _groups_ready: set[str] = field(default_factory=set)
    _last_claim: dict[str, float] = field(default_factory=dict)
    _last_trim: float = 0.0
    _own_checked: set[str] = field(default_factory=set)  # own pending re-read after a fault

    @property
    def streams(self) -> list[str]:
        return [p.events for p in all_partitions(self.store.partitions)]

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

    async def _write(self, stream: str, entries: list[Entry]) -> None:
        if not entries:
            return
        self.persisted_total += await self.ledger.apply(stream, entries)
        await self.store.backend.execute(stream, "XACK", stream, GROUP,
                                         *(e.entry_id for e in entries))

    async def _claim(self, stream: str) -> int:
        """Take over entries left pending by a dead consumer; returns how many."""
        now = time.monotonic()
        if now - self._last_claim.get(stream, 0.0) < self.claim_idle_ms / 2000:
            return 0
        self._last_claim[stream] = now
        total, cursor = 0, "0-0"
        while True:
            reply = await self.store.backend.execute(
                stream, "XAUTOCLAIM", stream, GROUP, self.consumer, self.claim_idle_ms,
                cursor, "COUNT", self.batch_entries_max)
            cursor = str(reply[0])
            entries = _entries(reply[1])
            await self._write(stream, entries)
            total += len(entries)
            if len(reply) > 2 and reply[2]:
                log.error("%s: pending entries deleted before persisting: %s", stream, reply[2])
            if cursor == "0-0":
                return total

    async def step(self, stream: str) -> int:
        """One round on one stream: own pending first (after a restart under the same
        name), claims, then new entries. Returns entries written."""
        try:
            return await self._step(stream)
        except ReplyError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or its group vanished (Redis lost its data, or was flushed and
            # rebuilt): recreate the group from the stream's start.
            self._groups_ready.discard(stream)
            return await self._step(stream)

    async def _step(self, stream: str) -> int:
        await self._ensure_group(stream)
        done = await self._claim(stream)
        starts = (">",) if stream in self._own_checked else ("0", ">")
        self._own_checked.add(stream)
        for start in starts:
            reply = await self.store.backend.execute(
                stream, "XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT",
                self.batch_entries_max, "STREAMS", stream, start)
            if reply:
                entries = _entries(reply[0][1])
                await self._write(stream, entries)
                done += len(entries)
        return done

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

    async def run_once(self) -> int:
        done = 0
        for stream in self.streams:
            done += await self.step(stream)
        if self.trim and time.monotonic() - self._last_trim > TRIM_INTERVAL_SECONDS:
            self._last_trim = time.monotonic()
            for stream in self.streams:
                await self.trim_stream(stream)
        return done

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                done = await self.run_once()
            except (OSError, ReplyError, TimeoutError, RedisUnavailable) as exc:
                log.warning("persister: %r; retrying", exc)
                self._own_checked.clear()
                done = 0
            except Exception:
                log.exception("persister step failed; retrying")
                self._own_checked.clear()
                done = 0
            if done == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), IDLE_SLEEP_SECONDS)


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
    backlog, oldest_ms, pending_total = 0, None, 0
    for p in all_partitions(store.partitions):
        stream = p.events
        last = await _last_delivered(store, stream)
        if last is None:
            length = int(await store.backend.execute(stream, "XLEN", stream))
            backlog += length
            first = await store.backend.execute(stream, "XRANGE", stream, "-", "+", "COUNT", 1)
            candidates = [str(first[0][0])] if first else []
        else:
            summary = await store.backend.execute(stream, "XPENDING", stream, GROUP)
            pending = int(summary[0])
            pending_total += pending
            undelivered = await store.backend.execute(
                stream, "XRANGE", stream, f"({last}", "+", "COUNT", 1)
            candidates = [str(summary[1])] if pending else []
            if undelivered:
                candidates.append(str(undelivered[0][0]))
                backlog += int(await _undelivered_count(store, stream, last))
            backlog += pending
        for c in candidates:
            ms = int(c.split("-", 1)[0])
            oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
    lag = 0.0 if oldest_ms is None else max(0.0, (now_ms - oldest_ms) / 1000)
    return {"backlog_entries": backlog, "pending_entries": pending_total,
            "lag_seconds": round(lag, 3)}


async def _undelivered_count(store: Store, stream: str, last: str) -> int:
    groups = await store.backend.execute(stream, "XINFO", "GROUPS", stream)
    for g in groups:
        info = {str(g[i]): g[i + 1] for i in range(0, len(g), 2)}
        if info.get("name") == GROUP and info.get("lag") is not None:
            return int(info["lag"])
    # lag unknown (Redis cannot tell after some deletions): count what is after last
    rows = await store.backend.execute(stream, "XRANGE", stream, f"({last}", "+")
    return len(rows)
