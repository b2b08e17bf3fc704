"""Projections: the ledger's tables derived from events, inside the events' transaction.

Each function runs only for an event inserted for the first time, so a re-delivered
entry never changes a projection twice. Events of one tenant arrive in stream order (one
partition stream, read in order), so a call's authorization precedes its end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway.ledger.base import Tx


def _s(v: Any) -> str:
    return "" if v is None else str(v)


def _i(v: Any) -> int:
    return int(v or 0)


async def _tenant(tx: Tx, t: str, d: dict[str, Any]) -> None:
    await tx.execute(
        "INSERT INTO tenants VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT (tenant) DO UPDATE "
        "SET name = excluded.name, currency = excluded.currency, "
        "timezone = excluded.timezone, charge_inbound_calls = excluded.charge_inbound_calls, "
        "max_concurrent_calls = excluded.max_concurrent_calls, "
        "updated_at = excluded.updated_at",
        t, _s(d.get("name")), _s(d.get("currency")), _s(d.get("timezone")),
        1 if d.get("charge_inbound_calls") else 0, _s(d.get("max_concurrent_calls")),
        _i(d.get("ts")), _i(d.get("ts")))


async def _user_put(tx: Tx, t: str, d: dict[str, Any]) -> None:
    await tx.execute(
        "INSERT INTO users VALUES (?, ?, ?, ?) ON CONFLICT (tenant, user_id) DO UPDATE "
        "SET record = excluded.record, updated_at = excluded.updated_at",
        t, _s(d.get("user")), _s(d.get("record")), _i(d.get("ts")))


async def _user_delete(tx: Tx, t: str, d: dict[str, Any]) -> None:
    await tx.execute("DELETE FROM users WHERE tenant = ? AND user_id = ?", t, _s(d.get("user")))


async def _topup(tx: Tx, t: str, d: dict[str, Any]) -> None:
    amount = _i(d.get("amount_micro"))
    await tx.execute("INSERT INTO topups VALUES (?, ?, ?, ?, ?, ?)", t,
                     _s(d.get("idempotency_key")), amount, _i(d.get("balance_micro")),
                     _i(d.get("ts")), _s(d.get("actor")))
    await tx.execute("UPDATE tenants SET balance_micro = balance_micro + ? WHERE tenant = ?",
                     amount, t)


async def _tollfree_add(tx: Tx, t: str, d: dict[str, Any]) -> None:
    await tx.execute("INSERT INTO tollfree_numbers VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                     t, _s(d.get("number")), _i(d.get("ts")))


async def _tollfree_remove(tx: Tx, t: str, d: dict[str, Any]) -> None:
    await tx.execute("DELETE FROM tollfree_numbers WHERE tenant = ? AND number = ?",
                     t, _s(d.get("number")))


def _record(d: dict[str, Any]) -> str:
    """The call's Redis record carried by the event (HGETALL, flat) as a JSON object."""
    flat = d.get("call") or []
    if isinstance(flat, dict):  # cjson writes an empty table as {}
        return "{}"
    return orjson.dumps({str(flat[i]): str(flat[i + 1])
                         for i in range(0, len(flat) - 1, 2)}).decode()


async def _call_decided(tx: Tx, t: str, d: dict[str, Any], state: str) -> None:
    await tx.execute(
        "INSERT INTO calls (tenant, call_id, state, direction, user_id, from_number, "
        "to_number, dest_country, dest_class, month, pool, rate_prefix, reason, started_at, "
        "authorized_at, pool_reserved_minutes, credits_reserved_micro, record, counted) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        t, _s(d.get("call_id")), state, _s(d.get("direction")), _s(d.get("user")),
        _s(d.get("from")), _s(d.get("to")), _s(d.get("country")), _s(d.get("class")),
        _s(d.get("month")), _s(d.get("pool")), _s(d.get("rate_prefix")), _s(d.get("reason")),
        _i(d.get("started_at")), _i(d.get("ts")), _i(d.get("pool_reserved_minutes")),
        _i(d.get("credits_reserved_micro")), _record(d), 1 if d.get("counted") else 0)


async def _call_extended(tx: Tx, t: str, d: dict[str, Any]) -> None:
    await tx.execute(
        "UPDATE calls SET pool_reserved_minutes = ?, credits_reserved_micro = ? "
        "WHERE tenant = ? AND call_id = ?",
        _i(d.get("pool_reserved_minutes")), _i(d.get("credits_reserved_micro")), t,
        _s(d.get("call_id")))
    if d.get("call"):
        await tx.execute("UPDATE calls SET record = ? WHERE tenant = ? AND call_id = ?",
                         _record(d), t, _s(d.get("call_id")))


async def _call_closed(tx: Tx, entry_id: str, t: str, d: dict[str, Any], state: str) -> None:
    cid = _s(d.get("call_id"))
    rows = await tx.fetch(
        "SELECT direction, from_number, to_number, dest_country, dest_class, started_at, "
        "reason FROM calls WHERE tenant = ? AND call_id = ?", t, cid)
    call = rows[0] if rows else ("", "", "", "", "", 0, "")
    await tx.execute("UPDATE calls SET state = ?, pool_reserved_minutes = 0, "
                     "credits_reserved_micro = 0 WHERE tenant = ? AND call_id = ?",
                     state, t, cid)
    pool = _s(d.get("pool"))
    minutes = _i(d.get("pool_minutes"))
    kind = pool.rsplit(":", 1)[-1] if pool else ""
    credits = _i(d.get("credits_micro"))
    await tx.execute(
        "INSERT INTO cdrs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "?, ?) ON CONFLICT DO NOTHING",
        t, cid, _s(d.get("user")), call[0], call[1], call[2], call[3], call[4], int(call[5]),
        _i(d.get("ts")), _i(d.get("duration_seconds")), _i(d.get("billed_seconds")),
        _i(d.get("overrun_seconds")), pool, _s(d.get("month")),
        minutes if kind == "domestic" else 0, minutes if kind == "international" else 0,
        credits, _s(d.get("rate_prefix")), call[6], state, entry_id)
    if credits:
        await tx.execute("UPDATE tenants SET balance_micro = balance_micro - ? "
                         "WHERE tenant = ?", credits, t)


async def apply_event(tx: Tx, entry_id: str, etype: str, tenant: str,
                      d: dict[str, Any]) -> None:
    """Update the projections for one new event (unknown types: kept in events only)."""
    if etype in ("tenant.created", "tenant.updated"):
        await _tenant(tx, tenant, d)
    elif etype in ("user.created", "user.updated"):
        await _user_put(tx, tenant, d)
    elif etype == "user.deleted":
        await _user_delete(tx, tenant, d)
    elif etype == "credits.topped_up":
        await _topup(tx, tenant, d)
    elif etype == "tollfree.added":
        await _tollfree_add(tx, tenant, d)
    elif etype == "tollfree.removed":
        await _tollfree_remove(tx, tenant, d)
    elif etype == "call.allowed":
        await _call_decided(tx, tenant, d, "active")
    elif etype == "call.denied":
        await _call_decided(tx, tenant, d, "denied")
    elif etype in ("call.extended", "call.extension_denied"):
        await _call_extended(tx, tenant, d)
    elif etype in ("call.ended", "call.expired"):
        await _call_closed(tx, entry_id, tenant, d, etype.split(".", 1)[1])
