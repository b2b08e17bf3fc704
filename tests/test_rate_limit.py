"""Per-tenant authorize rate (one tenant cannot fill the shared Redis): a bucket of that many
tokens refilled whole every second, counted inside the authorize function (same round trip);
over it, deny / rate_limited / SIP 503, and nothing written."""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis

from gateway.redis.keys import tenant_keys
from gateway.rules.clock import ManualClock
from tests.support.gateway import T0, start_gateway
from tests.support.gwclient import Gateway

pytestmark = pytest.mark.cluster

NEW_YORK = "+12125550123"


async def test_a_tenant_over_its_rate_is_denied_rate_limited_and_nothing_is_stored(
        gw: Gateway, tenant_id: str, store_url: str) -> None:
    t = tenant_id
    body = await gw.tenant(t, authorizations_per_second=5)
    assert body["authorizations_per_second"] == 5
    await gw.user(t, "u", "US", "domestic")
    # Five new calls in one second, then none.
    for i in range(5):
        assert (await gw.call(t, f"c{i}", NEW_YORK, user="u"))["decision"] == "allow"
    over = await gw.call(t, "over", NEW_YORK, user="u")
    assert (over["decision"], over["reason"], over["sip_code"], over["source"]) == (
        "deny", "rate_limited", 503, None)
    # Nothing behind it: no record (a retry is a new question), no event for the ledger.
    await gw.req("GET", f"/v1/tenants/{t}/calls/over", status=404)
    # Retries of calls already decided are replays, not new work: still answered.
    assert (await gw.call(t, "c3", NEW_YORK, user="u"))["decision"] == "allow"
    # Emergency calls are never limited.
    assert (await gw.call(t, "sos", "911", user="u"))["reason"] == "emergency"
    # A second later, five more, and no more.
    gw.clock.advance(1)
    answers = [await gw.call(t, f"d{i}", NEW_YORK, user="u") for i in range(7)]
    assert [a["reason"] for a in answers] == ["domestic_pool"] * 5 + ["rate_limited"] * 2


async def test_the_limit_is_per_tenant(gw: Gateway, tenant_id: str, store_url: str) -> None:
    quiet, busy = tenant_id + "-q", tenant_id + "-b"
    await gw.tenant(busy, authorizations_per_second=1)
    await gw.tenant(quiet)
    for t in (busy, quiet):
        await gw.user(t, "u", "US", "domestic")
    reasons = [(await gw.call(busy, f"b{i}", NEW_YORK, user="u"))["reason"] for i in range(2)]
    assert reasons == ["domestic_pool", "rate_limited"]
    assert (await gw.call(quiet, "q", NEW_YORK, user="u"))["reason"] == "domestic_pool"


async def test_the_deployment_default_applies_to_tenants_without_a_rate(
        own_redis: Any, aiohttp_client: Any, tenant_id: str) -> None:
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url,
                             tenant_authorizations_per_second=2)
    t = tenant_id
    assert (await gw.tenant(t))["authorizations_per_second"] is None
    await gw.user(t, "u", "US", "domestic")
    reasons = [(await gw.call(t, f"c{i}", NEW_YORK, user="u"))["reason"] for i in range(3)]
    assert reasons == ["domestic_pool", "domestic_pool", "rate_limited"]
    # Its own rate wins over the default; null gives the default back.
    await gw.tenant(t, authorizations_per_second=100)
    assert (await gw.call(t, "own", NEW_YORK, user="u"))["decision"] == "allow"
    r = redis.Redis.from_url(own_redis.url)
    assert cast(bytes, r.hget(tenant_keys(t, 64).tenant, "rl")) == b"100"
    # The second's bucket lives two seconds at most.
    assert 0 < cast(int, r.ttl(tenant_keys(t, 64).rate(T0))) <= 2
    await gw.tenant(t, authorizations_per_second=None)
    assert cast(bytes, r.hget(tenant_keys(t, 64).tenant, "rl")) == b""
    r.close()
    metrics = await (await gw.client.get("/metrics")).text()
    assert ('callgate_decisions_total{decision="deny",reason="rate_limited",source="none"}'
            in metrics)


@pytest.mark.parametrize("bad", [0, -1, 1_000_001, "10", 1.5])
async def test_a_bad_rate_is_a_400_naming_the_field(gw: Gateway, tenant_id: str,
                                                    store_url: str, bad: Any) -> None:
    problem = await gw.req("PUT", f"/v1/tenants/{tenant_id}",
                           {"name": "x", "authorizations_per_second": bad}, status=400)
    assert [e["field"] for e in problem["errors"]] == ["authorizations_per_second"]
