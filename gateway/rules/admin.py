"""Tenant administration: tenants, users and licences, credits, toll-free numbers, pools.

The HTTP handlers and the CLI (demo tenant, bulk loading) both go through this module, so
there is one code path for every change; each change is one atomic Redis function that
also appends its event to the partition stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import Settings
from gateway.errors import NotFound, TenantNotFound, ValidationError
from gateway.redis import contract as c
from gateway.redis.store import Store, StoreError, TenantSettings
from gateway.rules.clock import Clock, month_of
from gateway.rules.money import format_money
from gateway.rules.numbers import classify
from gateway.rules.refusals import domain_error


@dataclass(frozen=True, slots=True)
class UserSpec:
    country: str
    plan: str
    dial_out: str
    credits_allowed: bool
    monthly_spend_limit_micro: int | None
    max_concurrent_calls: int | None
    numbers: tuple[str, ...]


def e164_number(raw: str, field: str, *, toll_free: bool = False) -> str:
    dest = classify(raw)
    if dest.e164 is None:
        raise ValidationError.one(field, dest.error or "not a valid E.164 number")
    if toll_free and dest.number_type != "toll_free":
        raise ValidationError.one(
            field, f"{dest.e164} is a {dest.number_type} number of {dest.country}, not toll-free"
        )
    return dest.e164


class AdminService:
    def __init__(self, settings: Settings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    def _now(self) -> int:
        return int(self.clock.now())

    # -- tenants --------------------------------------------------------------------------

    async def put_tenant(
        self, tenant_id: str, s: TenantSettings, actor: str
    ) -> tuple[dict[str, Any], bool]:
        try:
            created = await self.store.tenant_put(tenant_id, self._now(), s, actor)
        except StoreError as exc:
            raise domain_error(exc) from exc
        return await self.get_tenant(tenant_id), created

    async def get_tenant(self, tenant_id: str) -> dict[str, Any]:
        t = await self.store.tenant_get(tenant_id)
        if t is None:
            raise TenantNotFound()
        return {
            "tenant_id": tenant_id,
            "name": t.get("name"),
            "currency": t.get("cur"),
            "timezone": t.get("tz"),
            "charge_inbound_calls": t.get("chg_in") == "1",
            "max_concurrent_calls": int(t["maxc"]) if t.get("maxc") else None,
            "authorizations_per_second": int(t["rl"]) if t.get("rl") else None,
            "active_calls": int(t.get("act") or 0),
        }

    async def tenant_exists(self, tenant_id: str) -> bool:
        return await self.store.tenant_get(tenant_id) is not None

    # -- users ----------------------------------------------------------------------------

    def _record(self, spec: UserSpec) -> dict[str, Any]:
        plan = self.settings.plans[spec.plan]
        record: dict[str, Any] = {
            "country": spec.country,
            "plan": spec.plan,
            "pstn": plan.outbound != "none",
            "dial_out": spec.dial_out,
            "credits_allowed": spec.credits_allowed,
            "numbers": list(spec.numbers),
            "dmin": plan.domestic_minutes_for(spec.country),
            "imin": plan.international_minutes_for(spec.country),
        }
        # Absent rather than null: Lua's cjson turns null into a sentinel, absent into nil.
        if spec.monthly_spend_limit_micro is not None:
            record["monthly_spend_limit_micro"] = spec.monthly_spend_limit_micro
        if spec.max_concurrent_calls is not None:
            record["max_concurrent_calls"] = spec.max_concurrent_calls
        return record

    async def put_user(
        self, tenant_id: str, user_id: str, spec: UserSpec, actor: str
    ) -> tuple[dict[str, Any], bool]:
        record = self._record(spec)
        try:
            created = await self.store.user_put(
                tenant_id, user_id, self._now(), orjson.dumps(record).decode(), actor
            )
        except StoreError as exc:
            raise domain_error(exc) from exc
        return user_body(user_id, record), created

    async def get_user(self, tenant_id: str, user_id: str) -> dict[str, Any]:
        raw = await self.store.user_get(tenant_id, user_id)
        if raw is None:
            if not await self.tenant_exists(tenant_id):
                raise TenantNotFound()
            raise NotFound()
        return user_body(user_id, orjson.loads(raw))

    async def delete_user(self, tenant_id: str, user_id: str, actor: str) -> None:
        try:
            await self.store.user_delete(tenant_id, user_id, self._now(), actor)
        except StoreError as exc:
            raise domain_error(exc) from exc

    # -- credits --------------------------------------------------------------------------

    async def topup(
        self, tenant_id: str, key: str, amount_micro: int, actor: str
    ) -> dict[str, Any]:
        currency, _balance, _ = await self.credits_raw(tenant_id)
        # The balance cap is checked in Lua, after the idempotency check: a retried top-up
        # near the cap answers as the first did instead of 400.
        try:
            balance, _ = await self.store.topup(
                tenant_id, key, amount_micro, self._now(), actor
            )
        except StoreError as exc:
            raise domain_error(exc) from exc
        return {"balance": format_money(balance), "currency": currency}

    async def credits_raw(self, tenant_id: str) -> tuple[str, int, int]:
        try:
            return await self.store.credits_get(tenant_id)
        except StoreError as exc:
            raise domain_error(exc) from exc

    async def credits(self, tenant_id: str) -> dict[str, Any]:
        currency, balance, reserved = await self.credits_raw(tenant_id)
        return {
            "balance": format_money(balance),
            "currency": currency,
            "reserved": format_money(reserved),
            "available": format_money(balance - reserved),
        }

    # -- toll-free numbers ----------------------------------------------------------------

    async def put_tollfree(
        self, tenant_id: str, number: str, actor: str
    ) -> tuple[dict[str, Any], bool]:
        try:
            created = await self.store.tollfree_put(tenant_id, number, self._now(), actor)
        except StoreError as exc:
            raise domain_error(exc) from exc
        return {"number": number}, created

    async def delete_tollfree(self, tenant_id: str, number: str, actor: str) -> None:
        try:
            await self.store.tollfree_delete(tenant_id, number, self._now(), actor)
        except StoreError as exc:
            raise domain_error(exc) from exc

    # -- pools ----------------------------------------------------------------------------

    async def pools(self, tenant_id: str, month: str | None) -> dict[str, Any]:
        if month is None:
            t = await self.store.tenant_get(tenant_id)
            if t is None:
                raise TenantNotFound()
            month = month_of(self._now(), t.get("tz") or "UTC")
        try:
            pools, usage = await self.store.pools_get(tenant_id, month)
        except StoreError as exc:
            raise domain_error(exc) from exc
        return {"month": f"{month[:4]}-{month[4:]}", "pools": pool_rows(pools, usage)}


def pool_rows(pools: dict[str, str], usage: dict[str, str]) -> list[dict[str, Any]]:
    """API rows from the pools hash (licences, minutes per user) and a month hash (usage)."""
    ids: set[tuple[str, str, str]] = set()
    per_user_prefix = {"domestic": c.POOL_DOMESTIC_MINUTES,
                       "international": c.POOL_INTERNATIONAL_MINUTES}
    for field, value in pools.items():
        for kind, prefix in per_user_prefix.items():
            if field.startswith(prefix) and int(value) > 0:
                ids.add((*_split2(field.removeprefix(prefix)), kind))
    for field in usage:
        if field.startswith((c.MONTH_POOL_USED, c.MONTH_POOL_RESERVED)):
            country, plan, kind = field.partition(":")[2].split(":")
            ids.add((country, plan, kind))
    rows = []
    for country, plan, kind in sorted(ids):
        cc_plan = c.pool_id(country, plan)
        licenses = int(pools.get(c.POOL_LICENCES + cc_plan, 0))
        per_user = int(pools.get(per_user_prefix[kind] + cc_plan, 0))
        used = int(usage.get(f"{c.MONTH_POOL_USED}{cc_plan}:{kind}", 0))
        reserved = int(usage.get(f"{c.MONTH_POOL_RESERVED}{cc_plan}:{kind}", 0))
        capacity = licenses * per_user
        rows.append({
            "country": country, "plan": plan, "kind": kind, "licenses": licenses,
            "minutes_per_user": per_user, "capacity_minutes": capacity,
            "used_minutes": used, "reserved_minutes": reserved,
            "remaining_minutes": max(0, capacity - used - reserved),
            "percent_used": round((used + reserved) * 100 / capacity, 1) if capacity else None,
        })
    return rows


def _split2(pool: str) -> tuple[str, str]:
    country, plan = pool.split(":")
    return country, plan


def user_body(user_id: str, record: dict[str, Any]) -> dict[str, Any]:
    limit = record.get("monthly_spend_limit_micro")
    return {
        "user_id": user_id,
        "country": record["country"],
        "plan": record["plan"],
        "dial_out": record["dial_out"],
        "credits_allowed": record["credits_allowed"],
        "monthly_spend_limit": None if limit is None else format_money(int(limit)),
        "max_concurrent_calls": record.get("max_concurrent_calls"),
        "numbers": list(record.get("numbers") or []),
    }
