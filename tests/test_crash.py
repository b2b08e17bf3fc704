"""Crash tests: kill -9 of the persister, and of redis-server, under load.

Seeded: the seed is printed; CALLGATE_CHAOS_SEED replays a run, CALLGATE_CHAOS_KILLS sets
the number of persister kills (20 here and in CI; `make chaos` runs 100). Afterwards every
acknowledged change is in the ledger exactly once: entry ids against the streams, call ids
against acknowledged ends, money sums against Redis; and no call answered anything but allow
holds anything in Redis (a phantom allow, issue 11).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger import Ledger, open_ledger
from gateway.ledger.persister import Persister
from gateway.redis.keys import active_member, all_partitions
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock
from tests.support.gateway import start_gateway
from tests.support.gwclient import Gateway
from tests.support.hangguard import hang_guard
from tests.support.persist_helpers import drain, entries_added, scalar, wait_drained

pytestmark = pytest.mark.chaos

REPO = Path(__file__).resolve().parent.parent
LONDON = "+442071838750"
PARTITIONS = 4
TENANTS = 3
LOAD_TASKS = 4
KILLS = int(os.environ.get("CALLGATE_CHAOS_KILLS", "20"))
REDIS_KILLS = int(os.environ.get("CALLGATE_CHAOS_REDIS_KILLS", "5"))
# Each test runs in seconds (a minute under `make chaos`); past this it is hung: fail with
# every task's stack (tests/support/hangguard.py).
HANG_GUARD_SECONDS = 120 + 5 * (KILLS + REDIS_KILLS)


def chaos_seed() -> int:
    seed = int(os.environ.get("CALLGATE_CHAOS_SEED", str(random.randrange(2**32))))
    print(f"\nchaos seed: {seed} (replay with CALLGATE_CHAOS_SEED={seed})")
    return seed


@dataclass
class Acked:
    """Changes the gateway acknowledged (HTTP 200)."""

    topups_micro: dict[str, int] = field(default_factory=dict)  # tenant -> sum
    ended: dict[str, set[str]] = field(default_factory=dict)  # tenant -> call ids
    # Every authorization tried, and those answered allow: a call answered anything else
    # (a deny, service_unavailable after a timeout or a lost connection) must hold nothing
    # in Redis, even when its function ran (phantoms()).
    started: dict[str, set[str]] = field(default_factory=dict)
    allowed: dict[str, set[str]] = field(default_factory=dict)


async def setup_tenants(gw: Gateway) -> list[str]:
    tenants = [f"crash-{i}" for i in range(TENANTS)]
    for t in tenants:
        assert (await gw.req("PUT", f"/v1/tenants/{t}", {"name": t}, status=None)) is not None
        await gw.user(t, "payg", "US", "pay_as_you_go")
        await gw.user(t, "dom", "US", "domestic")
    return tenants


async def load(gw: Gateway, tenants: list[str], rng: random.Random, acked: Acked,
               stop: asyncio.Event, worker: int) -> None:
    """Authorize / extend / end / top-up until ``stop``; a non-200 is simply not acked."""
    n = 0
    while not stop.is_set():
        n += 1
        t = rng.choice(tenants)
        if rng.random() < 0.2:
            key = f"w{worker}-{n}"
            r = await gw.client.post(f"/v1/tenants/{t}/credits/topups",
                                     json={"amount": "1.00", "idempotency_key": key},
                                     headers=AUTH)
            if r.status == 200:
                acked.topups_micro[t] = acked.topups_micro.get(t, 0) + 1_000_000
            continue
        cid = f"w{worker}-{n}"
        acked.started.setdefault(t, set()).add(cid)
        r = await gw.client.post(f"/v1/tenants/{t}/calls", headers=AUTH, json={
            "call_id": cid, "direction": "outbound", "to": LONDON,
            "user_id": rng.choice(["payg", "dom"])})
        if r.status != 200 or (await r.json())["decision"] != "allow":
            continue
        acked.allowed.setdefault(t, set()).add(cid)
        if rng.random() < 0.5:
            await gw.client.post(f"/v1/tenants/{t}/calls/{cid}/extend", headers=AUTH,
                                 json={"used_seconds": rng.randrange(0, 200)})
        r = await gw.client.post(f"/v1/tenants/{t}/calls/{cid}/end", headers=AUTH,
                                 json={"duration_seconds": rng.randrange(0, 400)})
        if r.status == 200:
            acked.ended.setdefault(t, set()).add(cid)


from tests.support.gwclient import AUTH  # noqa: E402


async def end_everything(gw: Gateway, acked: Acked) -> None:
    """End, as a switch does, every call answered allow whose end was not acknowledged
    (idempotent, D31). A call answered anything else is never ended: the switch never
    connected it."""
    for t, calls in acked.allowed.items():
        for cid in calls - acked.ended.get(t, set()):
            deadline = time.monotonic() + 20
            while True:
                r = await gw.client.post(f"/v1/tenants/{t}/calls/{cid}/end", headers=AUTH,
                                         json={"duration_seconds": 10})
                if r.status == 200:
                    acked.ended.setdefault(t, set()).add(cid)
                    break
                if r.status == 404:  # never authorized, or authorized and denied
                    break
                assert time.monotonic() < deadline, (t, cid, r.status)
                await asyncio.sleep(0.05)


async def phantoms(store: Store, acked: Acked) -> list[str]:
    """Calls not answered allow that Redis holds as active, with a reservation, or in the
    active zset (the reaper would bill them as fully used)."""
    found = []
    for t, calls in acked.started.items():
        active = store.keys(t).partition.active
        for cid in sorted(calls - acked.allowed.get(t, set())):
            rec = await store.call_get(t, cid) or {}
            held = await store.backend.execute(active, "ZSCORE", active, active_member(t, cid))
            if rec.get("st") == "active" or int(rec.get("pr") or 0) or \
                    int(rec.get("cr") or 0) or held is not None:
                found.append(f"{t}/{cid}: {rec.get('st')} pr={rec.get('pr')} "
                             f"cr={rec.get('cr')} in active zset: {held is not None}")
    return found


async def verify(store: Store, ledger: Ledger, tenants: list[str], acked: Acked) -> None:
    phantom = await phantoms(store, acked)
    assert not phantom, f"{len(phantom)} phantom allows: {phantom[:10]}"
    # Entry ids: every entry ever appended is in the ledger once (PK), and every entry
    # still in a stream is among them.
    assert await scalar(ledger, "SELECT COUNT(*) FROM events") == await entries_added(store)
    for p in all_partitions(PARTITIONS):
        in_stream = {str(e[0]) for e in
                     await store.backend.execute(p.events, "XRANGE", p.events, "-", "+")}
        rows = await ledger.query("SELECT entry_id FROM events WHERE stream = ?", p.events)
        assert in_stream <= {str(r[0]) for r in rows}
    for t in tenants:
        cdr_ids = {str(r[0]) for r in
                   await ledger.query("SELECT call_id FROM cdrs WHERE tenant = ?", t)}
        denied = {str(r[0]) for r in await ledger.query(
            "SELECT call_id FROM calls WHERE tenant = ? AND state = 'denied'", t)}
        assert acked.ended.get(t, set()) - denied <= cdr_ids
        ended_events = await scalar(
            ledger, "SELECT COUNT(*) FROM events WHERE tenant = ? AND type = 'call.ended'", t)
        assert ended_events == len(cdr_ids)
        topups = int(await scalar(
            ledger, "SELECT COALESCE(SUM(amount_micro), 0) FROM topups WHERE tenant = ?", t))
        assert topups >= acked.topups_micro.get(t, 0)
        charged = int(await scalar(
            ledger, "SELECT COALESCE(SUM(credits_micro), 0) FROM cdrs WHERE tenant = ?", t))
        _, balance, reserved = await store.credits_get(t)
        active = [await store.backend.execute(p.active, "ZRANGE", p.active, 0, -1)
                  for p in all_partitions(PARTITIONS)]
        assert reserved == 0, (t, reserved, active, acked.started.get(t), acked.ended.get(t))
        assert balance == topups - charged, (t, balance, topups, charged)
        assert int(await scalar(ledger, "SELECT balance_micro FROM tenants WHERE tenant = ?",
                                t)) == balance


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """conftest's, with an fsync per write: a kill -9 of Redis loses nothing acknowledged."""
    with RedisServer(tmp_path / "redis", appendfsync="always", name="crash-redis") as server:
        yield server


