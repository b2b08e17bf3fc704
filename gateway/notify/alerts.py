"""Alert settings and webhooks of a tenant (api.md, Notifications): validation and storage.

The settings live in fields of the hashes the call-control functions already read (see
lua/05_alerts.lua): pool thresholds in the pools hash, the credit thresholds in the tenant
hash. Crossings are detected there, in the step that crosses them; this module only writes
and reads the settings and the webhook records. Every change is an audited event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import FieldError, TenantNotFound, ValidationError, WebhookNotFound
from gateway.notify.webhooks import SECRET_MIN_CHARS, DestinationRefused, check_destination, redact
from gateway.redis import contract
from gateway.redis.keys import DELIVERY_LOG_MAX
from gateway.redis.store import Status, Store, StoreError
from gateway.rules.clock import rfc3339
from gateway.rules.money import format_money, parse_money
from gateway.validate import Fields
from gateway.vocab import ALERT_EVENTS

POOL_THRESHOLDS_DEFAULT = contract.POOL_THRESHOLDS_DEFAULT  # as lua/05_alerts.lua
THRESHOLDS_MAX = 10
EVENT_TYPES = tuple(e.value for e in ALERT_EVENTS)
WEBHOOKS_MAX = 20
SECRET_MAX_CHARS = 256
_SECRET_RE = re.compile(r"[\x21-\x7e]+", re.ASCII)


@dataclass(frozen=True, slots=True)
class AlertSettings:
    pool_thresholds_percent: tuple[int, ...] = POOL_THRESHOLDS_DEFAULT
    low_balance_micro: int | None = None
    recharge_below_micro: int | None = None
    recharge_amount_micro: int | None = None

    def body(self) -> dict[str, Any]:
        recharge = None
        if self.recharge_below_micro is not None and self.recharge_amount_micro is not None:
            recharge = {"below": format_money(self.recharge_below_micro),
                        "amount": format_money(self.recharge_amount_micro)}
        return {
            "pool_thresholds_percent": list(self.pool_thresholds_percent),
            "low_balance": None if self.low_balance_micro is None
            else format_money(self.low_balance_micro),
            "auto_recharge": recharge,
        }


def _money(f: Fields, obj: dict[str, Any], name: str, field: str, *,
           allow_zero: bool) -> int | None:
    try:
        return parse_money(obj[name], field, allow_zero=allow_zero)
    except ValidationError as exc:
        f.errors.extend(exc.errors)
        return None


def parse_alerts(body: dict[str, Any]) -> AlertSettings:
    """A PUT body; absent fields take their defaults ([80, 100], null, null)."""
    f = Fields(body, ("pool_thresholds_percent", "low_balance", "auto_recharge"))
    thresholds: tuple[int, ...] = POOL_THRESHOLDS_DEFAULT
    raw = body.get("pool_thresholds_percent", list(POOL_THRESHOLDS_DEFAULT))
    if not isinstance(raw, list) or len(raw) > THRESHOLDS_MAX:
        f.fail("pool_thresholds_percent",
               f"must be a list of at most {THRESHOLDS_MAX} integers between 1 and 100")
    else:
        ok = True
        for i, v in enumerate(raw):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100:
                f.fail(f"pool_thresholds_percent[{i}]", "must be an integer between 1 and 100")
                ok = False
        if ok:
            thresholds = tuple(sorted(set(raw)))
    low = None
    if body.get("low_balance") is not None:
        low = _money(f, body, "low_balance", "low_balance", allow_zero=False)
    below = amount = None
    recharge = body.get("auto_recharge")
    if recharge is not None:
        if not isinstance(recharge, dict):
            f.fail("auto_recharge", "must be an object {below, amount} or null")
        else:
            for k in recharge:
                if k not in ("below", "amount"):
                    f.fail(f"auto_recharge.{k}", "unknown field")
            for k in ("below", "amount"):
                if recharge.get(k) is None:
                    f.fail(f"auto_recharge.{k}", "is required")
            if recharge.get("below") is not None:
                below = _money(f, recharge, "below", "auto_recharge.below", allow_zero=False)
            if recharge.get("amount") is not None:
                amount = _money(f, recharge, "amount", "auto_recharge.amount",
                                allow_zero=False)
    f.done()
    return AlertSettings(thresholds, low, below, amount)


def _opt(v: int | None) -> str:
    return "" if v is None else str(v)


async def put_alerts(store: Store, tenant_id: str, s: AlertSettings, now: int,
                     actor: str) -> None:
    k = store.keys(tenant_id)
    try:
        f = contract.ALERTS_PUT
        await store.run(
            f, f.keys_of(tenant=k.tenant, pools=k.pools, events=k.partition.events,
                         audit=k.audit),
            f.argv_of(tenant_id=tenant_id, now=now,
                      pool_thresholds=",".join(str(t) for t in s.pool_thresholds_percent),
                      low_balance_micro=_opt(s.low_balance_micro),
                      recharge_below_micro=_opt(s.recharge_below_micro),
                      recharge_amount_micro=_opt(s.recharge_amount_micro), actor=actor))
    except StoreError as exc:
        if exc.status is Status.TENANT_NOT_FOUND:
            raise TenantNotFound() from exc
        raise


def _int_or_none(v: Any) -> int | None:
    return None if v is None or v == "" else int(v)


async def get_alerts(store: Store, tenant_id: str) -> AlertSettings:
    k = store.keys(tenant_id)
    t = await store.raw(k.tenant, "HMGET", k.tenant, "cur", "alb", "arb", "ara")
    if t[0] is None:
        raise TenantNotFound()
    apct = await store.raw(k.pools, "HGET", k.pools, "apct")
    thresholds = POOL_THRESHOLDS_DEFAULT if apct is None else tuple(
        int(x) for x in str(apct).split(",") if x)
    below, amount = _int_or_none(t[2]), _int_or_none(t[3])
    return AlertSettings(thresholds, _int_or_none(t[1]), below,
                         amount if below is not None else None)


# -- webhooks ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WebhookSpec:
    url: str
    secret: str | None  # None: keep the current one (an update)
    events: tuple[str, ...]
    enabled: bool


async def parse_webhook(body: dict[str, Any], allow_private: bool) -> WebhookSpec:
    f = Fields(body, ("url", "secret", "events", "enabled"))
    url = f.string("url", required=True, max_len=2048)
    secret = f.string("secret", max_len=SECRET_MAX_CHARS)
    if secret is not None and (len(secret) < SECRET_MIN_CHARS
                               or _SECRET_RE.fullmatch(secret) is None):
        f.fail("secret", f"must be {SECRET_MIN_CHARS}-{SECRET_MAX_CHARS} printable ASCII "
               "characters without spaces")
        secret = None
    events: tuple[str, ...] = EVENT_TYPES
    if "events" in body and body["events"] is not None:
        raw = body["events"]
        if not isinstance(raw, list) or not raw:
            f.fail("events", "must be a non-empty list of: " + ", ".join(EVENT_TYPES))
        else:
            chosen: list[str] = []
            for i, e in enumerate(raw):
                if e not in EVENT_TYPES:
                    f.fail(f"events[{i}]", "must be one of " + ", ".join(EVENT_TYPES))
                elif e not in chosen:
                    chosen.append(e)
            events = tuple(chosen)
    enabled = f.boolean("enabled", default=True)
    if url is not None and not f.errors:
        try:
            await check_destination(url, allow_private)
        except DestinationRefused as exc:
            f.fail("url", str(exc))
    f.done()
    assert url is not None
    return WebhookSpec(url, secret, events, enabled)


def webhook_body(webhook_id: str, record: dict[str, Any]) -> dict[str, Any]:
    shown = redact(record)
    return {
        "webhook_id": webhook_id, "url": shown["url"], "events": shown["events"],
        "enabled": shown["enabled"], "created_at": rfc3339(int(shown["created"])),
        "updated_at": rfc3339(int(shown["updated"])),
    }


async def webhook_record(store: Store, tenant_id: str, webhook_id: str) -> dict[str, Any] | None:
    k = store.keys(tenant_id)
    raw = await store.raw(k.webhooks, "HGET", k.webhooks, webhook_id)
    return None if raw is None else dict(orjson.loads(raw))


async def put_webhook(store: Store, tenant_id: str, webhook_id: str, spec: WebhookSpec,
                      now: int, actor: str) -> tuple[dict[str, Any], bool]:
    k = store.keys(tenant_id)
    old = await webhook_record(store, tenant_id, webhook_id)
    secret = spec.secret if spec.secret is not None else (old or {}).get("secret")
    if secret is None:
        raise ValidationError([FieldError("secret", "is required when creating a webhook")])
    record = {"url": spec.url, "secret": secret, "events": list(spec.events),
              "enabled": spec.enabled, "created": (old or {}).get("created", now),
              "updated": now}
    try:
        f = contract.WEBHOOK_PUT
        reply = await store.run(
            f, f.keys_of(tenant=k.tenant, webhooks=k.webhooks, events=k.partition.events,
                         audit=k.audit),
            f.argv_of(tenant_id=tenant_id, now=now, webhook_id=webhook_id,
                      record=orjson.dumps(record).decode(),
                      record_redacted=orjson.dumps(redact(record)).decode(), actor=actor,
                      webhooks_max=WEBHOOKS_MAX))
    except StoreError as exc:
        if exc.status is Status.TENANT_NOT_FOUND:
            raise TenantNotFound() from exc
        if exc.status is Status.BALANCE_LIMIT:
            raise ValidationError.one("webhook_id",
                                      f"a tenant may have at most {WEBHOOKS_MAX} webhooks") from exc
        raise
    return webhook_body(webhook_id, record), bool(reply.created)


async def get_webhook(store: Store, tenant_id: str, webhook_id: str) -> dict[str, Any]:
    record = await webhook_record(store, tenant_id, webhook_id)
    if record is None:
        if not await store.tenant_exists(tenant_id):
            raise TenantNotFound()
        raise WebhookNotFound()
    return webhook_body(webhook_id, record)


async def delete_webhook(store: Store, tenant_id: str, webhook_id: str, now: int,
                         actor: str) -> None:
    k = store.keys(tenant_id)
    try:
        f = contract.WEBHOOK_DELETE
        await store.run(
            f, f.keys_of(tenant=k.tenant, webhooks=k.webhooks, events=k.partition.events,
                         audit=k.audit, delivery_log=k.delivery_log(webhook_id)),
            f.argv_of(tenant_id=tenant_id, now=now, webhook_id=webhook_id, actor=actor))
    except StoreError as exc:
        if exc.status is Status.TENANT_NOT_FOUND:
            raise TenantNotFound() from exc
        if exc.status is Status.NOT_FOUND:
            raise WebhookNotFound() from exc
        raise


DELIVERY_FIELDS = ("event_id", "type", "attempts", "state", "last_status", "next")


def delivery_row(values: Sequence[Any]) -> dict[str, Any]:
    event_id, etype, attempts, state, last_status, nxt = (
        None if v is None else str(v) for v in values)
    return {
        "event_id": event_id, "type": etype, "attempts": int(attempts or 0), "state": state,
        "last_status": int(last_status) if last_status else None,
        "next_attempt_at": rfc3339(int(nxt) // 1000) if nxt else None,
    }


async def deliveries(store: Store, tenant_id: str, webhook_id: str,
                     limit: int) -> list[dict[str, Any]]:
    await get_webhook(store, tenant_id, webhook_id)  # 404s
    k = store.keys(tenant_id)
    ids = await store.raw(k.webhooks, "LRANGE", k.delivery_log(webhook_id), 0,
                          min(limit, DELIVERY_LOG_MAX) - 1)
    rows = []
    for d in ids:
        key = k.partition.delivery(str(d))
        values = await store.raw(key, "HMGET", key, *DELIVERY_FIELDS)
        if values[0] is not None:  # expired record
            rows.append(delivery_row(values))
    return rows
