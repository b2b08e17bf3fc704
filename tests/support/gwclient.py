"""A thin test client of the gateway's HTTP API, speaking its JSON contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import Settings
from gateway.rules.clock import ManualClock

OPERATOR_TOKEN = "test-operator-token-7Hq2xW9mR4vK8pZ3"  # 36 characters: >= 128 bits
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@dataclass
class Gateway:
    client: Any  # aiohttp TestClient
    clock: ManualClock
    settings: Settings

    async def req(self, method: str, path: str, body: Any = None, *, status: int | None = 200,
                  headers: dict[str, str] | None = None, raw: bytes | None = None) -> Any:
        kwargs: dict[str, Any] = {"headers": AUTH if headers is None else headers}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        resp = await self.client.request(method, path, **kwargs)
        text = await resp.text()
        if status is not None:
            assert resp.status == status, f"{method} {path}: {resp.status} {text}"
        if not text:
            return None
        return await resp.json(content_type=None)

    async def tenant(self, tid: str, **fields: Any) -> Any:
        return await self.req("PUT", f"/v1/tenants/{tid}", {"name": tid, **fields}, status=None)

    async def user(self, tid: str, uid: str, country: str, plan: str, **fields: Any) -> Any:
        return await self.req("PUT", f"/v1/tenants/{tid}/users/{uid}",
                              {"country": country, "plan": plan, **fields}, status=None)

    async def topup(self, tid: str, amount: str, key: str) -> Any:
        return await self.req("POST", f"/v1/tenants/{tid}/credits/topups",
                              {"amount": amount, "idempotency_key": key})

    async def call(self, tid: str, call_id: str, to: str, user: str | None = None,
                   direction: str = "outbound", **fields: Any) -> Any:
        body: dict[str, Any] = {"call_id": call_id, "direction": direction, "to": to, **fields}
        if user is not None:
            body["user_id"] = user
        return await self.req("POST", f"/v1/tenants/{tid}/calls", body)

    async def extend(self, tid: str, call_id: str, used: int, status: int = 200) -> Any:
        return await self.req("POST", f"/v1/tenants/{tid}/calls/{call_id}/extend",
                              {"used_seconds": used}, status=status)

    async def end(self, tid: str, call_id: str, duration: int, status: int = 200) -> Any:
        return await self.req("POST", f"/v1/tenants/{tid}/calls/{call_id}/end",
                              {"duration_seconds": duration}, status=status)

    async def pools(self, tid: str, month: str | None = None) -> list[dict[str, Any]]:
        q = f"?month={month}" if month else ""
        body = await self.req("GET", f"/v1/tenants/{tid}/pools{q}")
        return list(body["pools"])

    async def pool(self, tid: str, country: str, plan: str, kind: str,
                   month: str | None = None) -> dict[str, Any]:
        for p in await self.pools(tid, month):
            if (p["country"], p["plan"], p["kind"]) == (country, plan, kind):
                return p
        raise AssertionError(f"no pool {country}/{plan}/{kind}")

    async def credits(self, tid: str) -> Any:
        return await self.req("GET", f"/v1/tenants/{tid}/credits")
