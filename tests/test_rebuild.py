"""Recovery: flush Redis -> rebuild from the ledger -> audit is clean, and the gateway
answers as before (credits, pools, open calls); audit catches a tampered wallet."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.ledger import Entry, Ledger, open_ledger
from gateway.ledger.audit import audit
from gateway.ledger.persister import Persister
from gateway.ledger.rebuild import rebuild
from gateway.redis.keys import AUDIT_MAX_ENTRIES, tenant_keys
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock
from tests.support.gateway import T0, start_gateway
from tests.support.gwclient import AUTH, Gateway
from tests.support.persist_helpers import drain

REPO = Path(__file__).resolve().parent.parent
LONDON = "+442071838750"
NEW_YORK = "+12125550123"
PARTITIONS = 4


@pytest.fixture
async def rgw(own_redis: RedisServer, ledger_url: str, clock: ManualClock,
              aiohttp_client: Any) -> AsyncIterator[Gateway]:
    yield await start_gateway(aiohttp_client, clock, own_redis.url, partitions=PARTITIONS,
                              database_url=ledger_url)


@pytest.fixture
async def parts(rgw: Gateway) -> AsyncIterator[tuple[Store, Ledger, Persister]]:
    assert rgw.settings.redis_url and rgw.settings.database_url
    store = Store.from_url(rgw.settings.redis_url, PARTITIONS)
    ledger = await open_ledger(rgw.settings.database_url)
    yield store, ledger, Persister(store, ledger, consumer="r")
    await ledger.close()
    await store.close()


async def traffic(gw: Gateway, t: str) -> None:
    await gw.tenant(t, max_concurrent_calls=10)
    await gw.user(t, "us0", "US", "domestic", numbers=["+12125550100"])
    await gw.user(t, "us1", "US", "domestic")
    await gw.user(t, "payg", "US", "pay_as_you_go")
    await gw.user(t, "gone", "US", "domestic")
    await gw.req("DELETE", f"/v1/tenants/{t}/users/gone", status=204)
    await gw.topup(t, "20.00", "k1")
    await gw.topup(t, "5.00", "k2")
    await gw.req("PUT", f"/v1/tenants/{t}/toll-free-numbers/+18005550100", status=None)
    await gw.req("PUT", f"/v1/tenants/{t}/alerts", {
        "low_balance": "0.50", "pool_thresholds_percent": [50, 90],
        "auto_recharge": {"below": "1.00", "amount": "10.00"}})
    for i in range(3):
        assert (await gw.call(t, f"done-{i}", NEW_YORK, user="us0"))["decision"] == "allow"
        assert (await gw.call(t, f"paid-{i}", LONDON, user="payg"))["decision"] == "allow"
        gw.clock.advance(70)
        await gw.end(t, f"done-{i}", 61 + i)
        await gw.end(t, f"paid-{i}", 100 + i)
    assert (await gw.call(t, "open-pool", NEW_YORK, user="us1"))["decision"] == "allow"
    assert (await gw.call(t, "open-paid", LONDON, user="payg"))["decision"] == "allow"
    await gw.extend(t, "open-paid", 200)
    assert (await gw.call(t, "denied", "+99912345", user="us0"))["decision"] == "deny"


async def views(gw: Gateway, t: str) -> dict[str, Any]:
    return {
        "tenant": await gw.req("GET", f"/v1/tenants/{t}"),
        "credits": await gw.credits(t),
        "pools": await gw.pools(t),
        "users": [await gw.req("GET", f"/v1/tenants/{t}/users/{u}") for u in
                  ("us0", "us1", "payg")],
        "open": [await gw.req("GET", f"/v1/tenants/{t}/calls/{c}") for c in
                 ("open-pool", "open-paid")],
        "audit": await gw.req("GET", f"/v1/tenants/{t}/audit?limit=200"),
        "alerts": await gw.req("GET", f"/v1/tenants/{t}/alerts"),
    }


async def test_flush_rebuild_audit_is_clean(
    rgw: Gateway, parts: tuple[Store, Ledger, Persister], tenant_id: str
) -> None:
    store, ledger, persister = parts
    t, now = tenant_id, int(rgw.clock.now())
    await traffic(rgw, t)
    await drain(persister)
    skew = rgw.settings.clock_skew_seconds
    assert await audit(store, ledger, now, skew) == []
    before = await views(rgw, t)
    # The tenant, 4 users created and 1 deleted, 2 top-ups, 1 toll-free number, the alerts.
    assert len(before["audit"]["entries"]) == 10

    await store.backend.execute("x", "FLUSHALL")
    await rebuild(store, ledger, int(rgw.clock.now()), skew, show_progress=False)
    assert await audit(store, ledger, int(rgw.clock.now()), skew) == []
    after = await views(rgw, t)
    assert after == before

    # Life goes on: the restored open calls end and bill; the ledger follows.
    rgw.clock.advance(30)
    await rgw.end(t, "open-pool", 30)
    await rgw.end(t, "open-paid", 250)
    await rgw.req("PUT", f"/v1/tenants/{t}/toll-free-numbers/+18005550100", status=200)
    await drain(persister)
    assert await audit(store, ledger, int(rgw.clock.now()), skew) == []
    credits = await rgw.credits(t)
    assert credits["reserved"] in ("0.0000", "0") or float(credits["reserved"]) == 0


def run_cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    assert gw.settings.redis_url and gw.settings.database_url
    env = {**os.environ, "CALLGATE_REDIS_URL": gw.settings.redis_url,
           "CALLGATE_DATABASE_URL": gw.settings.database_url,
           "CALLGATE_PARTITIONS": str(PARTITIONS)}
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


async def test_audit_and_rebuild_commands(
    rgw: Gateway, parts: tuple[Store, Ledger, Persister], tenant_id: str
) -> None:
    store, _ledger, persister = parts
    t = tenant_id
    await rgw.tenant(t)
    await rgw.topup(t, "20.00", "k1")
    await drain(persister)
    proc = run_cli(rgw, "audit")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 discrepancies" in proc.stdout
    proc = run_cli(rgw, "persist", "--status")
    assert proc.returncode == 0, proc.stderr
    assert '"backlog_entries":0' in proc.stdout and '"lag_seconds":0' in proc.stdout
    key = store.keys(t).tenant
    await store.backend.execute(key, "HINCRBY", key, "bal", 1)
    proc = run_cli(rgw, "audit")
    assert proc.returncode == 1
    assert f"{key} bal: redis='20000001' ledger='20000000'" in proc.stdout
    proc = run_cli(rgw, "rebuild")
    assert proc.returncode == 1 and "empty Redis" in proc.stderr
    await store.backend.execute(key, "FLUSHALL")
    proc = run_cli(rgw, "rebuild")
    assert proc.returncode == 0, proc.stderr
    assert "rebuild [" in proc.stderr  # the progress bar
    assert run_cli(rgw, "audit").returncode == 0


async def test_rebuild_restores_the_uploaded_rate_decks(
    rgw: Gateway, parts: tuple[Store, Ledger, Persister]
) -> None:
    store, ledger, persister = parts
    csv = ("prefix,description,kind,rate_per_minute,connection_fee,initial_increment,"
           "subsequent_increment\n1,North America,outbound,0.0042,0,60,60\n")
    auth = {**AUTH, "Content-Type": "text/csv"}
    await rgw.req("PUT", "/v1/rate-decks/USD", raw=csv.encode(), headers=auth, status=None)
    await drain(persister)
    await store.backend.execute("x", "FLUSHALL")
    restored = await rebuild(store, ledger, int(rgw.clock.now()),
                             rgw.settings.clock_skew_seconds, show_progress=False)
    assert restored >= 1
    deck = await store.backend.execute("{decks}:deck:USD", "GET", "{decks}:deck:USD")
    assert deck == csv


async def test_audit_reports_a_missing_or_altered_audit_list_and_rate_deck(
    rgw: Gateway, parts: tuple[Store, Ledger, Persister], tenant_id: str
) -> None:
    store, ledger, persister = parts
    t, skew = tenant_id, rgw.settings.clock_skew_seconds
    await traffic(rgw, t)
    csv = ("prefix,description,kind,rate_per_minute,connection_fee,initial_increment,"
           "subsequent_increment\n1,North America,outbound,0.0042,0,60,60\n")
    auth = {**AUTH, "Content-Type": "text/csv"}
    await rgw.req("PUT", "/v1/rate-decks/USD", raw=csv.encode(), headers=auth, status=None)
    await drain(persister)
    now = int(rgw.clock.now())
    assert await audit(store, ledger, now, skew) == []
    k = store.keys(t)

    newest = await store.raw(k.audit, "LPOP", k.audit)  # one entry lost
    next_id = orjson.loads((await store.raw(k.audit, "LRANGE", k.audit, 0, 0))[0])["id"]
    assert await audit(store, ledger, now, skew) == [
        f"{k.audit}: redis has 9 entries, ledger 10; first difference at #0: "
        f"redis={next_id!r} ledger={orjson.loads(newest)['id']!r}"]
    await store.raw(k.audit, "LPUSH", k.audit, newest)
    assert await audit(store, ledger, now, skew) == []

    await store.raw(k.audit, "DEL", k.audit)  # the whole list lost
    proc = run_cli(rgw, "audit")
    assert proc.returncode == 1, proc.stdout
    assert f"{k.audit}: redis has 0 entries, ledger 10; first difference at #0" in proc.stdout
    assert "1 discrepancy" in proc.stdout

    await store.raw("{decks}:deck:USD", "DEL", "{decks}:deck:USD")
    problems = await audit(store, ledger, now, skew)
    assert "{decks}:deck:USD: missing in redis" in " ".join(problems), problems

    await store.backend.execute("x", "FLUSHALL")
    await rebuild(store, ledger, now, skew, show_progress=False)
    assert await audit(store, ledger, now, skew) == []
    # Run twice (as --force does): nothing is appended again.
    await rebuild(store, ledger, now, skew, show_progress=False)
    assert await audit(store, ledger, now, skew) == []
    page = await rgw.req("GET", f"/v1/tenants/{t}/audit?limit=1")
    assert page["entries"][0]["id"] == orjson.loads(newest)["id"]


async def test_rebuilt_audit_list_keeps_the_newest_entries_in_stream_order(
    ledger_url: str, own_redis: RedisServer
) -> None:
    """More admin changes than the list holds: the newest AUDIT_MAX_ENTRIES, newest first,
    ordered as stream ids (numbers: 7-10 is newer than 7-9), each entry the event's data
    with its id."""
    t, partitions = "audit-cap", PARTITIONS
    k = tenant_keys(t, partitions)
    stream = k.partition.events
    entries = [Entry("1-0", "tenant.created", t, orjson.dumps({
        "type": "tenant.created", "tenant": t, "ts": 1, "actor": "bootstrap", "name": t,
        "currency": "USD", "timezone": "UTC", "max_concurrent_calls": "unlimited"}).decode())]
    n = AUDIT_MAX_ENTRIES + 5
    entries += [Entry(f"7-{i}", "tollfree.added", t, orjson.dumps({
        "type": "tollfree.added", "tenant": t, "ts": 7, "actor": "a",
        "number": f"+1800555{i:04d}"}).decode()) for i in range(n)]
    ledger = await open_ledger(ledger_url)
    store = Store.from_url(own_redis.url, partitions)
    try:
        await ledger.apply(stream, entries)
        await rebuild(store, ledger, T0, 0, show_progress=False)
        got = [orjson.loads(x) for x in await store.raw(k.audit, "LRANGE", k.audit, 0, -1)]
        assert len(got) == AUDIT_MAX_ENTRIES
        assert [g["id"] for g in got] == [f"7-{i}" for i in range(n - 1, 4, -1)]
        assert got[0] == {"id": f"7-{n - 1}", "type": "tollfree.added", "tenant": t,
                          "ts": 7, "actor": "a", "number": f"+1800555{n - 1:04d}"}
        assert await audit(store, ledger, T0, 0) == []
    finally:
        await store.close()
        await ledger.close()


def test_audit_and_rebuild_name_an_unreachable_store_in_one_line(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    from gateway.redis.server import free_port

    closed = free_port()  # nothing listens there
    cases = [
        ({"CALLGATE_REDIS_URL": own_redis.url,
          "CALLGATE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/x"},
         "callgate: the ledger is unavailable (ConnectionRefusedError"),
        ({"CALLGATE_REDIS_URL": f"redis://127.0.0.1:{closed}/0",
          "CALLGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"},
         "callgate: audit stopped: RedisUnavailable"),
    ]
    for env, first in cases:
        proc = subprocess.run([sys.executable, "-m", "gateway", "audit"], cwd=REPO,
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith(first), proc.stderr
        assert "Traceback" not in proc.stderr


async def test_run_time_tokens_reach_the_ledger_and_come_back_with_rebuild(
        rgw: Gateway, parts: tuple[Store, Ledger, Persister], clock: ManualClock) -> None:
    """A token created at run time survives the loss of Redis, a revoked one stays revoked;
    audit names a token missing from Redis by its id, never with its hash."""
    from gateway.http.tokens import TokenRecord
    from gateway.redis.keys import TOKENS

    store, ledger, persister = parts
    await rgw.tenant("tk")
    kept = await rgw.req("POST", "/v1/tokens", {"role": "switch", "tenants": ["tk"]},
                         status=201)
    gone = await rgw.req("POST", "/v1/tokens", {"role": "switch", "tenants": ["tk"]},
                         status=201)
    await rgw.req("DELETE", f"/v1/tokens/{gone['id']}", status=204)
    await drain(persister)
    before = await store.raw(TOKENS, "HGET", TOKENS, kept["id"])
    await store.raw(TOKENS, "FLUSHALL")
    await rebuild(store, ledger, int(clock.now()), 300, show_progress=False)
    assert await store.raw(TOKENS, "HGET", TOKENS, kept["id"]) == before
    assert await store.raw(TOKENS, "HEXISTS", TOKENS, gone["id"]) == 0
    assert TokenRecord.from_json(kept["id"], before).role == "switch"
    assert await audit(store, ledger, int(clock.now()), 300) == []
    await store.raw(TOKENS, "HDEL", TOKENS, kept["id"])
    problems = await audit(store, ledger, int(clock.now()), 300)
    assert problems == [f"{TOKENS} {kept['id']}: missing in redis"]


async def test_a_call_redis_no_longer_holds_is_read_from_the_ledger(
        rgw: Gateway, parts: tuple[Store, Ledger, Persister], tenant_id: str) -> None:
    """Past the replay window Redis forgets a closed call; GET answers it from the ledger,
    as it answered from Redis (a denied one too); a call neither holds is a 404."""
    store, _, persister = parts
    t = tenant_id
    await traffic(rgw, t)
    await rgw.call(t, "kept", NEW_YORK, user="us0")
    await rgw.end(t, "kept", 125)
    assert (await rgw.call(t, "refused", "+99912345", user="us0"))["decision"] == "deny"
    await drain(persister)
    answers = {cid: await rgw.req("GET", f"/v1/tenants/{t}/calls/{cid}")
               for cid in ("kept", "refused")}
    k = store.keys(t)
    for cid in answers:
        await store.raw(k.call(cid), "DEL", k.call(cid))  # the replay window is over
    for cid, before in answers.items():
        after = await rgw.req("GET", f"/v1/tenants/{t}/calls/{cid}")
        assert after == before, cid
    await rgw.req("GET", f"/v1/tenants/{t}/calls/never", status=404)
