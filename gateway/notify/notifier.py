"""The notifier: alert events to the tenants' webhooks, at least once, off the call path.

``callgate notify`` (also a supervised child of ``callgate serve``, like the persister).

Intake. The call-control functions put every alert crossing on the partition's notify
stream (lua/05_alerts.lua). The notifier reads it through its consumer group (``GROUP``) and,
per entry, creates one delivery per enabled webhook of the tenant that takes that event type
and acknowledges the entry, in one function call (``delivery_enqueue``): killed before it,
the entry is read again (its own pending entries first); after it, the deliveries exist.

Delivery. Deliveries due are in a per-partition sorted set scored by their next attempt
(ms). Before an attempt the notifier leases it (moves its score LEASE_MS ahead), so that a
notifier killed mid-attempt (kill -9) leaves it due again after the lease: at least once,
the same event id on every attempt. An attempt is a POST with the signature headers
(gateway.notify.webhooks) and a TIMEOUT_SECONDS bound; a 2xx settles it ``delivered``; anything
else (status, timeout, refused destination) schedules the next attempt BACKOFF_FIRST_S
doubling up to BACKOFF_MAX_S later, until GIVE_UP_SECONDS after its creation: then
``failed``. All retry state is in Redis; the clock is injectable (tests move it).

Waiting, not polling (``run``). On one Redis server the notifier reads every notify stream
with ONE ``XREADGROUP … BLOCK`` on a connection of its own (``waiter``), which returns as
soon as an alert crosses; the due sets are scanned only when a round made or attempted
deliveries, when the earliest due attempt it knows of (read after each scan) comes, and
every RESCAN_SECONDS in any case; the pending gauges likewise. An idle notifier costs Redis
two commands (CLIENT ID, the read) every BLOCK_MILLISECONDS (10 s), and a stop ends the wait
at once (``BlockingRead``: CLIENT UNBLOCK). A cluster cannot serve one command over keys of many
slots: there each stream is read on its own every IDLE_SLEEP_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from gateway import metrics
from gateway.errors import StoreErrorReply
from gateway.notify.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    GuardedResolver,
    literal_refusal,
    signature,
)
from gateway.redis import contract
from gateway.redis.client import Arg, ReplyError
from gateway.redis.keys import (
    DELIVERY_LOG_MAX,
    DELIVERY_RETENTION_SECONDS,
    PartitionKeys,
    all_partitions,
    tenant_keys,
)
from gateway.redis.store import BlockingRead, Store, read_new_entries
from gateway.rules.clock import Clock, rfc3339
from gateway.rules.money import format_money

log = logging.getLogger(__name__)

GROUP = "notify"
CONSUMER = "notifier"
TIMEOUT_SECONDS = 5.0
BACKOFF_FIRST_S = 1
BACKOFF_MAX_S = 3600
GIVE_UP_SECONDS = 86_400
LEASE_MS = 60_000  # an attempt under way; far beyond TIMEOUT_SECONDS
BATCH = 100  # entries read, or deliveries attempted, per partition and round
CONCURRENT_ATTEMPTS = 32
IDLE_SLEEP_SECONDS = 0.5
GAUGES_INTERVAL_SECONDS = 5.0
# Waiting (one server): how long one blocking read over the notify streams waits before the
# round goes on, when no delivery is due sooner (a stop ends the wait at once:
# BlockingRead). Each timeout wakes the notifier and Redis.
BLOCK_MILLISECONDS = 10_000
# Without a round that made or attempted deliveries, the due sets and the pending gauges
# are read again after this long (the earliest due attempt is known between scans).
RESCAN_SECONDS = 60.0
USER_AGENT = "callgate-webhooks/1"


def backoff_seconds(attempts: int) -> int:
    """Delay before the next attempt after ``attempts`` failed ones: 1, 2, 4 … 3600 s."""
    return int(min(BACKOFF_FIRST_S * 2 ** min(attempts - 1, 30), BACKOFF_MAX_S))


def event_id(partition: PartitionKeys, entry_id: str) -> str:
    """The event's id: its partition and its entry id on the partition stream, unique and
    the same on every attempt (and in the ledger)."""
    return f"evt_{partition.tag[2:-1]}_{entry_id}"


# Money fields of the stream events (micro-units) and their names in the webhook body.
_MONEY = {"available_micro": "available", "threshold_micro": "threshold",
          "amount_micro": "amount", "below_micro": "below", "limit_micro": "limit"}


def event_body(eid: str, etype: str, tenant: str, data_text: str) -> bytes:
    """The JSON body of the POST (api.md): {id, type, tenant_id, created_at, data}."""
    raw: dict[str, Any] = orjson.loads(data_text)
    ts = int(raw.pop("ts", 0))
    raw.pop("type", None)
    raw.pop("tenant", None)
    data = {_MONEY.get(k, k): format_money(int(v)) if k in _MONEY else v
            for k, v in raw.items()}
    return orjson.dumps({"id": eid, "type": etype, "tenant_id": tenant,
                         "created_at": rfc3339(ts), "data": data})


@dataclass
class Notifier:
    store: Store
    clock: Clock
    allow_private: bool = False
    timeout_s: float = TIMEOUT_SECONDS
    # One name for every run: a notifier killed mid-intake is replaced by one that reads
    # the entries it left pending (its own, by name) first.
    consumer: str = CONSUMER
    _session: aiohttp.ClientSession | None = None
    _groups_ready: set[str] = field(default_factory=set)
    _own_checked: set[str] = field(default_factory=set)
    _last_gauges: float = 0.0
    # A Store of its own for the blocking read over every notify stream (one Redis server
    # only; None: each stream read on its own, polling).
    waiter: Store | None = None
    _blocking: BlockingRead | None = None

    @property
    def partitions(self) -> list[PartitionKeys]:
        return all_partitions(self.store.partitions)

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.allow_private),
                                             limit=CONCURRENT_ATTEMPTS)
            self._session = aiohttp.ClientSession(connector=connector,
                                                  headers={"User-Agent": USER_AGENT})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- intake ------------------------------------------------------------------------

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups_ready:
            return
        try:
            await self.store.raw(stream, "XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
        except StoreErrorReply as exc:
            if "BUSYGROUP" not in exc.reply:
                raise
        self._groups_ready.add(stream)

    async def _read(self, stream: str) -> list[Any]:
        """Our own entries left pending by an earlier run first (killed mid-intake), then
        new ones."""
        await self._ensure_group(stream)
        entries: list[Any] = []
        for start in ("0", ">"):
            if start == "0" and stream in self._own_checked:
                continue
            reply = await self.store.raw(stream, "XREADGROUP", "GROUP", GROUP, self.consumer,
                                         "COUNT", BATCH, "STREAMS", stream, start)
            entries += list(reply[0][1]) if reply else []
            if len(entries) >= BATCH:
                break
            self._own_checked.add(stream)
        return entries

    async def _read_waiting(self, waiter: Store, block_ms: int) -> list[list[Any]]:
        """Every stream's entries: own pending ones left by an earlier run stream by stream
        (once per stream), then the new ones of all streams with one XREADGROUP, blocking
        up to ``block_ms`` (0: not at all) when there was nothing else."""
        partitions = self.partitions
        old: list[list[Any]] = []
        for p in partitions:
            entries: list[Any] = []
            if p.notify not in self._own_checked:
                await self._ensure_group(p.notify)
                reply = await self.store.raw(p.notify, "XREADGROUP", "GROUP", GROUP,
                                             self.consumer, "COUNT", BATCH, "STREAMS",
                                             p.notify, "0")
                entries = list(reply[0][1]) if reply else []
                if len(entries) < BATCH:
                    self._own_checked.add(p.notify)
            old.append(entries)
        streams = [p.notify for p in partitions]
        wait_ms = block_ms if not any(old) else 0  # something to do already: no wait
        try:
            reply = await read_new_entries(waiter, self._blocking, GROUP, self.consumer, BATCH,
                                           streams, wait_ms)
        except ReplyError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups_ready.clear()  # a stream lost its group (deleted): make them again
            self._own_checked.clear()
            return old
        got = {str(stream): list(raw) for stream, raw in (reply or [])}
        return [o + got.get(s, []) for s, o in zip(streams, old, strict=True)]

    async def intake(self, block_ms: int = 0) -> int:
        """One read of every notify stream (with a ``waiter``: one command, which may block
        up to ``block_ms`` for new entries); the number of deliveries created."""
        made = 0
        webhooks: dict[str, dict[str, dict[str, Any]]] = {}
        if self.waiter is not None:
            batches = await self._read_waiting(self.waiter, block_ms)
        else:
            batches = [await self._read(p.notify) for p in self.partitions]
        for p, batch in zip(self.partitions, batches, strict=True):
            for item in batch:
                entry_id, flat = str(item[0]), item[1]
                if flat is None:  # deleted meanwhile
                    continue
                f = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}
                made += await self._enqueue(p, entry_id, f, webhooks)
        return made

    async def _tenant_webhooks(self, tenant: str,
                               cache: dict[str, dict[str, dict[str, Any]]]
                               ) -> dict[str, dict[str, Any]]:
        if tenant not in cache:
            k = tenant_keys(tenant, self.store.partitions)
            flat = await self.store.raw(k.webhooks, "HGETALL", k.webhooks)
            cache[tenant] = {str(flat[i]): orjson.loads(flat[i + 1])
                             for i in range(0, len(flat), 2)}
        return cache[tenant]

    async def _enqueue(self, p: PartitionKeys, entry_id: str, f: dict[str, str],
                       cache: dict[str, dict[str, dict[str, Any]]]) -> int:
        tenant, etype = f.get("tenant", ""), f.get("type", "")
        eid = event_id(p, f.get("eid", entry_id))
        body = event_body(eid, etype, tenant, f.get("data", "{}"))
        k = tenant_keys(tenant, self.store.partitions)
        each_keys: list[str] = []  # per delivery: its hash, its webhook's log
        each_args: list[Arg] = []  # per delivery: its id, its webhook's id
        for wid, hook in sorted((await self._tenant_webhooks(tenant, cache)).items()):
            if hook.get("enabled") and etype in hook.get("events", ()):
                did = f"{tenant}/{wid}/{eid}"
                each_keys += [p.delivery(did), k.delivery_log(wid)]
                each_args += [did, wid]
        fn = contract.DELIVERY_ENQUEUE
        reply = await self.store.run(
            fn, fn.keys_of(each_keys, notify=p.notify, due=p.deliveries_due,
                           pending=p.deliveries_pending),
            fn.argv_of(each_args, group=GROUP, entry_id=entry_id, now_ms=self._now_ms(),
                       event_id=eid, type=etype, body=body, tenant_id=tenant,
                       log_max=DELIVERY_LOG_MAX))
        return int(reply.created)

    # -- delivery ------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """Every delivery due now, attempted once; the number attempted."""
        now_ms = self._now_ms()
        due: list[tuple[PartitionKeys, str]] = []
        for p in self.partitions:
            ids = await self.store.raw(p.deliveries_due, "ZRANGE", p.deliveries_due,
                                       "-inf", now_ms, "BYSCORE", "LIMIT", 0, BATCH)
            if ids:
                # Leased: a notifier killed mid-attempt leaves them due again after LEASE_MS.
                await self.store.raw(p.deliveries_due, "ZADD", p.deliveries_due, "XX",
                                     *(x for d in ids for x in (now_ms + LEASE_MS, str(d))))
                due += [(p, str(d)) for d in ids]
        gate = asyncio.Semaphore(CONCURRENT_ATTEMPTS)

        async def one(p: PartitionKeys, did: str) -> None:
            async with gate:
                await self._attempt(p, did)

        await asyncio.gather(*(one(p, d) for p, d in due))
        return len(due)

    async def _attempt(self, p: PartitionKeys, did: str) -> None:
        key = p.delivery(did)
        raw = await self.store.raw(key, "HGETALL", key)
        d = {str(raw[i]): str(raw[i + 1]) for i in range(0, len(raw), 2)}
        if not d or d.get("state") != "pending":
            await self._result(p, did, "failed", 0, None, 0)  # drops it from the sets
            return
        attempts = int(d["attempts"])
        k = tenant_keys(d["tenant"], self.store.partitions)
        hook_raw = await self.store.raw(k.webhooks, "HGET", k.webhooks, d["webhook"])
        hook = None if hook_raw is None else orjson.loads(hook_raw)
        if hook is None or not hook.get("enabled"):
            metrics.count_webhook_delivery("failed")
            await self._result(p, did, "failed", attempts, None, 0)
            return
        status = await self.post(hook["url"], hook["secret"], d["event_id"],
                                 d["body"].encode())
        attempts += 1
        now_ms = self._now_ms()
        if status is not None and 200 <= status < 300:
            metrics.count_webhook_delivery("delivered")
            await self._result(p, did, "delivered", attempts, status, 0)
            return
        nxt = now_ms + backoff_seconds(attempts) * 1000
        if nxt > int(d["created"]) + GIVE_UP_SECONDS * 1000:
            metrics.count_webhook_delivery("failed")
            await self._result(p, did, "failed", attempts, status, 0)
        else:
            metrics.count_webhook_delivery("retry")
            await self._result(p, did, "pending", attempts, status, nxt)

    async def post(self, url: str, secret: str, eid: str, body: bytes) -> int | None:
        """One attempt: the HTTP status, or None (no answer in time, refused, unreachable).
        Logs the host only: a URL may carry a token in its path or query."""
        host = urlsplit(url).hostname
        why = literal_refusal(url, self.allow_private)
        if why is not None:
            log.warning("webhook to %s refused: %s", host, why)
            return None
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: eid,
                   SIGNATURE_HEADER: signature(secret, int(self.clock.now()), body)}
        session = await self.session()
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False,
                                    timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("webhook to %s: no answer: %s", host, type(exc).__name__)
            return None

    async def _result(self, p: PartitionKeys, did: str, state: str, attempts: int,
                      status: int | None, next_ms: int) -> None:
        f = contract.DELIVERY_RESULT
        await self.store.run(
            f, f.keys_of(due=p.deliveries_due, pending=p.deliveries_pending,
                         delivery=p.delivery(did)),
            f.argv_of(delivery_id=did, state=state, attempts=attempts,
                      last_status="" if status is None else status, next_ms=next_ms,
                      retention_seconds=DELIVERY_RETENTION_SECONDS))

    # -- state ---------------------------------------------------------------------------

    async def pending(self) -> tuple[int, float]:
        """Deliveries pending over every partition, and the age (s) of the oldest."""
        count, oldest = 0, None
        for p in self.partitions:
            count += int(await self.store.raw(p.deliveries_pending, "ZCARD",
                                              p.deliveries_pending))
            first = await self.store.raw(p.deliveries_pending, "ZRANGE", p.deliveries_pending,
                                         0, 0, "WITHSCORES")
            if first:
                ms = int(float(first[1]))
                oldest = ms if oldest is None else min(oldest, ms)
        age = 0.0 if oldest is None else max(0.0, (self._now_ms() - oldest) / 1000)
        return count, age

    async def next_due_ms(self) -> int | None:
        """The earliest next attempt (ms) over every partition; None: nothing is due."""
        first: int | None = None
        for p in self.partitions:
            head = await self.store.raw(p.deliveries_due, "ZRANGE", p.deliveries_due, 0, 0,
                                        "WITHSCORES")
            if head:
                ms = int(float(head[1]))
                first = ms if first is None else min(first, ms)
        return first

    async def run_once(self) -> int:
        """One round: intake, then the deliveries due; how much it did."""
        made = await self.intake()
        done = await self.deliver_due()
        if time.monotonic() - self._last_gauges >= GAUGES_INTERVAL_SECONDS:
            self._last_gauges = time.monotonic()
            metrics.set_webhook_pending(*await self.pending())
        return made + done

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: rounds that wait for alerts (one blocking read with a
        ``waiter``, else a pause of IDLE_SLEEP_SECONDS) and attempt what is due. The due
        sets are scanned after a round that did something, when the earliest known
        attempt is due, and every RESCAN_SECONDS; never at every idle round."""
        next_due: int | None = None
        scan_needed = True
        last_scan = 0.0
        block_ms = 0
        if self.waiter is not None:
            self._blocking = BlockingRead(self.store, self.waiter, self.partitions[0].notify)
            self._blocking.start(stop)
        try:
            while not stop.is_set():
                busy = 0
                metrics.flush_if_due()  # this process's batched metrics, without a wake-up
                try:
                    made = await self.intake(block_ms)
                    now = time.monotonic()
                    if (made or scan_needed or now - last_scan >= RESCAN_SECONDS
                            or (next_due is not None and self._now_ms() >= next_due)):
                        done = await self.deliver_due()
                        next_due = await self.next_due_ms()
                        scan_needed, last_scan = False, now
                        busy = made + done
                        if busy or now - self._last_gauges >= RESCAN_SECONDS:
                            self._last_gauges = now
                            metrics.set_webhook_pending(*await self.pending())
                except Exception:  # Redis down, a bug in one round: log, go on
                    log.exception("notifier round failed; retrying")
                    scan_needed = True
                    block_ms = 0
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), IDLE_SLEEP_SECONDS)
                    continue
                if busy:
                    block_ms = 0
                    continue
                until_due = (BLOCK_MILLISECONDS if next_due is None
                             else max(1, next_due - self._now_ms()))
                if self.waiter is not None:
                    block_ms = min(BLOCK_MILLISECONDS, until_due)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(),
                                               min(IDLE_SLEEP_SECONDS, until_due / 1000))
        finally:
            if self._blocking is not None:
                await self._blocking.close()
                self._blocking = None
            await self.close()
