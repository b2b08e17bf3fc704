"""Time only moves forward (issue 12 §7): an extend whose ``used_seconds`` is lower than one
already reported for the call is a 400 naming ``used_seconds`` and changes nothing.

Before, extend 290 then extend 0 truncated the call's horizon back to 0 s, released the
reservation of the 290 s the call had had, and granted them again: the end then billed
300 s of a 590 s call. The check is in the extend function itself (one FCALL, status
USED_BACKWARDS), against the most used seconds any earlier extend reported, allowed or
denied.
"""

from __future__ import annotations

import pytest
import redis

from gateway.redis.store import Status
from tests.support.gwclient import Gateway
from tests.test_validation import snapshot

NEW_YORK = "+12125550123"  # USD deck: fee 0.0100 + 0.0120 a minute, 60 s increments


@pytest.fixture
async def tenant(gw: Gateway, tenant_id: str) -> str:
    await gw.tenant(tenant_id)
    await gw.user(tenant_id, "payg", "US", "pay_as_you_go")
    return tenant_id


def assert_used_seconds_problem(doc: dict[str, object], reported: int) -> None:
    assert doc["status"] == 400, doc
    assert doc["errors"] == [{"field": "used_seconds", "message": (
        f"must not be lower than the {reported} s already reported: time only moves forward")}]


async def test_lower_used_seconds_is_a_400_and_the_end_bills_all_the_time(
    gw: Gateway, tenant: str, redis_sync: redis.Redis
) -> None:
    """The issue's case: extend 290, extend 0, end 590 billed 300 s (0.0700) instead of
    590 s (0.1300 here)."""
    await gw.topup(tenant, "10.00", "k")
    assert (await gw.call(tenant, "c", NEW_YORK, user="payg"))["decision"] == "allow"
    gw.clock.advance(290)
    e = await gw.extend(tenant, "c", 290)
    assert (e["decision"], e["granted_seconds"]) == ("allow", 300)
    before = snapshot(redis_sync, tenant, gw.settings.partitions)
    for lower in (0, 1, 289):
        doc = await gw.extend(tenant, "c", lower, status=400)
        assert_used_seconds_problem(doc, 290)
    assert snapshot(redis_sync, tenant, gw.settings.partitions) == before
    again = await gw.extend(tenant, "c", 290)  # the same seconds again: a retry, allowed
    assert (again["decision"], again["granted_seconds"]) == ("allow", 300)
    gw.clock.advance(300)
    bill = await gw.end(tenant, "c", 590)
    assert bill["billed"]["credits"] == "0.1300"  # 10 minutes: 0.0100 + 10 x 0.0120


async def test_a_denied_extend_counts_as_reported(
    gw: Gateway, tenant: str, redis_sync: redis.Redis
) -> None:
    """A denied extend keeps the call's grant but still records the seconds it reported:
    otherwise a lower report after it would release them and buy a new grant."""
    await gw.topup(tenant, "0.0700", "k")  # fee + 5 minutes: the first grant and no more
    d = await gw.call(tenant, "c", NEW_YORK, user="payg")
    assert (d["decision"], d["granted_seconds"]) == ("allow", 300)
    gw.clock.advance(300)
    e = await gw.extend(tenant, "c", 300)
    assert (e["decision"], e["reason"]) == ("deny", "insufficient_credits")
    before = snapshot(redis_sync, tenant, gw.settings.partitions)
    # Reported seconds are what is checked, not the grant: 100 s would release 3 minutes.
    doc = await gw.extend(tenant, "c", 100, status=400)
    assert_used_seconds_problem(doc, 300)
    assert snapshot(redis_sync, tenant, gw.settings.partitions) == before


async def test_ended_and_unknown_calls_answer_as_before(gw: Gateway, tenant: str) -> None:
    """The check comes after the call's own state: an ended call is still a 409, an
    unknown one a 404, whatever the seconds."""
    await gw.topup(tenant, "10.00", "k")
    await gw.call(tenant, "c", NEW_YORK, user="payg")
    await gw.extend(tenant, "c", 200)
    await gw.end(tenant, "c", 250)
    await gw.extend(tenant, "c", 10, status=409)
    await gw.extend(tenant, "nope", 10, status=404)


async def test_the_function_answers_used_backwards_with_the_reported_seconds(
    gw: Gateway, tenant: str
) -> None:
    """The status the Lua function answers, shared with gateway.redis.store.Status."""
    from gateway.http.web import STORE
    from gateway.redis.store import StoreError
    from gateway.rules.clock import candidate_months

    await gw.topup(tenant, "10.00", "k")
    await gw.call(tenant, "c", NEW_YORK, user="payg")
    await gw.extend(tenant, "c", 120)
    store = gw.client.app[STORE]
    now = int(gw.clock.now())
    months = candidate_months(now, gw.settings.clock_skew_seconds)
    with pytest.raises(StoreError) as info:
        await store.extend(tenant, "c", now, 119, months, gw.settings.grant_seconds)
    assert info.value.status is Status.USED_BACKWARDS
    assert int(info.value.status) == -12
    assert [int(x) for x in info.value.detail] == [120]


def test_the_openapi_document_tells_it() -> None:
    from gateway.config import load_settings
    from gateway.http.openapi import build_document

    doc = build_document(load_settings(env={}))
    op = doc["paths"]["/v1/tenants/{tenant_id}/calls/{call_id}/extend"]["post"]
    assert "used_seconds lower than one already reported" in op["description"]
    assert "used_seconds" in op["responses"]["400"]["description"]
    assert "application/problem+json" in op["responses"]["400"]["content"]
