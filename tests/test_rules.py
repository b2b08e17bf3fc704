"""The rules of domain.md beyond the worked examples, one behaviour per test."""

from __future__ import annotations

import time

import pytest
import redis

from gateway.ledger.reaper import Reaper
from gateway.redis.keys import tenant_keys
from gateway.redis.store import Store
from gateway.rules.clock import rfc3339
from gateway.rules.money import parse_money
from tests.support.gwclient import Gateway
from tests.support.refcost import credit_cost_micro

NEW_YORK = "+12125550123"
LONDON = "+442071838750"
PARIS = "+33142685300"
US_TOLL_FREE = "+18005550199"
GB_TOLL_FREE = "+448000288000"
FR_PREMIUM = "+33892123456"
GB_SHARED_COST = "+448451234567"
BLOCKED = "+88213001234"
BAHAMAS = "+12423221234"


@pytest.fixture
async def tenant(gw: Gateway, tenant_id: str) -> str:
    await gw.tenant(tenant_id)
    return tenant_id


def usd(micro: int) -> str:
    return f"{micro // 1_000_000}.{micro % 1_000_000 // 100:04d}"


async def test_d5_plans_do_not_pool_together(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "a", "US", "domestic")
    await gw.user(tenant, "b", "US", "domestic_120")
    await gw.user(tenant, "c", "US", "international")
    rows = {(p["plan"], p["kind"]): p["capacity_minutes"] for p in await gw.pools(tenant)}
    assert rows == {("domestic", "domestic"): 3000, ("domestic_120", "domestic"): 120,
                    ("international", "domestic"): 3000,
                    ("international", "international"): 600}


async def test_d6_licence_removed_mid_month_capacity_falls_no_refund(
    gw: Gateway, tenant: str
) -> None:
    await gw.user(tenant, "a", "US", "domestic_120")
    await gw.user(tenant, "b", "US", "domestic_120")
    for i in range(3):
        await gw.call(tenant, f"c{i}", NEW_YORK, user="a")
        await gw.end(tenant, f"c{i}", 300)
    await gw.req("DELETE", f"/v1/tenants/{tenant}/users/b", status=204)
    await gw.user(tenant, "a", "US", "domestic_240")  # a leaves the 120 pool too
    p = await gw.pool(tenant, "US", "domestic_120", "domestic")
    assert (p["licenses"], p["capacity_minutes"], p["used_minutes"], p["remaining_minutes"]) == (
        0, 0, 15, 0)
    d = await gw.call(tenant, "after", NEW_YORK, user="a")
    assert d["source"] == "domestic_pool"  # now from the 240 pool
    assert (await gw.pool(tenant, "US", "domestic_240", "domestic"))["reserved_minutes"] == 5


async def test_d9_other_nanp_countries_are_international(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "u", "US", "domestic")
    d = await gw.call(tenant, "bs", BAHAMAS, user="u")
    assert (d["reason"], d["destination"]["class"], d["destination"]["country"]) == (
        "insufficient_credits", "international", "BS")


async def test_d12_toll_free_home_zone_free_foreign_is_international(
    gw: Gateway, tenant: str
) -> None:
    await gw.user(tenant, "u", "CA", "domestic_120")
    d = await gw.call(tenant, "tf", US_TOLL_FREE, user="u")
    assert (d["decision"], d["reason"], d["source"]) == ("allow", "toll_free", "free")
    assert (await gw.end(tenant, "tf", 600))["billed"]["credits"] == "0.0000"
    assert (await gw.pool(tenant, "CA", "domestic_120", "domestic"))["used_minutes"] == 0
    d = await gw.call(tenant, "gb-tf", GB_TOLL_FREE, user="u")
    assert (d["decision"], d["reason"], d["destination"]["class"]) == (
        "deny", "insufficient_credits", "international")


async def test_d13_premium_allowed_only_from_credits_blocked_elsewhere(
    gw: Gateway, tenant: str
) -> None:
    await gw.user(tenant, "fr", "FR", "international")
    await gw.user(tenant, "us", "US", "international")
    d = await gw.call(tenant, "p0", FR_PREMIUM, user="fr")
    assert (d["decision"], d["reason"]) == ("deny", "insufficient_credits")  # not the pool
    await gw.topup(tenant, "20.00", "k")
    d = await gw.call(tenant, "p1", FR_PREMIUM, user="fr")
    assert (d["decision"], d["source"]) == ("allow", "credits")
    d = await gw.call(tenant, "sc", GB_SHARED_COST, user="us")
    assert (d["decision"], d["source"]) == ("allow", "credits")
    d = await gw.call(tenant, "blk", BLOCKED, user="us")
    assert (d["decision"], d["reason"], d["sip_code"]) == ("deny", "destination_blocked", 403)


