"""The truth checker of the fault scenarios (tests/support/truth.py) catches what it must:
a call answered deny that Redis holds allowed (a phantom), an acknowledged end whose bill
Redis does not hold, and an allowed call Redis lost; and passes a tenant whose state is
what its answers say. Real Redis, real gateway, answers edited to stand for lost ones."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock
from tests.support.gateway import start_gateway
from tests.support.gwclient import Gateway
from tests.support.serve import PARTITIONS
from tests.support.truth import Answers, Report, check, redis_client, snapshot

pytestmark = pytest.mark.phantom
LONDON = "+442071838750"
NEW_YORK = "+12125550123"


@pytest.fixture
async def truth_gw(redis_server: RedisServer, clock: ManualClock,
                   aiohttp_client: Any) -> Gateway:
    return await start_gateway(aiohttp_client, clock, redis_server.url, partitions=PARTITIONS)


async def calls(gw: Gateway, tenant: str, answers: Answers) -> None:
    """Three calls answered allow (pool, credits, credits), the first one ended."""
    await gw.tenant(tenant)
    await gw.user(tenant, "dom", "US", "domestic")
    await gw.user(tenant, "payg", "US", "pay_as_you_go")
    await gw.topup(tenant, "100.00", "k")
    for cid, user, to in (("c1", "dom", NEW_YORK), ("c2", "payg", LONDON),
                          ("c3", "payg", LONDON)):
        body = await gw.call(tenant, cid, to, user)
        assert answers.authorized(cid, user, 200, body) == "allow"
    bill = await gw.end(tenant, "c2", 125)
    assert answers.ended("c2", 200, bill)


def read_and_check(url: str, tenant: str, answers: Answers) -> Report:
    client = redis_client(url)
    try:
        snap = snapshot(client, tenant, PARTITIONS, answers.calls)
    finally:
        client.close()
    return check(snap, answers, tenant, 100_000_000)


async def test_answers_that_match_redis_pass(truth_gw: Gateway, redis_server: RedisServer,
                                             tenant_id: str) -> None:
    answers = Answers()
    await calls(truth_gw, tenant_id, answers)
    report = read_and_check(redis_server.url, tenant_id, answers)
    assert report.ok, report.summary()
    assert report.ends_acked == 1


async def test_a_call_answered_deny_but_allowed_in_redis_is_a_phantom(
    truth_gw: Gateway, redis_server: RedisServer, tenant_id: str
) -> None:
    answers = Answers()
    await calls(truth_gw, tenant_id, answers)
    answers.calls["c3"].authorize = "deny:service_unavailable"  # the allow never arrived
    answers.calls["c1"].authorize = "none:TimeoutError"
    report = read_and_check(redis_server.url, tenant_id, answers)
    assert [p.split(" ")[0] for p in report.phantoms] == ["c1", "c3"], report.summary()
    assert report.phantom_pool_minutes == 5
    assert report.phantom_credits_micro > 0
    assert any("res" in s for s in report.sums) and any("act" in s for s in report.sums)


async def test_an_acknowledged_end_redis_does_not_hold_is_lost(
    truth_gw: Gateway, redis_server: RedisServer, tenant_id: str
) -> None:
    answers = Answers()
    await calls(truth_gw, tenant_id, answers)
    # c3 told ended with a bill Redis never recorded; c2's bill told different from Redis's.
    answers.ended("c3", 200, {"billed": {"credits": "0.0000", "domestic_pool_minutes": 0,
                                         "international_pool_minutes": 0}})
    bill = answers.calls["c2"].bill
    assert bill is not None
    bill["credits"] = "0.0001"
    report = read_and_check(redis_server.url, tenant_id, answers)
    assert sorted(e.split(":")[0] for e in report.lost_ends) == ["c2", "c3"], report.summary()
    assert any("balance" in s for s in report.sums)


async def test_an_allowed_call_redis_lost_is_reported(
    truth_gw: Gateway, redis_server: RedisServer, tenant_id: str
) -> None:
    answers = Answers()
    await calls(truth_gw, tenant_id, answers)
    answers.authorized("c4", "dom", 200, {"decision": "allow"})  # never sent to Redis
    report = read_and_check(redis_server.url, tenant_id, answers)
    assert [e.split(":")[0] for e in report.lost_allows] == ["c4"], report.summary()
