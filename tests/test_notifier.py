"""The notifier against a real HTTP receiver (an aiohttp server in the test): signed
deliveries, back-off on errors and timeouts under a clock the test moves, at least once
across a SIGKILL, and private destinations refused at delivery unless allowed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.notify.notifier import Notifier, backoff_seconds
from gateway.notify.webhooks import verify
from gateway.redis.keys import tenant_keys
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock
from tests.support.gateway import start_gateway
from tests.support.gwclient import Gateway

SECRET = "whsec_" + "k" * 40
NEW_YORK = "+12125550123"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Receiver:
    """Answers each POST with the next of ``statuses`` (the last one repeats); "hang" never
    answers (until the test ends)."""

    statuses: list[int | str] = field(default_factory=lambda: [200])
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.read()))
        what = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
        if what == "hang":
            await self.release.wait()
            return web.Response(status=503)
        return web.Response(status=int(what))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    r.url = f"http://127.0.0.1:{port}/hook"
    yield r
    r.release.set()
    await runner.cleanup()


@pytest.fixture
async def gw(own_redis: RedisServer, aiohttp_client: Any, clock: ManualClock) -> Gateway:
    return await start_gateway(aiohttp_client, clock, own_redis.url, webhook_allow_private=True)


@pytest.fixture
async def store(own_redis: RedisServer, gw: Gateway) -> AsyncIterator[Store]:
    s = Store.from_url(own_redis.url, gw.settings.partitions)
    yield s
    await s.close()


async def low_balance_crossed(gw: Gateway, t: str, url: str, **hook: Any) -> None:
    """A tenant whose 8th call takes its available credits below 0.50 (one event)."""
    await gw.tenant(t)
    await gw.user(t, "u", "US", "pay_as_you_go")  # 0.07 reserved per call
    await gw.topup(t, "1.00", "k0")
    await gw.req("PUT", f"/v1/tenants/{t}/alerts", {"low_balance": "0.50"})
    await gw.req("PUT", f"/v1/tenants/{t}/webhooks/w1",
                 {"url": url, "secret": SECRET, **hook}, status=201)
    for i in range(8):
        await gw.call(t, f"c{i}", NEW_YORK, user="u")


async def deliveries(gw: Gateway, t: str, wid: str = "w1") -> list[dict[str, Any]]:
    return list((await gw.req("GET", f"/v1/tenants/{t}/webhooks/{wid}/deliveries"))
                ["deliveries"])


async def test_signed_delivery(gw: Gateway, store: Store, receiver: Receiver,
                               tenant_id: str) -> None:
    t = tenant_id
    await low_balance_crossed(gw, t, receiver.url)
    notifier = Notifier(store, gw.clock, allow_private=True)
    try:
        assert await notifier.run_once() == 2  # one delivery created, one attempted
    finally:
        await notifier.close()
    [(headers, body)] = receiver.requests
    assert verify(SECRET, headers["Callgate-Signature"], body)
    assert headers["Callgate-Signature"].startswith(f"t={int(gw.clock.now())},v1=")
    assert headers["Content-Type"] == "application/json"
    event = orjson.loads(body)
    assert headers["Callgate-Event-Id"] == event["id"]
    assert event == {"id": event["id"], "type": "credits.low_balance", "tenant_id": t,
                     "created_at": "2026-11-27T10:00:00Z",
                     "data": {"available": "0.4400", "threshold": "0.5000"}}
    assert await deliveries(gw, t) == [
        {"event_id": event["id"], "type": "credits.low_balance", "attempts": 1,
         "state": "delivered", "last_status": 200, "next_attempt_at": None}]
    # The same event, as the ledger will hold it, is on the partition stream under that id.
    entry_id = event["id"].split("_", 2)[2]
    stream = tenant_keys(t, gw.settings.partitions).partition.events
    assert await store.raw(stream, "XRANGE", stream, entry_id, entry_id)


async def test_filters_and_disabled_webhooks_get_nothing(
        gw: Gateway, store: Store, receiver: Receiver, tenant_id: str) -> None:
    t = tenant_id
    await low_balance_crossed(gw, t, receiver.url, events=["pool.threshold_crossed"])
    await gw.req("PUT", f"/v1/tenants/{t}/webhooks/off",
                 {"url": receiver.url, "secret": SECRET, "enabled": False}, status=201)
    notifier = Notifier(store, gw.clock, allow_private=True)
    try:
        assert await notifier.run_once() == 0
    finally:
        await notifier.close()
    assert receiver.requests == []
    assert await deliveries(gw, t) == []


async def test_retries_with_backoff_on_500_then_delivered(
        gw: Gateway, store: Store, receiver: Receiver, tenant_id: str) -> None:
    t = tenant_id
    receiver.statuses = [500, 500, 500, 200]
    await low_balance_crossed(gw, t, receiver.url)
    notifier = Notifier(store, gw.clock, allow_private=True)
    try:
        await notifier.run_once()
        for attempt, delay in ((1, 1), (2, 2), (3, 4)):
            [d] = await deliveries(gw, t)
            assert (d["state"], d["attempts"], d["last_status"]) == ("pending", attempt, 500)
            assert backoff_seconds(attempt) == delay
            gw.clock.advance(delay - 1)
            assert await notifier.deliver_due() == 0  # not due yet
            gw.clock.advance(1)
            assert await notifier.deliver_due() == 1
    finally:
        await notifier.close()
    [d] = await deliveries(gw, t)
    assert (d["state"], d["attempts"], d["last_status"]) == ("delivered", 4, 200)
    ids = {h["Callgate-Event-Id"] for h, _b in receiver.requests}
    assert len(receiver.requests) == 4 and len(ids) == 1  # the same id on every attempt
    assert all(verify(SECRET, h["Callgate-Signature"], b) for h, b in receiver.requests)


async def test_waiting_notifier_wakes_on_an_alert_and_on_a_due_retry(
        own_redis: RedisServer, gw: Gateway, store: Store, receiver: Receiver,
        tenant_id: str) -> None:
    """run() with a waiter (one blocking read over every notify stream, no polling):
    an alert that crosses while it waits is delivered, and a failed attempt is attempted
    again once the clock reaches its next attempt, with no other traffic."""
    t = tenant_id
    receiver.statuses = [500, 200]
    waiter = Store.from_url(own_redis.url, gw.settings.partitions)
    notifier = Notifier(store, gw.clock, allow_private=True, waiter=waiter)
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run(stop))
    try:
        await low_balance_crossed(gw, t, receiver.url)  # while the notifier waits
        deadline = time.monotonic() + 20
        while not receiver.requests:
            assert time.monotonic() < deadline, "the alert was not delivered"
            await asyncio.sleep(0.05)
        [d] = await deliveries(gw, t)
        assert (d["state"], d["attempts"], d["last_status"]) == ("pending", 1, 500)
        gw.clock.advance(backoff_seconds(1))
        while len(receiver.requests) < 2:
            assert time.monotonic() < deadline, "the due retry was not attempted"
            await asyncio.sleep(0.05)
        while (await deliveries(gw, t))[0]["state"] != "delivered":
            assert time.monotonic() < deadline, "the retry was not settled"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await waiter.close()
    assert len(receiver.requests) == 2


async def test_backoff_doubles_to_an_hour_and_fails_after_a_day(
        gw: Gateway, store: Store, receiver: Receiver, tenant_id: str) -> None:
    t = tenant_id
    receiver.statuses = [500]
    await low_balance_crossed(gw, t, receiver.url)
    notifier = Notifier(store, gw.clock, allow_private=True)
    start = gw.clock.now()
    delays: list[int] = []
    try:
        await notifier.run_once()
        for _ in range(100):  # bounded: 12 doublings, then ~23 hourly attempts
            [d] = await deliveries(gw, t)
            if d["state"] != "pending":
                break
            k = tenant_keys(t, gw.settings.partitions).partition.deliveries_due
            score = await store.raw(k, "ZRANGE", k, 0, 0, "WITHSCORES")
            delay = int(float(score[1]) / 1000 - gw.clock.now())
            delays.append(delay)
            gw.clock.advance(delay)
            assert await notifier.deliver_due() == 1
    finally:
        await notifier.close()
    assert delays[:13] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600]
    assert set(delays[12:]) == {3600}
    [d] = await deliveries(gw, t)
    assert d["state"] == "failed" and d["attempts"] == len(delays) + 1
    assert gw.clock.now() - start <= 86_400 < gw.clock.now() - start + 3600


async def test_timeout_is_retried(gw: Gateway, store: Store, receiver: Receiver,
                                  tenant_id: str) -> None:
    t = tenant_id
    receiver.statuses = ["hang", 204]
    await low_balance_crossed(gw, t, receiver.url)
    notifier = Notifier(store, gw.clock, allow_private=True, timeout_s=0.3)
    try:
        await notifier.run_once()
        [d] = await deliveries(gw, t)
        assert (d["state"], d["attempts"], d["last_status"]) == ("pending", 1, None)
        gw.clock.advance(1)
        assert await notifier.deliver_due() == 1
    finally:
        await notifier.close()
    [d] = await deliveries(gw, t)
    assert (d["state"], d["attempts"], d["last_status"]) == ("delivered", 2, 204)


async def test_private_destination_refused_at_delivery(
        gw: Gateway, store: Store, receiver: Receiver, tenant_id: str) -> None:
    """Registered while allowed (or before a DNS change): refused when delivering."""
    t = tenant_id
    await low_balance_crossed(gw, t, receiver.url)
    by_name = receiver.url.replace("127.0.0.1", "localhost")
    await gw.req("PUT", f"/v1/tenants/{t}/webhooks/w2", {"url": by_name, "secret": SECRET},
                 status=201)
    await gw.call(t, "more", NEW_YORK, user="u")  # nothing new: already announced
    await gw.req("PUT", f"/v1/tenants/{t}/alerts", {"low_balance": "0.30"})  # re-armed
    for i in range(3):
        await gw.call(t, f"m{i}", NEW_YORK, user="u")
    notifier = Notifier(store, gw.clock, allow_private=False)
    try:
        await notifier.run_once()
    finally:
        await notifier.close()
    assert receiver.requests == []
    states = [(d["state"], d["attempts"], d["last_status"])
              for w in ("w1", "w2") for d in await deliveries(gw, t, w)]
    # Two events (taken in after w2 was registered), each to both webhooks: w2 by name,
    # refused by the resolver the notifier connects through; w1 by its literal address.
    assert states == [("pending", 1, None)] * 4


async def test_entries_read_by_a_killed_notifier_are_read_again(
        gw: Gateway, store: Store, receiver: Receiver, tenant_id: str) -> None:
    t = tenant_id
    await low_balance_crossed(gw, t, receiver.url)
    stream = tenant_keys(t, gw.settings.partitions).partition.notify
    # What a notifier killed between reading the entry and creating its deliveries left.
    await store.raw(stream, "XGROUP", "CREATE", stream, "notify", "0", "MKSTREAM")
    assert await store.raw(stream, "XREADGROUP", "GROUP", "notify", "notifier", "COUNT", 10,
                           "STREAMS", stream, ">")
    notifier = Notifier(store, gw.clock, allow_private=True)
    try:
        await notifier.run_once()
    finally:
        await notifier.close()
    assert len(receiver.requests) == 1
    assert await store.raw(stream, "XLEN", stream) == 0  # acknowledged and deleted


@pytest.fixture
def notify_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Notifier processes a test started: killed (by their own handle) if still running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


async def test_nothing_lost_when_the_notifier_is_killed_mid_delivery(
        gw: Gateway, store: Store, receiver: Receiver, tenant_id: str, own_redis: RedisServer,
        notify_process: list[subprocess.Popen[bytes]]) -> None:
    t = tenant_id
    receiver.statuses = ["hang", 200]
    await low_balance_crossed(gw, t, receiver.url)
    env = {**os.environ, "CALLGATE_REDIS_URL": own_redis.url,
           "CALLGATE_PARTITIONS": str(gw.settings.partitions),
           "CALLGATE_WEBHOOK_ALLOW_PRIVATE": "1", "CALLGATE_LOG_LEVEL": "WARNING"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "notify"], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL)
    notify_process.append(proc)
    deadline = time.monotonic() + 30
    while not receiver.requests:  # the POST is in flight: the receiver holds it
        assert proc.poll() is None, "the notifier exited"
        assert time.monotonic() < deadline, "no delivery attempt within 30 s"
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    [d] = await deliveries(gw, t)
    assert (d["state"], d["attempts"]) == ("pending", 0)  # the attempt was never recorded
    # A new notifier after the lease: the same event again, delivered.
    clock = ManualClock(time.time() + 61)
    notifier = Notifier(store, clock, allow_private=True)
    try:
        assert await notifier.run_once() == 1
    finally:
        await notifier.close()
    [d] = await deliveries(gw, t)
    assert (d["state"], d["attempts"], d["last_status"]) == ("delivered", 1, 200)
    assert len(receiver.requests) == 2
    assert len({h["Callgate-Event-Id"] for h, _b in receiver.requests}) == 1
    assert all(verify(SECRET, h["Callgate-Signature"], b) for h, b in receiver.requests)


async def test_alert_events_reach_the_ledger(gw: Gateway, store: Store, receiver: Receiver,
                                             tenant_id: str, tmp_path: Path) -> None:
    from gateway.ledger import open_ledger
    from gateway.ledger.persister import Persister
    from tests.support.persist_helpers import drain

    t = tenant_id
    await low_balance_crossed(gw, t, receiver.url)
    ledger = await open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        await drain(Persister(store, ledger, consumer="p"))
        rows = await ledger.query(
            "SELECT type, entry_id, data FROM events WHERE tenant = ? AND type IN "
            "('alerts.updated', 'webhook.created', 'credits.low_balance') ORDER BY entry_id", t)
    finally:
        await ledger.close()
    assert [r[0] for r in rows] == ["alerts.updated", "webhook.created", "credits.low_balance"]
    assert all(SECRET not in str(r[2]) for r in rows)
    notifier = Notifier(store, gw.clock, allow_private=True)
    try:
        await notifier.run_once()
    finally:
        await notifier.close()
    [(headers, _body)] = receiver.requests
    assert headers["Callgate-Event-Id"].endswith("_" + str(rows[2][1]))


@pytest.mark.cluster
async def test_delivery_on_a_cluster_too(store_url: str, aiohttp_client: Any,
                                         clock: ManualClock, receiver: Receiver,
                                         tenant_id: str) -> None:
    """Intake and result functions touch only the tenant's slot (the suite's cluster run)."""
    gw = await start_gateway(aiohttp_client, clock, store_url, webhook_allow_private=True)
    t = tenant_id
    receiver.statuses = [500, 200]
    await low_balance_crossed(gw, t, receiver.url)
    s = Store.from_url(store_url, gw.settings.partitions)
    notifier = Notifier(s, gw.clock, allow_private=True)
    try:
        await notifier.run_once()
        gw.clock.advance(1)
        await notifier.run_once()
    finally:
        await notifier.close()
        await s.close()
    mine = [(h, b) for h, b in receiver.requests if orjson.loads(b)["tenant_id"] == t]
    assert len(mine) == 2
    [d] = await deliveries(gw, t)
    assert (d["state"], d["attempts"], d["last_status"]) == ("delivered", 2, 200)


async def test_status_command_reports_pending(gw: Gateway, store: Store, receiver: Receiver,
                                              tenant_id: str, own_redis: RedisServer) -> None:
    receiver.statuses = [500]
    await low_balance_crossed(gw, tenant_id, receiver.url)
    notifier = Notifier(store, gw.clock, allow_private=True)
    try:
        await notifier.run_once()
    finally:
        await notifier.close()
    env = {**os.environ, "CALLGATE_REDIS_URL": own_redis.url,
           "CALLGATE_PARTITIONS": str(gw.settings.partitions)}
    out = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "gateway", "notify", "--status"], cwd=REPO,
        env=env, capture_output=True, timeout=60, check=True)
    status = orjson.loads(out.stdout)
    assert status["pending"] == 1 and status["oldest_pending_seconds"] >= 0