async def test_d13_premium_denied_where_country_does_not_allow(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "u", "US", "international")
    await gw.topup(tenant, "20.00", "k")
    d = await gw.call(tenant, "gbp", "+449098790000", user="u")
    assert d["destination"]["type"] == "premium_rate"
    assert (d["decision"], d["reason"]) == ("deny", "destination_blocked")


async def test_d14_invalid_destination_is_a_deny(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "u", "US", "domestic")
    for i, to in enumerate(["+1212", "abc", "+999123", "12345678"]):
        d = await gw.call(tenant, f"x{i}", to, user="u")
        assert (d["decision"], d["reason"], d["sip_code"]) == ("deny", "invalid_destination", 484)


async def test_d11_emergency_of_another_country_is_not_emergency(
    gw: Gateway, tenant: str
) -> None:
    await gw.user(tenant, "u", "US", "domestic")
    await gw.user(tenant, "g", "GB", "domestic")
    assert (await gw.call(tenant, "gb999", "999", user="g"))["reason"] == "emergency"
    d = await gw.call(tenant, "us999", "999", user="u")
    assert (d["decision"], d["reason"]) == ("deny", "invalid_destination")


async def test_d21_credits_not_allowed(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "u", "US", "domestic", credits_allowed=False)
    await gw.topup(tenant, "20.00", "k")
    d = await gw.call(tenant, "intl", LONDON, user="u")
    assert (d["decision"], d["reason"], d["sip_code"]) == ("deny", "credits_not_allowed", 403)


async def test_d22_spend_limit_caps_grants_then_denies(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "u", "US", "pay_as_you_go", monthly_spend_limit="0.0500")
    await gw.topup(tenant, "20.00", "k")
    rate = gw.settings.rate_decks["USD"].lookup(NEW_YORK, "outbound")
    assert rate is not None
    d = await gw.call(tenant, "c1", NEW_YORK, user="u")
    assert d["source"] == "credits"
    # Limit 0.05 at 0.012/min + 0.01 fee: 3 minutes (0.046) fit, 4 (0.058) do not.
    assert credit_cost_micro(d["granted_seconds"], rate) <= 50_000 < credit_cost_micro(
        d["granted_seconds"] + 1, rate)
    await gw.end(tenant, "c1", d["granted_seconds"])
    d = await gw.call(tenant, "c2", NEW_YORK, user="u")
    assert (d["decision"], d["reason"], d["sip_code"]) == ("deny", "spend_limit_reached", 402)


async def test_d23_dial_out_policy(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "dom", "US", "international", dial_out="domestic_only")
    await gw.user(tenant, "none", "US", "international", dial_out="none")
    await gw.topup(tenant, "20.00", "k")
    assert (await gw.call(tenant, "a", "+14165550100", user="dom"))["decision"] == "allow"
    assert (await gw.call(tenant, "b", LONDON, user="dom"))["reason"] == "dial_out_policy"
    assert (await gw.call(tenant, "c", NEW_YORK, user="none"))["reason"] == "dial_out_policy"
    assert (await gw.call(tenant, "d", "911", user="none"))["reason"] == "emergency"


async def test_d25_user_and_tenant_concurrency_caps(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t, max_concurrent_calls=3)
    await gw.user(t, "a", "US", "domestic", max_concurrent_calls=2)
    await gw.user(t, "b", "US", "domestic")
    assert (await gw.call(t, "a1", NEW_YORK, user="a"))["decision"] == "allow"
    assert (await gw.call(t, "a2", NEW_YORK, user="a"))["decision"] == "allow"
    d = await gw.call(t, "a3", NEW_YORK, user="a")
    assert (d["reason"], d["sip_code"]) == ("concurrency_limit", 486)
    assert (await gw.call(t, "b1", NEW_YORK, user="b"))["decision"] == "allow"
    assert (await gw.call(t, "b2", NEW_YORK, user="b"))["reason"] == "concurrency_limit"
    assert (await gw.call(t, "a4", "911", user="a"))["decision"] == "allow"  # never capped
    await gw.end(t, "a1", 10)
    assert (await gw.call(t, "b3", NEW_YORK, user="b"))["decision"] == "allow"


async def test_d26_unknown_user_and_unknown_tenant(gw: Gateway, tenant: str) -> None:
    d = await gw.call(tenant, "x", NEW_YORK, user="ghost")
    assert (d["decision"], d["reason"], d["sip_code"]) == ("deny", "unknown_user", 404)
    body = await gw.req("POST", "/v1/tenants/no-such-tenant/calls",
                        {"call_id": "x", "user_id": "u", "to": NEW_YORK}, status=404)
    assert body["status"] == 404


