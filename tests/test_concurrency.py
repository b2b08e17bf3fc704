"""Atomicity under concurrency: the pool and the call id are decided inside one function.

Both tests also run on a local 3-primary Redis Cluster (marker ``cluster``).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.gwclient import Gateway

pytestmark = pytest.mark.cluster

NEW_YORK = "+12125550123"


async def test_200_concurrent_authorizations_exactly_n_allowed(
    gw: Gateway, tenant_id: str
) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic_120")  # 120 minutes: room for 24 grants of 5
    n = 24
    answers = await asyncio.gather(
        *(gw.call(t, f"c{i}", NEW_YORK, user="u") for i in range(200))
    )
    allowed = [a for a in answers if a["decision"] == "allow"]
    denied = [a for a in answers if a["decision"] == "deny"]
    assert len(allowed) == n
    assert all(a["granted_seconds"] == 300 for a in allowed)
    assert {a["reason"] for a in denied} == {"pool_exhausted_no_credits"}
    pool = await gw.pool(t, "US", "domestic_120", "domestic")
    assert (pool["reserved_minutes"], pool["remaining_minutes"]) == (120, 0)


async def test_50_concurrent_retries_one_reservation(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "pay_as_you_go")
    await gw.topup(t, "10.00", "k")
    answers = await asyncio.gather(*(gw.call(t, "same", NEW_YORK, user="u") for _ in range(50)))
    assert all(a == answers[0] for a in answers)
    assert answers[0]["decision"] == "allow"
    credits = await gw.credits(t)
    # One reservation: 5 minutes at 0.012 plus the 0.01 connection fee.
    assert credits["reserved"] == "0.0700"


async def test_concurrent_topups_and_calls_conserve_money(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "pay_as_you_go")

    async def lifecycle(i: int) -> str:
        d = await gw.call(t, f"c{i}", NEW_YORK, user="u")
        if d["decision"] == "allow":
            return str((await gw.end(t, f"c{i}", 61))["billed"]["credits"])
        return "0.0000"

    results = await asyncio.gather(
        *(gw.topup(t, "0.10", f"k{i}") for i in range(20)),
        *(lifecycle(i) for i in range(60)),
    )
    spent = sum(int(r.replace(".", "")) for r in results[20:])  # 4-decimal strings
    credits = await gw.credits(t)
    assert credits["reserved"] == "0.0000"
    assert int(credits["balance"].replace(".", "")) == 20 * 1000 - spent
    assert int(credits["balance"].replace(".", "")) >= 0
