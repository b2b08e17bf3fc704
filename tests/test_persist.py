"""The persister, the ledger and the reaper on SQLite and PostgreSQL (real servers).

Each test runs its own redis-server: a consumer group is per stream, and streams are per
Redis, so sharing the session server would let tests consume each other's events.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.ledger import Entry, Ledger, open_ledger
from gateway.ledger import persister as persist_mod
from gateway.ledger.persister import GROUP, Persister, persister_status
from gateway.ledger.reaper import Reaper
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock
from tests.support.gateway import start_gateway
from tests.support.gwclient import AUTH, Gateway
from tests.support.persist_helpers import drain, entries_added, scalar

LONDON = "+442071838750"
NEW_YORK = "+12125550123"
PARTITIONS = 4


@pytest.fixture
async def pgw(own_redis: RedisServer, clock: ManualClock, aiohttp_client: Any
              ) -> AsyncIterator[Gateway]:
    yield await start_gateway(aiohttp_client, clock, own_redis.url, partitions=PARTITIONS)


@pytest.fixture
async def store(own_redis: RedisServer) -> AsyncIterator[Store]:
    s = Store.from_url(own_redis.url, PARTITIONS)
    await s.load_functions()
    yield s
    await s.close()


@pytest.fixture
async def ledger(ledger_url: str) -> AsyncIterator[Ledger]:
    led = await open_ledger(ledger_url)
    yield led
    await led.close()


async def some_traffic(gw: Gateway, t: str) -> None:
    """Tenant, users, top-up, allowed / denied / extended / ended calls, toll-free."""
    await gw.tenant(t)
    await gw.user(t, "us0", "US", "domestic")
    await gw.user(t, "payg", "US", "pay_as_you_go")
    await gw.topup(t, "10.00", "k1")
    await gw.req("PUT", f"/v1/tenants/{t}/toll-free-numbers/+18005550100", status=None)
    d = await gw.call(t, "c-dom", NEW_YORK, user="us0")
    assert d["decision"] == "allow", d
    await gw.extend(t, "c-dom", 250)
    gw.clock.advance(400)
    await gw.end(t, "c-dom", 400)
    d = await gw.call(t, "c-intl", LONDON, user="payg")
    assert d["decision"] == "allow", d
    gw.clock.advance(95)
    await gw.end(t, "c-intl", 95)
    d = await gw.call(t, "c-denied", "+99912345", user="us0")
    assert d["decision"] == "deny", d


async def test_every_event_reaches_the_ledger_exactly_once(
    pgw: Gateway, store: Store, ledger: Ledger, tenant_id: str
) -> None:
    t = tenant_id
    await some_traffic(pgw, t)
    persister = Persister(store, ledger, consumer="a")
    await drain(persister)
    added = await entries_added(store)
    assert await scalar(ledger, "SELECT COUNT(*) FROM events") == added
    types = {r[0] for r in await ledger.query("SELECT type FROM events")}
    assert {"tenant.created", "user.created", "credits.topped_up", "tollfree.added",
            "call.allowed", "call.extended", "call.ended", "call.denied"} <= types

    # Re-delivery (a crash between commit and XACK) changes nothing.
    stream = store.keys(t).partition.events
    raw = await store.backend.execute(stream, "XRANGE", stream, "-", "+")
    again = [entry(e) for e in raw]
    assert again, "stream trimmed before the group was done"
    assert await ledger.apply(stream, again) == 0
    assert await scalar(ledger, "SELECT COUNT(*) FROM events") == added

    cdrs = await ledger.cdrs(t, None, None, 10, None)
    assert [c["call_id"] for c in cdrs] == ["c-intl", "c-dom"]
    intl = cdrs[0]
    _, balance, _ = await store.credits_get(t)
    assert intl["credits_micro"] == 10_000_000 - balance > 0
    assert (intl["direction"], intl["to_number"], intl["dest_class"]) == (
        "outbound", LONDON, "international")
    dom = cdrs[1]
    assert (dom["domestic_pool_minutes"], dom["duration_seconds"]) == (7, 400)
    assert await scalar(ledger, "SELECT balance_micro FROM tenants WHERE tenant = ?",
                        t) == balance
    assert await scalar(ledger, "SELECT state FROM calls WHERE call_id = 'c-denied'") == "denied"


def entry(raw: Any) -> Entry:
    """A stream entry as XRANGE gives it, as the persister reads it (type and tenant ""
    when the entry is 'data' alone)."""
    entry_id, flat = raw
    f = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}
    return Entry(str(entry_id), f.get("type", ""), f.get("tenant", ""), f["data"])


async def test_an_entry_of_data_alone_projects_as_one_with_type_and_tenant(
    pgw: Gateway, store: Store, ledger: Ledger, tenant_id: str, tmp_path: Path
) -> None:
    """An entry carrying only 'data', whose JSON names its type and tenant (the shape of
    call events since library version 3), gives the ledger exactly what the same entry
    with its type and tenant fields (as earlier versions wrote every event) gives."""
    t = tenant_id
    await some_traffic(pgw, t)
    stream = store.keys(t).partition.events
    raw = await store.backend.execute(stream, "XRANGE", stream, "-", "+")
    full = []
    for e in raw:
        one = entry(e)
        data = orjson.loads(one.data)
        full.append(Entry(one.entry_id, one.type or data["type"], one.tenant or data["tenant"],
                          one.data))
    bare = [Entry(e.entry_id, "", "", e.data) for e in full]
    other = await open_ledger(f"sqlite:///{tmp_path / 'bare.db'}")
    try:
        assert await ledger.apply(stream, full) == len(full) > 0
        assert await other.apply(stream, bare) == len(bare)
        for sql in ("SELECT entry_id, type, tenant, data FROM events ORDER BY entry_id",
                    "SELECT * FROM calls ORDER BY call_id",
                    "SELECT * FROM cdrs ORDER BY call_id",
                    "SELECT tenant, balance_micro FROM tenants ORDER BY tenant"):
            want = [tuple(r) for r in await ledger.query(sql)]
            assert want and [tuple(r) for r in await other.query(sql)] == want, sql
    finally:
        await other.close()


async def test_pending_entries_of_a_dead_consumer_are_claimed(
    pgw: Gateway, store: Store, ledger: Ledger, tenant_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await some_traffic(pgw, tenant_id)
    stream = store.keys(tenant_id).partition.events
    await store.backend.execute(stream, "XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
    # "dead" reads everything and dies before writing or acknowledging.
    await store.backend.execute(stream, "XREADGROUP", "GROUP", GROUP, "dead", "COUNT", 1000,
                                "STREAMS", stream, ">")
    status = await persister_status(store)
    assert status["pending_entries"] > 0 and status["lag_seconds"] >= 0
    live = Persister(store, ledger, consumer="live", claim_idle_ms=0)
    await drain(live)
    assert await scalar(ledger, "SELECT COUNT(*) FROM events") == await entries_added(store)
    summary = await store.backend.execute(stream, "XPENDING", stream, GROUP)
    assert int(summary[0]) == 0
    # The dead consumer holds nothing now; once silent long enough it is forgotten.
    def names(infos: list[list[Any]]) -> set[str]:
        return {str(c[1]) for c in infos}

    consumers = await store.backend.execute(stream, "XINFO", "CONSUMERS", stream, GROUP)
    assert "dead" in names(consumers)
    monkeypatch.setattr(persist_mod, "DEAD_CONSUMER_IDLE_MS", -1)
    await live.trim_stream(stream)
    consumers = await store.backend.execute(stream, "XINFO", "CONSUMERS", stream, GROUP)
    assert names(consumers) == {"live"}


async def test_trimming_keeps_every_unacknowledged_entry(store: Store, ledger: Ledger) -> None:
    stream = store.keys("trim").partition.events
    ids = [str(await store.backend.execute(stream, "XADD", stream, "*", "type", "x",
                                           "tenant", "trim", "data", "{}"))
           for _ in range(10)]
    persister = Persister(store, ledger, consumer="p")
    await persister._ensure_group(stream)
    # Another consumer holds entries 4.. unacknowledged; ours acknowledged 0..3.
    await store.backend.execute(stream, "XREADGROUP", "GROUP", GROUP, "p", "COUNT", 4,
                                "STREAMS", stream, ">")
    await store.backend.execute(stream, "XACK", stream, GROUP, *ids[:4])
    await store.backend.execute(stream, "XREADGROUP", "GROUP", GROUP, "other", "COUNT", 3,
                                "STREAMS", stream, ">")
    await persister.trim_stream(stream)
    left = [str(e[0]) for e in await store.backend.execute(stream, "XRANGE", stream, "-", "+")]
    assert left == ids[4:]
    await store.backend.execute(stream, "XACK", stream, GROUP, *ids[4:7])
    await persister.trim_stream(stream)
    left = [str(e[0]) for e in await store.backend.execute(stream, "XRANGE", stream, "-", "+")]
    assert left == ids[6:]  # MINID keeps the last delivered entry itself


async def test_two_reapers_bill_each_lost_call_once(
    pgw: Gateway, store: Store, tenant_id: str
) -> None:
    t = tenant_id
    await pgw.tenant(t)
    await pgw.user(t, "payg", "US", "pay_as_you_go")
    await pgw.topup(t, "50.00", "k1")
    for i in range(20):
        d = await pgw.call(t, f"lost-{i}", LONDON, user="payg")
        assert d["decision"] == "allow", d
    _, before, reserved = await store.credits_get(t)
    assert reserved > 0
    s = pgw.settings
    reapers = [Reaper(store, pgw.clock, 60, s.clock_skew_seconds, s.call_retention_seconds)
               for _ in range(2)]
    pgw.clock.advance(300 + 59)
    assert await reapers[0].run_once() == 0  # grace not over yet
    pgw.clock.advance(2)
    closed = await asyncio.gather(*(r.run_once() for r in reapers))
    assert sum(closed) == 20
    _, after, reserved = await store.credits_get(t)
    assert reserved == 0
    call = await store.call_get(t, "lost-0")
    assert call is not None and call["st"] == "expired"
    assert before - after == 20 * int(call["bc"]) > 0  # billed as fully used, once each
    assert sum([await r.run_once() for r in reapers]) == 0


async def test_migrations_are_versioned_and_idempotent(ledger_url: str) -> None:
    from gateway.ledger.schema import LATEST_VERSION

    first = await open_ledger(ledger_url)
    second = await open_ledger(ledger_url)  # a second process: nothing left to do
    try:
        assert await first.migrate() == LATEST_VERSION == await second.migrate()
        versions = [r[0] for r in await first.query(
            "SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, LATEST_VERSION + 1))
    finally:
        await first.close()
        await second.close()


async def test_restart_under_the_same_name_rereads_its_own_pending_entries(
    pgw: Gateway, store: Store, ledger: Ledger, tenant_id: str
) -> None:
    await some_traffic(pgw, tenant_id)
    stream = store.keys(tenant_id).partition.events
    await store.backend.execute(stream, "XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
    await store.backend.execute(stream, "XREADGROUP", "GROUP", GROUP, "same", "COUNT", 1000,
                                "STREAMS", stream, ">")
    # No claiming (an hour of idle needed): only re-reading its own pending list helps.
    restarted = Persister(store, ledger, consumer="same", claim_idle_ms=3_600_000,
                          batch_entries_max=3)
    await drain(restarted)
    assert await scalar(ledger, "SELECT COUNT(*) FROM events") == await entries_added(store)


async def test_persister_and_status_on_a_cluster(
    redis_cluster: Any, ledger: Ledger, clock: ManualClock
) -> None:
    """Every command is routed by its stream's hash tag: the same code on a cluster."""
    from gateway.redis.store import TenantSettings

    store = Store.from_url(redis_cluster.url, PARTITIONS)
    persister = Persister(store, ledger, consumer="c", claim_idle_ms=0)
    try:
        await store.load_functions()
        # The session's cluster is shared: start this test's group at the streams' ends.
        for s in persister.streams:
            await persister._ensure_group(s)
            await store.backend.execute(s, "XGROUP", "SETID", s, GROUP, "$")
        before = await entries_added(store)
        prefix = uuid.uuid4().hex[:8]
        for i in range(8):  # spread over partitions, hence over the three primaries
            t = f"cl-{prefix}-{i}"
            await store.tenant_put(t, int(clock.now()), TenantSettings(
                t, "USD", "UTC", False, None), "test")
            await store.topup(t, "k", 1_000_000, int(clock.now()), "test")
        await drain(persister)
        added = await entries_added(store) - before
        assert added == 16
        assert await scalar(ledger, "SELECT COUNT(*) FROM events") == added
        assert await scalar(ledger, "SELECT COUNT(*) FROM topups") == 8
        for s in persister.streams:
            await persister.trim_stream(s)
        assert (await persister_status(store))["backlog_entries"] == 0
    finally:
        await store.close()


async def test_rate_deck_uploads_reach_the_ledger(
    pgw: Gateway, store: Store, ledger: Ledger
) -> None:
    csv = ("prefix,description,kind,rate_per_minute,connection_fee,initial_increment,"
           "subsequent_increment\n1,North America,outbound,0.0100,0,60,60\n")
    await pgw.req("PUT", "/v1/rate-decks/USD", raw=csv.encode(),
                  headers={**AUTH, "Content-Type": "text/csv"}, status=None)
    persister = Persister(store, ledger, consumer="a")
    await drain(persister)
    rows = await ledger.query("SELECT type FROM events WHERE type = 'deck.replaced'")
    assert len(rows) == 1