async def test_d27_inbound_free_or_charged(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic_120", numbers=["+1 212 555 0100"])
    d = await gw.call(t, "in", "+12125550100", direction="inbound", **{"from": LONDON})
    assert (d["decision"], d["reason"], d["source"]) == ("allow", "inbound_free", "free")
    await gw.tenant(t, charge_inbound_calls=True)
    d = await gw.call(t, "in2", "+12125550100", direction="inbound", **{"from": LONDON})
    assert (d["decision"], d["source"]) == ("allow", "domestic_pool")
    d = await gw.call(t, "in3", "+12125550199", direction="inbound", **{"from": LONDON})
    assert (d["decision"], d["reason"]) == ("deny", "unknown_user")


async def test_d28_toll_free_inbound_rated_by_origin(gw: Gateway, tenant: str) -> None:
    await gw.req("PUT", f"/v1/tenants/{tenant}/toll-free-numbers/{US_TOLL_FREE}", status=201)
    await gw.topup(tenant, "1.00", "k")
    await gw.call(tenant, "tf", US_TOLL_FREE, direction="inbound", **{"from": LONDON})
    bill = await gw.end(tenant, "tf", 120)
    rate = gw.settings.rate_decks["USD"].lookup(LONDON, "toll_free_inbound")
    assert rate is not None
    assert bill["billed"]["credits"] == usd(credit_cost_micro(120, rate))


async def test_d18_d30_call_moves_from_pool_to_credits(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "u", "US", "domestic_120")
    await gw.topup(tenant, "5.00", "k")
    for i in range(23):  # 115 of 120 minutes used
        await gw.call(tenant, f"f{i}", NEW_YORK, user="u")
        await gw.end(tenant, f"f{i}", 300)
    d = await gw.call(tenant, "long", NEW_YORK, user="u")
    assert (d["source"], d["granted_seconds"]) == ("domestic_pool", 300)
    # At 290 s the pool still holds the 10 s left of the minute already reserved (D8).
    e = await gw.extend(tenant, "long", 290)
    assert (e["decision"], e["source"], e["granted_seconds"]) == ("allow", "domestic_pool", 10)
    e = await gw.extend(tenant, "long", 300)
    assert (e["decision"], e["source"], e["granted_seconds"]) == ("allow", "credits", 300)
    e = await gw.extend(tenant, "long", 590)
    assert e["source"] == "credits"
    bill = await gw.end(tenant, "long", 700)  # 300 s on the pool, 400 s on credits
    rate = gw.settings.rate_decks["USD"].lookup(NEW_YORK, "outbound")
    assert rate is not None
    assert bill["billed"] == {"domestic_pool_minutes": 5, "international_pool_minutes": 0,
                              "credits": usd(credit_cost_micro(400, rate))}
    credits = await gw.credits(tenant)
    assert credits["reserved"] == "0.0000"
    assert credits["balance"] == usd(5_000_000 - credit_cost_micro(400, rate))


async def test_d29_grant_never_more_than_credits_can_pay(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "u", "US", "pay_as_you_go")
    await gw.topup(tenant, "0.0340", "k")  # fee 0.01 + 2 minutes at 0.012
    d = await gw.call(tenant, "c", NEW_YORK, user="u")
    assert (d["decision"], d["granted_seconds"]) == ("allow", 120)
    assert (await gw.credits(tenant))["available"] == "0.0000"
    d = await gw.call(tenant, "c2", NEW_YORK, user="u")
    assert d["reason"] == "insufficient_credits"


async def test_d31_end_is_idempotent_and_overrun_recorded(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "u", "US", "domestic")
    await gw.call(tenant, "c", NEW_YORK, user="u")
    first = await gw.end(tenant, "c", 900)
    assert first["duration_seconds"] == 900 and first["overrun_seconds"] == 600
    assert first["billed"]["domestic_pool_minutes"] == 5  # billed as the 300 s granted
    assert await gw.end(tenant, "c", 5) == first
    await gw.extend(tenant, "c", 10, status=409)
    call = await gw.req("GET", f"/v1/tenants/{tenant}/calls/c")
    assert (call["state"], call["overrun_seconds"]) == ("ended", 600)
    await gw.end(tenant, "nope", 5, status=404)
    await gw.extend(tenant, "nope", 5, status=404)


async def test_d31_unanswered_call_costs_nothing(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "u", "US", "pay_as_you_go")
    await gw.topup(tenant, "1.00", "k")
    await gw.call(tenant, "c", NEW_YORK, user="u")
    bill = await gw.end(tenant, "c", 0)
    assert bill["billed"]["credits"] == "0.0000"
    assert (await gw.credits(tenant))["balance"] == "1.0000"


async def test_d19_topup_idempotency(gw: Gateway, tenant: str) -> None:
    assert (await gw.topup(tenant, "25.00", "k1"))["balance"] == "25.0000"
    assert (await gw.topup(tenant, "25.00", "k1"))["balance"] == "25.0000"
    assert (await gw.topup(tenant, "12.5", "k2"))["balance"] == "37.5000"
    await gw.req("POST", f"/v1/tenants/{tenant}/credits/topups",
                 {"amount": "1.00", "idempotency_key": "k1"}, status=409)
    assert (await gw.credits(tenant))["balance"] == "37.5000"


async def test_d33_grant_expiry_recorded(gw: Gateway, tenant: str, redis_sync: object) -> None:
    await gw.user(tenant, "u", "US", "domestic")
    d = await gw.call(tenant, "c", NEW_YORK, user="u")
    keys = tenant_keys(tenant, gw.settings.partitions)
    score = redis_sync.zscore(keys.partition.active, f"{tenant}/c")  # type: ignore[attr-defined]
    assert score == gw.clock.now() + d["granted_seconds"]
    e = await gw.extend(tenant, "c", 200)
    score = redis_sync.zscore(keys.partition.active, f"{tenant}/c")  # type: ignore[attr-defined]
    assert score == gw.clock.now() + e["granted_seconds"]
    await gw.end(tenant, "c", 250)
    assert redis_sync.zscore(keys.partition.active, f"{tenant}/c") is None  # type: ignore[attr-defined]


async def test_users_numbers_are_unique(gw: Gateway, tenant: str) -> None:
    await gw.user(tenant, "a", "US", "domestic", numbers=["+12125550100"])
    r = await gw.req("PUT", f"/v1/tenants/{tenant}/users/b",
                     {"country": "US", "plan": "domestic", "numbers": ["+12125550100"]},
                     status=409)
    assert "+12125550100" in r["detail"]
    user = await gw.req("GET", f"/v1/tenants/{tenant}/users/a")
    assert user["numbers"] == ["+12125550100"]


async def test_tenant_currency_change_uses_its_deck(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t, currency="EUR")
    assert (await gw.credits(t))["currency"] == "EUR"
    await gw.user(t, "u", "FR", "pay_as_you_go")
    await gw.topup(t, "1.00", "k")
    await gw.call(t, "c", PARIS, user="u")
    bill = await gw.end(t, "c", 60)
    rate = gw.settings.rate_decks["EUR"].lookup(PARIS, "outbound")
    assert rate is not None
    assert bill["billed"]["credits"] == usd(credit_cost_micro(60, rate))
    r = await gw.req("PUT", f"/v1/tenants/{t}", {"name": t, "currency": "USD"}, status=409)
    assert "currency" in r["detail"]


async def test_d28_anonymous_caller_rated_at_dearest_toll_free_rate(
    gw: Gateway, tenant: str
) -> None:
    await gw.req("PUT", f"/v1/tenants/{tenant}/toll-free-numbers/{US_TOLL_FREE}", status=201)
    await gw.topup(tenant, "1.00", "k")
    d = await gw.call(tenant, "anon", US_TOLL_FREE, direction="inbound", **{"from": "anonymous"})
    assert (d["decision"], d["source"]) == ("allow", "credits")
    bill = await gw.end(tenant, "anon", 60)
    deck = gw.settings.rate_decks["USD"]
    dearest = max((r for r in deck.rows() if r.kind == "toll_free_inbound"),
                  key=lambda r: (r.rate_per_minute_micro, r.connection_fee_micro))
    assert bill["billed"]["credits"] == usd(credit_cost_micro(60, dearest))


async def test_d30_denied_extension_keeps_the_current_grant_reserved(
    gw: Gateway, tenant: str
) -> None:
    # The licence goes mid-call (D6): the extension at 60 s finds nothing to pay with.
    await gw.user(tenant, "u", "US", "domestic_120")
    d = await gw.call(tenant, "c", NEW_YORK, user="u")
    assert (d["source"], d["granted_seconds"]) == ("domestic_pool", 300)
    await gw.user(tenant, "u", "US", "none")
    e = await gw.extend(tenant, "c", 60)
    assert (e["decision"], e["reason"]) == ("deny", "insufficient_credits")
    assert e["grant_expires_at"] == d["grant_expires_at"]  # the current grant still runs
    pool = await gw.pool(tenant, "US", "domestic_120", "domestic")
    assert pool["reserved_minutes"] == 5
    bill = await gw.end(tenant, "c", 250)  # within the grant the switch was given
    assert bill["billed"]["domestic_pool_minutes"] == 5
    pool = await gw.pool(tenant, "US", "domestic_120", "domestic")
    assert (pool["reserved_minutes"], pool["used_minutes"]) == (0, 5)


async def test_d32_retry_after_the_skew_window_gets_its_first_answer(
    gw: Gateway, tenant: str
) -> None:
    """A retry whose started_at has meanwhile left the clock-skew window still gets the
    call's first answer (D32), not a 400; a new call with that started_at gets the 400."""
    await gw.user(tenant, "a", "US", "domestic")
    body = {"call_id": "late-1", "user_id": "a", "to": NEW_YORK,
            "started_at": rfc3339(int(gw.clock.now()))}
    first = await gw.req("POST", f"/v1/tenants/{tenant}/calls", body)
    assert first["decision"] == "allow"
    gw.clock.advance(gw.settings.clock_skew_seconds + 60)
    again = await gw.req("POST", f"/v1/tenants/{tenant}/calls", body)
    assert again == first
    late = await gw.req("POST", f"/v1/tenants/{tenant}/calls", {**body, "call_id": "late-2"},
                        status=400)
    assert [e["field"] for e in late["errors"]] == ["started_at"]
    # Another fault besides the skew: the 400, even for the known call id.
    bad = await gw.req("POST", f"/v1/tenants/{tenant}/calls", {**body, "to": "1" * 65},
                       status=400)
    assert sorted(e["field"] for e in bad["errors"]) == ["started_at", "to"]


async def test_an_end_months_after_the_start_settles_the_start_month(
    gw: Gateway, tenant_id: str, store_url: str
) -> None:
    """An end, or a reap, more than a month after the call started (a switch that lost the
    call, a reaper down for weeks) still bills the start month and releases what the call
    reserved there, although that month is no longer one of the three the gateway names
    to the function (the function answers MONTH_NEEDED; the store calls it again with the
    call's own month)."""
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "us0", "US", "domestic")
    await gw.user(t, "payg", "US", "pay_as_you_go", monthly_spend_limit="50.00")
    await gw.topup(t, "20.00", "k1")
    start_month = time.strftime("%Y-%m", time.gmtime(gw.clock.now()))
    for cid, to, user in (("p", NEW_YORK, "us0"), ("c", LONDON, "payg"),
                          ("reaped", NEW_YORK, "us0")):
        assert (await gw.call(t, cid, to, user=user))["decision"] == "allow"
    pool = await gw.pool(t, "US", "domestic", "domestic", month=start_month)
    assert pool["reserved_minutes"] == 10
    assert (await gw.credits(t))["reserved"] != "0.0000"

    gw.clock.advance(70 * 86400)
    assert (await gw.end(t, "p", 100))["billed"]["domestic_pool_minutes"] == 2
    paid = await gw.end(t, "c", 90)
    charged = parse_money(paid["billed"]["credits"], "credits", allow_zero=True)
    assert charged > 0
    store = Store.from_url(store_url, gw.settings.partitions)
    try:
        s = gw.settings
        reaper = Reaper(store, gw.clock, s.reaper_grace_seconds, s.clock_skew_seconds,
                        s.call_retention_seconds)
        # Passes as the running reaper makes them, until one closes nothing: each takes at
        # most REAP_BATCH_MAX calls per partition, and the suite's shared Redis holds other
        # tests' open calls, all long due 70 days on.
        while await reaper.run_once():
            pass
        assert reaper.reaped_total >= 1
    finally:
        await store.close()
    assert (await gw.req("GET", f"/v1/tenants/{t}/calls/reaped"))["state"] == "expired"

    pool = await gw.pool(t, "US", "domestic", "domestic", month=start_month)
    assert (pool["used_minutes"], pool["reserved_minutes"]) == (2 + 5, 0)
    credits = await gw.credits(t)
    assert credits["reserved"] == "0.0000"
    assert parse_money(credits["balance"], "balance", allow_zero=True) == 20_000_000 - charged
    # The user's spend (D22) is counted in the start month, its reservation gone.
    month_key = tenant_keys(t, gw.settings.partitions).month(start_month.replace("-", ""))
    with redis.Redis.from_url(store_url) as r:
        assert r.hmget(month_key, "s:payg", "sr:payg") == [str(charged).encode(), None]
