"""Alert settings and threshold crossings (api.md, Notifications).

Each crossing is decided inside the call-control function that crosses it, so it is
announced once however many calls race: 200 concurrent authorizations here, through the
gateway, then the partition stream (the ledger's copy) and the notify stream (the
notifier's) are read back.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
import pytest
import redis

from gateway.redis.keys import tenant_keys
from gateway.vocab import ALERT_EVENTS
from tests.support.gwclient import Gateway

NEW_YORK = "+12125550123"


def alerts_of(r: redis.Redis, gw: Gateway, t: str, stream: str = "events") -> list[dict[str, Any]]:
    """The alert events of tenant t on its partition stream (or its notify stream)."""
    p = tenant_keys(t, gw.settings.partitions).partition
    key = p.events if stream == "events" else p.notify
    out = []
    for _id, f in cast(list[Any], r.xrange(key)):
        data = orjson.loads(f[b"data"])  # a call event's entry has only 'data'
        if data["tenant"] == t and data["type"].split(".")[0] in (
                "pool", "credits", "spend_limit") and data["type"] != "credits.topped_up":
            out.append(data)
    return out


async def put_alerts(gw: Gateway, t: str, body: dict[str, Any], status: int = 200) -> Any:
    return await gw.req("PUT", f"/v1/tenants/{t}/alerts", body, status=status)


# -- settings ------------------------------------------------------------------------------

async def test_settings_default_then_stored(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    assert await gw.req("GET", f"/v1/tenants/{t}/alerts") == {
        "pool_thresholds_percent": [80, 100], "low_balance": None, "auto_recharge": None}
    body = {"pool_thresholds_percent": [100, 50, 80], "low_balance": "5.00",
            "auto_recharge": {"below": "2.5", "amount": "25.00"}}
    want = {"pool_thresholds_percent": [50, 80, 100], "low_balance": "5.0000",
            "auto_recharge": {"below": "2.5000", "amount": "25.0000"}}
    assert await put_alerts(gw, t, body) == want
    assert await gw.req("GET", f"/v1/tenants/{t}/alerts") == want
    # A PUT replaces: what it leaves out takes its default.
    assert await put_alerts(gw, t, {"pool_thresholds_percent": []}) == {
        "pool_thresholds_percent": [], "low_balance": None, "auto_recharge": None}
    assert (await gw.req("GET", f"/v1/tenants/{t}/alerts"))["pool_thresholds_percent"] == []


@pytest.mark.parametrize(("body", "field"), [
    ({"pool_thresholds_percent": [80, 101]}, "pool_thresholds_percent[1]"),
    ({"pool_thresholds_percent": "80"}, "pool_thresholds_percent"),
    ({"low_balance": 5}, "low_balance"),
    ({"low_balance": "-1"}, "low_balance"),
    ({"auto_recharge": {"below": "1.00"}}, "auto_recharge.amount"),
    ({"auto_recharge": {"below": "1.00", "amount": "x"}}, "auto_recharge.amount"),
    ({"auto_recharge": {"below": "1.00", "amount": "5", "every": 1}}, "auto_recharge.every"),
    ({"auto_recharge": 5}, "auto_recharge"),
    ({"low_balnce": "5.00"}, "low_balnce"),
])
async def test_bad_settings_name_the_field(gw: Gateway, tenant_id: str, body: dict[str, Any],
                                           field: str) -> None:
    await gw.tenant(tenant_id)
    problem = await put_alerts(gw, tenant_id, body, status=400)
    assert field in [e["field"] for e in problem["errors"]]


async def test_unknown_tenant_404_and_settings_are_audited(
        gw: Gateway, tenant_id: str, redis_sync: redis.Redis) -> None:
    await put_alerts(gw, tenant_id, {}, status=404)
    await gw.req("GET", f"/v1/tenants/{tenant_id}/alerts", status=404)
    await gw.tenant(tenant_id)
    await put_alerts(gw, tenant_id, {"low_balance": "1.00"})
    audit = await gw.req("GET", f"/v1/tenants/{tenant_id}/audit")
    assert audit["entries"][0]["action"] == "alerts.updated"
    assert audit["entries"][0]["details"]["low_balance_micro"] == "1000000"


# -- crossings -----------------------------------------------------------------------------

async def test_pool_thresholds_once_under_200_concurrent_calls(
        gw: Gateway, tenant_id: str, redis_sync: redis.Redis) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic_120")  # 120 minutes: room for 24 grants of 5
    answers = await asyncio.gather(*(gw.call(t, f"c{i}", NEW_YORK, user="u")
                                     for i in range(200)))
    assert sum(a["decision"] == "allow" for a in answers) == 24
    events = alerts_of(redis_sync, gw, t)
    assert sorted(e["threshold_percent"] for e in events) == [80, 100]
    first = min(events, key=lambda e: e["threshold_percent"])
    assert {k: first[k] for k in ("type", "country", "plan", "kind", "month",
                                  "capacity_minutes", "used_minutes")} == {
        "type": "pool.threshold_crossed", "country": "US", "plan": "domestic_120",
        "kind": "domestic", "month": "2026-11", "capacity_minutes": 120, "used_minutes": 0}
    assert first["reserved_minutes"] == 100  # the grant that took it from 95 to 100 minutes
    assert alerts_of(redis_sync, gw, t, "notify") == events
    pool = await gw.pool(t, "US", "domestic_120", "domestic")
    assert pool["percent_used"] == 100.0
    # Ending every call and using the pool again announces nothing new this month.
    for i, a in enumerate(answers):
        if a["decision"] == "allow":
            await gw.end(t, f"c{i}", 0)
    assert (await gw.pool(t, "US", "domestic_120", "domestic"))["percent_used"] == 0.0
    for i in range(24):
        await gw.call(t, f"again{i}", NEW_YORK, user="u")
    assert len(alerts_of(redis_sync, gw, t)) == 2


async def test_custom_thresholds_and_none(gw: Gateway, tenant_id: str,
                                          redis_sync: redis.Redis) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic_120")
    await put_alerts(gw, t, {"pool_thresholds_percent": [5, 50]})
    await gw.call(t, "c1", NEW_YORK, user="u")  # 5 of 120 minutes: 4.2 %
    assert alerts_of(redis_sync, gw, t) == []
    await gw.call(t, "c2", NEW_YORK, user="u")  # 10: 8.3 %
    assert [e["threshold_percent"] for e in alerts_of(redis_sync, gw, t)] == [5]
    await put_alerts(gw, t, {"pool_thresholds_percent": []})
    for i in range(3, 25):
        await gw.call(t, f"c{i}", NEW_YORK, user="u")
    assert [e["threshold_percent"] for e in alerts_of(redis_sync, gw, t)] == [5]


def credit_alerts(r: redis.Redis, gw: Gateway, t: str, etype: str) -> list[dict[str, Any]]:
    return [e for e in alerts_of(r, gw, t) if e["type"] == etype]


async def test_low_balance_and_recharge_once_then_rearmed_by_topup(
        gw: Gateway, tenant_id: str, redis_sync: redis.Redis) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "pay_as_you_go")  # 0.07 reserved per call
    await gw.topup(t, "1.00", "k0")
    await put_alerts(gw, t, {"low_balance": "0.50",
                             "auto_recharge": {"below": "0.30", "amount": "5.00"}})
    answers = await asyncio.gather(*(gw.call(t, f"c{i}", NEW_YORK, user="u")
                                     for i in range(200)))
    assert sum(a["decision"] == "allow" for a in answers) == 14
    low = credit_alerts(redis_sync, gw, t, "credits.low_balance")
    assert len(low) == 1
    assert low[0]["threshold_micro"] == 500_000
    assert low[0]["available_micro"] == 1_000_000 - 8 * 70_000  # the 8th call crossed it
    recharge = credit_alerts(redis_sync, gw, t, "credits.recharge_requested")
    assert len(recharge) == 1
    assert recharge[0]["amount_micro"] == 5_000_000
    key = recharge[0]["idempotency_key"]
    # A top-up with another key lifts the balance and re-arms the low-balance alert, not the
    # recharge: that waits for its own key.
    await gw.topup(t, "2.00", "other")
    for i in range(200, 240):
        await gw.call(t, f"c{i}", NEW_YORK, user="u")
    assert len(credit_alerts(redis_sync, gw, t, "credits.low_balance")) == 2
    assert len(credit_alerts(redis_sync, gw, t, "credits.recharge_requested")) == 1
    # The billing system answers with the requested key: re-armed.
    await gw.topup(t, "5.00", key)
    topped = [orjson.loads(f[b"data"]) for _i, f in cast(list[Any], redis_sync.xrange(
        tenant_keys(t, gw.settings.partitions).partition.events))
        if f.get(b"type") == b"credits.topped_up" and f[b"tenant"].decode() == t]
    assert topped[-1]["recharge_settled"] is True
    for i in range(240, 400):
        await gw.call(t, f"c{i}", NEW_YORK, user="u")
    recharge = credit_alerts(redis_sync, gw, t, "credits.recharge_requested")
    assert len(recharge) == 2
    assert recharge[1]["idempotency_key"] != key
    assert len(credit_alerts(redis_sync, gw, t, "credits.low_balance")) == 3


async def test_spend_limit_once_per_user_and_month(gw: Gateway, tenant_id: str,
                                                   redis_sync: redis.Redis) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "pay_as_you_go", monthly_spend_limit="0.10")
    await gw.topup(t, "10.00", "k0")
    answers = await asyncio.gather(*(gw.call(t, f"c{i}", NEW_YORK, user="u")
                                     for i in range(50)))
    assert sum(a["reason"] == "spend_limit_reached" for a in answers) >= 48
    events = credit_alerts(redis_sync, gw, t, "spend_limit.reached")
    assert events == [{"user_id": "u", "month": "2026-11", "limit_micro": 100_000,
                       "type": "spend_limit.reached", "tenant": t, "ts": gw.clock.now()}]
    # Next month: once again.
    gw.clock.advance(5 * 86400)
    dec = [await gw.call(t, f"dec{i}", NEW_YORK, user="u") for i in range(3)]
    # 0.07 for 5 minutes, then 0.022 for the one minute the 0.03 left pays, then nothing.
    assert [(a["reason"], a["granted_seconds"]) for a in dec] == [
        ("credits", 300), ("credits", 60), ("spend_limit_reached", 0)]
    months = [e["month"] for e in credit_alerts(redis_sync, gw, t, "spend_limit.reached")]
    assert months == ["2026-11", "2026-12"]


async def test_an_extension_crosses_too(gw: Gateway, tenant_id: str,
                                        redis_sync: redis.Redis) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic_120")
    for i in range(23):  # 115 of 120 minutes: 80 % crossed, 100 % not
        await gw.call(t, f"c{i}", NEW_YORK, user="u")
    assert [e["threshold_percent"] for e in alerts_of(redis_sync, gw, t)] == [80]
    gw.clock.advance(300)
    assert (await gw.extend(t, "c0", 300))["source"] == "domestic_pool"
    events = alerts_of(redis_sync, gw, t)
    assert [e["threshold_percent"] for e in events] == [80, 100]
    assert (events[1]["used_minutes"], events[1]["reserved_minutes"]) == (0, 120)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@pytest.mark.cluster
async def test_crossings_on_a_cluster_too(gw: Gateway, tenant_id: str, store_url: str) -> None:
    """Every key an announcing function touches shares the tenant's slot (the suite's
    cluster run: a key of another slot would fail with CROSSSLOT)."""
    from gateway.redis.store import Store

    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic_120")
    await gw.user(t, "v", "US", "pay_as_you_go", monthly_spend_limit="0.07")
    await gw.topup(t, "1.00", "k0")
    await put_alerts(gw, t, {"low_balance": "0.95",
                             "auto_recharge": {"below": "0.95", "amount": "5.00"}})
    answers = await asyncio.gather(*(gw.call(t, f"c{i}", NEW_YORK, user="u")
                                     for i in range(30)),
                                   *(gw.call(t, f"d{i}", NEW_YORK, user="v")
                                     for i in range(3)))
    assert sum(a["reason"] == "domestic_pool" for a in answers) == 24
    gw.clock.advance(60)
    await gw.extend(t, "c0", 60)
    store = Store.from_url(store_url, gw.settings.partitions)
    try:
        k = tenant_keys(t, gw.settings.partitions).partition
        seen = []
        for stream in (k.events, k.notify):
            entries = await store.raw(stream, "XRANGE", stream, "-", "+")
            fields = [{_text(f[i]): _text(f[i + 1]) for i in range(0, len(f), 2)}
                      for _id, f in entries]
            seen.append(sorted(f["type"] for f in fields  # call events: 'data' only
                               if f.get("tenant") == t and f.get("type") in ALERT_EVENTS))
    finally:
        await store.close()
    want = ["credits.low_balance", "credits.recharge_requested", "pool.threshold_crossed",
            "pool.threshold_crossed", "spend_limit.reached"]
    assert seen[0] == want
    assert seen[1] == want
