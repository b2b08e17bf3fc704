"""Input hardening (issue 3, item 4) and bugs the schemathesis run found, as regressions."""

from __future__ import annotations

import pytest

from tests.support.gwclient import Gateway


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


@pytest.mark.parametrize("raw,stored", [
    ("+1 (212) 555-0111", "+12125550111"),
    ("+44 20 7183 8750", "+442071838750"),
    ("00442071838750", "+442071838750"),
])
async def test_numbers_are_normalised_to_e164(gw: Gateway, tenant: str, raw: str,
                                              stored: str) -> None:
    body = await gw.req("PUT", f"/v1/tenants/{tenant}/users/u",
                        {"country": "US", "plan": "domestic", "numbers": [raw]}, status=201)
    assert body["numbers"] == [stored]


@pytest.mark.parametrize("raw,says", [
    ("2125550111", "country code"),
    ("+1212", "too short"),
    ("abc", "letters"),
    ("+99912345678", "unknown country code"),
])
async def test_bad_numbers_say_what_is_wrong(gw: Gateway, tenant: str, raw: str,
                                             says: str) -> None:
    doc = await gw.req("PUT", f"/v1/tenants/{tenant}/users/u",
                       {"country": "US", "plan": "domestic", "numbers": ["+12125550111", raw]},
                       status=400)
    assert doc["errors"][0]["field"] == "numbers[1]"
    assert says in doc["errors"][0]["message"], doc


@pytest.mark.parametrize("path", ["/credits/topups", "/users/u", ""])
async def test_unknown_fields_are_rejected_everywhere(gw: Gateway, tenant: str,
                                                      path: str) -> None:
    method = "POST" if path == "/credits/topups" else "PUT"
    body = {"amount": "1.00", "idempotency_key": "k"} if method == "POST" else (
        {"country": "US", "plan": "domestic"} if path else {"name": "x"})
    doc = await gw.req(method, f"/v1/tenants/{tenant}{path}", {**body, "surprise": 1},
                       status=400)
    assert doc["errors"] == [{"field": "surprise", "message": "unknown field"}]
