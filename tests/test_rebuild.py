"""Recovery: flush Redis -> rebuild from the ledger -> audit is clean, and the gateway
answers as before (credits, pools, open calls); audit catches a tampered wallet."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ManualClock
from gateway.ledger import Ledger, open_ledger
from gateway.ledger_audit import audit
from gateway.persist import Persister
from gateway.rebuild import rebuild
from gateway.redisproc import RedisServer
from gateway.store import Store
from tests.conftest import start_gateway
from tests.gwclient import AUTH, Gateway
from tests.persist_helpers import drain

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
