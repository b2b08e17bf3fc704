"""Input hardening (issue 3, item 4) and bugs the schemathesis run found, as regressions."""

from __future__ import annotations

import pytest

from tests.gwclient import Gateway


@pytest.fixture
async def tenant(gw: Gateway, tenant_id: str) -> str:
    await gw.tenant(tenant_id)
    return tenant_id


async def test_large_balances_stay_exact(gw: Gateway, tenant: str) -> None:
    """Lua writes numbers with 14 significant digits: a balance of 10^14 micro-units or
    more came back as '5.016028998434e+14' and the top-up answered 500 (schemathesis)."""
    body = await gw.topup(tenant, "99999999.9998", "big")
    assert body["balance"] == "99999999.9998"
    assert (await gw.credits(tenant))["balance"] == "99999999.9998"
    # Same key again: the same answer, from the stored record.
    assert (await gw.topup(tenant, "99999999.9998", "big"))["balance"] == "99999999.9998"
    doc = await gw.req("POST", f"/v1/tenants/{tenant}/credits/topups",
                       {"amount": "0.0002", "idempotency_key": "over"}, status=400)
    assert doc["errors"][0]["field"] == "amount" and "exceed" in doc["errors"][0]["message"]


@pytest.mark.parametrize("amount", [
    12.5, 1, "1e309", "NaN", "-1.00", "", " 1.00", "1.00000", "Infinity", None, True,
    "1,00", "0x10", "١٢",
])
async def test_money_only_as_decimal_strings(gw: Gateway, tenant: str, amount: object) -> None:
    doc = await gw.req("POST", f"/v1/tenants/{tenant}/credits/topups",
                       {"amount": amount, "idempotency_key": "k"}, status=400)
    assert doc["errors"][0]["field"] == "amount", doc