@pytest.fixture
async def crash_gw(own_redis: RedisServer, ledger_url: str, aiohttp_client: Any
                   ) -> AsyncIterator[Gateway]:
    clock = ManualClock(time.time())
    yield await start_gateway(aiohttp_client, clock, own_redis.url, partitions=PARTITIONS,
                              database_url=ledger_url)


def start_persister(redis_url: str, ledger_url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CALLGATE_REDIS_URL": redis_url, "CALLGATE_DATABASE_URL": ledger_url,
           "CALLGATE_PARTITIONS": str(PARTITIONS), "CALLGATE_PERSIST_CLAIM_IDLE_MS": "200",
           "CALLGATE_LOG_LEVEL": "ERROR"}
    return subprocess.Popen([sys.executable, "-m", "gateway", "persist"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_persister_killed_repeatedly_under_load(crash_gw: Gateway) -> None:
    async with hang_guard(HANG_GUARD_SECONDS):
        gw = crash_gw
        rng = random.Random(chaos_seed())
        assert gw.settings.redis_url and gw.settings.database_url
        tenants = await setup_tenants(gw)
        acked, stop = Acked(), asyncio.Event()
        loads = [asyncio.create_task(
            load(gw, tenants, random.Random(rng.random()), acked, stop, w))
            for w in range(LOAD_TASKS)]
        try:
            for _ in range(KILLS):
                proc = start_persister(gw.settings.redis_url, gw.settings.database_url)
                await asyncio.sleep(rng.uniform(0.05, 0.6))  # the moment of the crash
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait)
        finally:
            stop.set()
            await asyncio.gather(*loads)
        await end_everything(gw, acked)
        assert sum(len(c) for c in acked.ended.values()) > KILLS
        proc = start_persister(gw.settings.redis_url, gw.settings.database_url)
        store = Store.from_url(gw.settings.redis_url, PARTITIONS)
        ledger = await open_ledger(gw.settings.database_url)
        try:
            await wait_drained(store, deadline_s=60)
            proc.terminate()
            await asyncio.to_thread(proc.wait)
            await verify(store, ledger, tenants, acked)
        finally:
            proc.kill()
            await ledger.close()
            await store.close()


@pytest.mark.phantom
async def test_redis_killed_with_appendfsync_always_loses_no_acked_debit(
    crash_gw: Gateway, own_redis: RedisServer
) -> None:
    async with hang_guard(HANG_GUARD_SECONDS):
        gw = crash_gw
        rng = random.Random(chaos_seed())
        assert gw.settings.redis_url and gw.settings.database_url
        tenants = await setup_tenants(gw)
        for t in tenants:
            await gw.topup(t, "100.00", "seed")
        acked = Acked(topups_micro={t: 100_000_000 for t in tenants})
        stop = asyncio.Event()
        store = Store.from_url(gw.settings.redis_url, PARTITIONS)
        ledger = await open_ledger(gw.settings.database_url)
        persister = Persister(store, ledger, consumer="in-test", claim_idle_ms=200)
        tasks = [asyncio.create_task(load(gw, tenants, random.Random(rng.random()), acked, stop, w))
                 for w in range(LOAD_TASKS)]
        tasks.append(asyncio.create_task(persister.run(stop)))
        try:
            for _ in range(REDIS_KILLS):
                await asyncio.sleep(rng.uniform(0.1, 0.5))  # the moment of the crash
                own_redis.kill()
                await asyncio.to_thread(own_redis.start)
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        try:
            await end_everything(gw, acked)
            assert sum(len(c) for c in acked.ended.values()) > 0
            await drain(persister)
            await verify(store, ledger, tenants, acked)
        finally:
            await ledger.close()
            await store.close()
