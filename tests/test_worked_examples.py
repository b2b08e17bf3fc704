"""The nine worked examples of domain.md, one named test each, through the HTTP API.

Marked ``cluster``: each runs once on a single redis-server and once on a local
3-primary Redis Cluster.
"""

from __future__ import annotations

import calendar

import pytest

from tests.support.gwclient import Gateway
from tests.support.refcost import credit_cost_micro

pytestmark = pytest.mark.cluster

NEW_YORK = "+12125550123"
TORONTO = "+14165550100"
LONDON = "+442071838750"


async def drain(gw: Gateway, t: str, user: str, to: str, minutes: int, tag: str = "d") -> None:
    """Use exactly ``minutes`` pool minutes with 5-minute calls and one shorter call."""
    n = 0
    while minutes > 0:
        use = min(5, minutes)
        d = await gw.call(t, f"{tag}-{n}", to, user=user)
        assert d["decision"] == "allow" and d["source"].endswith("_pool"), d
        await gw.end(t, f"{tag}-{n}", use * 60)
        minutes -= use
        n += 1


async def test_example_1_canada_pool_and_cross_border_domestic(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    for i in range(3):
        await gw.user(t, f"ca{i}", "CA", "domestic")
    await gw.user(t, "us0", "US", "domestic")
    ca = await gw.pool(t, "CA", "domestic", "domestic")
    assert (ca["licenses"], ca["minutes_per_user"], ca["capacity_minutes"]) == (3, 3000, 9000)

    d = await gw.call(t, "ca-to-ny", NEW_YORK, user="ca0")
    assert (d["decision"], d["source"], d["destination"]["class"]) == (
        "allow", "domestic_pool", "domestic")
    assert d["destination"]["country"] == "US"
    assert (await gw.pool(t, "CA", "domestic", "domestic"))["reserved_minutes"] == 5

    d = await gw.call(t, "us-to-toronto", TORONTO, user="us0")
    assert (d["decision"], d["source"], d["destination"]["class"]) == (
        "allow", "domestic_pool", "domestic")
    assert d["destination"]["country"] == "CA"
    assert (await gw.pool(t, "US", "domestic", "domestic"))["reserved_minutes"] == 5
    assert (await gw.pool(t, "CA", "domestic", "domestic"))["reserved_minutes"] == 5


async def test_example_2_last_pool_minute_then_denied(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic_120")
    await drain(gw, t, "u", NEW_YORK, 119)
    assert (await gw.pool(t, "US", "domestic_120", "domestic"))["remaining_minutes"] == 1

    d = await gw.call(t, "last", NEW_YORK, user="u")
    assert d["decision"] == "allow" and d["source"] == "domestic_pool"
    assert 0 < d["granted_seconds"] <= 60
    bill = await gw.end(t, "last", 30)
    assert bill["billed"] == {"domestic_pool_minutes": 1, "international_pool_minutes": 0,
                              "credits": "0.0000"}

    d = await gw.call(t, "next", NEW_YORK, user="u")
    assert (d["decision"], d["reason"], d["sip_code"]) == (
        "deny", "pool_exhausted_no_credits", 402)


async def test_example_3_top_up_then_credits_pay(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic_120")
    await drain(gw, t, "u", NEW_YORK, 120)
    d = await gw.call(t, "before", NEW_YORK, user="u")
    assert d["reason"] == "pool_exhausted_no_credits"

    assert (await gw.topup(t, "10.00", "k1"))["balance"] == "10.0000"
    d = await gw.call(t, "after", NEW_YORK, user="u")
    assert (d["decision"], d["source"], d["granted_seconds"]) == ("allow", "credits", 300)
    bill = await gw.end(t, "after", 90)
    rate = gw.settings.rate_decks["USD"].lookup(NEW_YORK, "outbound")
    assert rate is not None and rate.prefix == "1"
    cost = credit_cost_micro(90, rate)
    assert bill["billed"]["credits"] == f"{cost / 1e6:.4f}"
    assert (await gw.credits(t))["balance"] == f"{(10_000_000 - cost) / 1e6:.4f}"


async def test_example_4_international_from_credits_or_pool(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "dom", "US", "domestic")
    await gw.user(t, "intl", "US", "international")

    d = await gw.call(t, "dom-0", LONDON, user="dom")
    assert (d["decision"], d["reason"], d["destination"]["class"]) == (
        "deny", "insufficient_credits", "international")

    await gw.topup(t, "5.00", "k")
    d = await gw.call(t, "dom-1", LONDON, user="dom")
    assert (d["decision"], d["source"]) == ("allow", "credits")
    bill = await gw.end(t, "dom-1", 60)
    gb = gw.settings.rate_decks["USD"].lookup(LONDON, "outbound")
    assert gb is not None and gb.prefix.startswith("44")
    assert bill["billed"]["credits"] == f"{credit_cost_micro(60, gb) / 1e6:.4f}"

    d = await gw.call(t, "intl-1", LONDON, user="intl")
    assert (d["decision"], d["source"]) == ("allow", "international_pool")
    pool = await gw.pool(t, "US", "international", "international")
    assert (pool["capacity_minutes"], pool["reserved_minutes"]) == (600, 5)


async def test_example_5_month_end_refills_pool(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t, timezone="America/New_York")
    await gw.user(t, "u", "US", "domestic_120")
    await gw.topup(t, "3.00", "k")
    # 30 November, 12:00 in New York.
    gw.clock.set(calendar.timegm((2026, 11, 30, 17, 0, 0)))
    await drain(gw, t, "u", NEW_YORK, 120)
    d = await gw.call(t, "nov-last", NEW_YORK, user="u")
    assert d["source"] == "credits"
    await gw.end(t, "nov-last", 0)
    balance = (await gw.credits(t))["balance"]

    # 1 December 00:00 in New York is 05:00 UTC; one second before, still November.
    gw.clock.set(calendar.timegm((2026, 12, 1, 4, 59, 59)))
    d = await gw.call(t, "still-nov", NEW_YORK, user="u")
    assert d["source"] == "credits"
    await gw.end(t, "still-nov", 0)
    gw.clock.set(calendar.timegm((2026, 12, 1, 5, 0, 0)))
    d = await gw.call(t, "dec-first", NEW_YORK, user="u")
    assert (d["decision"], d["source"]) == ("allow", "domestic_pool")
    dec = await gw.pool(t, "US", "domestic_120", "domestic", month="2026-12")
    assert (dec["used_minutes"], dec["reserved_minutes"]) == (0, 5)
    nov = await gw.pool(t, "US", "domestic_120", "domestic", month="2026-11")
    assert nov["used_minutes"] == 120
    assert (await gw.credits(t))["balance"] == balance


async def test_example_6_emergency_without_plan_or_policy(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "nobody", "US", "none", dial_out="none")
    d = await gw.call(t, "e1", "911", user="nobody")
    assert (d["decision"], d["reason"], d["source"], d["sip_code"]) == (
        "allow", "emergency", "free", None)
    assert d["destination"]["class"] == "emergency"
    bill = await gw.end(t, "e1", 600)
    assert bill["billed"] == {"domestic_pool_minutes": 0, "international_pool_minutes": 0,
                              "credits": "0.0000"}
    assert await gw.pools(t) == []
    assert (await gw.credits(t))["balance"] == "0.0000"
    # The same user may not call an ordinary number.
    d = await gw.call(t, "e2", NEW_YORK, user="nobody")
    assert (d["decision"], d["reason"]) == ("deny", "no_calling_plan")


async def test_example_7_toll_free_inbound_without_credits(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.req("PUT", f"/v1/tenants/{t}/toll-free-numbers/+18005550199", status=201)
    d = await gw.call(t, "in-1", "+18005550199", direction="inbound", **{"from": LONDON})
    assert (d["decision"], d["reason"], d["sip_code"]) == ("deny", "insufficient_credits", 402)
    await gw.topup(t, "1.00", "k")
    d = await gw.call(t, "in-2", "+18005550199", direction="inbound", **{"from": LONDON})
    assert (d["decision"], d["source"]) == ("allow", "credits")


async def test_example_8_61_seconds_on_pool_and_on_credits(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "pool", "US", "domestic")
    await gw.user(t, "payg", "US", "pay_as_you_go")
    await gw.topup(t, "1.00", "k")

    await gw.call(t, "p", NEW_YORK, user="pool")
    bill = await gw.end(t, "p", 61)
    assert bill["billed"]["domestic_pool_minutes"] == 2

    d = await gw.call(t, "c", NEW_YORK, user="payg")
    assert d["source"] == "credits"
    bill = await gw.end(t, "c", 61)
    rate = gw.settings.rate_decks["USD"].lookup(NEW_YORK, "outbound")
    assert rate is not None
    assert (rate.initial_increment_seconds, rate.subsequent_increment_seconds) == (60, 60)
    expected = 2 * rate.rate_per_minute_micro + rate.connection_fee_micro
    assert bill["billed"]["credits"] == f"{expected / 1e6:.4f}"
    assert (await gw.credits(t))["balance"] == f"{(1_000_000 - expected) / 1e6:.4f}"


async def test_example_9_same_call_id_twice(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic")
    first = await gw.call(t, "dup", NEW_YORK, user="u")
    gw.clock.advance(5)
    second = await gw.call(t, "dup", NEW_YORK, user="u")
    assert first == second
    assert (await gw.pool(t, "US", "domestic", "domestic"))["reserved_minutes"] == 5
