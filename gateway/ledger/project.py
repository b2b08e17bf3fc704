"""Projections: the ledger's tables derived from events, inside the events' transaction.

Each event of a batch becomes SQL statements (no reads: a CDR takes the call's details
with INSERT … SELECT), run in event order; runs of the same statement go to the database
as one executemany, and wallet balance changes are summed per tenant and applied once at
the end of the batch. Only events inserted for the first time are projected, so a
re-delivered entry never changes a projection twice. Events of one tenant arrive in
stream order (one partition stream, read in order): a call's authorization precedes its
end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.ledger.tx import Tx
from gateway.redis.keys import CALL_PACKED_FIELDS, call_fields
from gateway.vocab import EventType as E

Stmt = tuple[str, tuple[Any, ...]]


def _s(v: Any) -> str:
    return "" if v is None else str(v)


def _i(v: Any) -> int:
    return int(v or 0)


# Fields of the call record that are JSON text: call.allowed carries them beside the
# record as JSON values rather than inside it as escaped strings (lua/50_authorize.lua).
_JSON_FIELDS_BESIDE = ("i", "grants")


def _flat_record(d: dict[str, Any], key: str = "call") -> dict[str, str]:
    """The call's Redis record carried by the event (HGETALL, flat) by field name; with
    key "set", the fields of it that call.extended carries."""
    flat = d.get(key) or []
    if isinstance(flat, dict):  # cjson writes an empty table as {}
        return {}
    rec = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    for f in _JSON_FIELDS_BESIDE:
        v = d.get(f)
        if v is not None and not isinstance(v, str):
            # Compact, as cjson wrote the text Redis holds (the same text for the values
            # these fields hold: digits, our words, ids without '/' or escapes).
            rec[f] = orjson.dumps(v).decode()
    return rec


def _record(d: dict[str, Any], key: str = "call") -> str:
    """The record as the ledger keeps it: a JSON object of the values Redis holds, keys
    sorted (the same text whichever shape of event carried it)."""
    return orjson.dumps(_flat_record(d, key), option=orjson.OPT_SORT_KEYS).decode()


def call_record_of(record: str | None, changes: str | None) -> dict[str, str]:
    """An open call's Redis record from its ledger row: the record call.allowed carried
    (``calls.record``) with the fields its last extension wrote (``calls.record_changes``,
    carried by call.extended) laid over it."""
    rec: dict[str, str] = orjson.loads(record or "{}")
    if changes and changes != "{}":
        rec.update(orjson.loads(changes))
    return rec


# call.allowed carries only the call id and the call's record (lua/50_authorize.lua): the
# event fields the projection reads, by the record field that holds each. Events written
# before carried them all, and still project as they are.
_FIELDS_IN_RECORD = {
    "direction": "dir", "user": "uid", "to": "to", "from": "from", "reason": "rsn",
    "source": "src", "granted_seconds": "g", "class": "cls", "country": "dc",
    "number_type": "dt", "month": "mon", "started_at": "sa", "pool": "pool",
    "pool_reserved_minutes": "pr", "credits_reserved_micro": "cr", "rate_prefix": "rp",
}


def _denied_record(d: dict[str, Any]) -> str:
    """A denied call's record: the fields of its answer no column holds (GET of a call
    Redis no longer has, gateway.ledger.cdrs.call_record)."""
    return orjson.dumps({"d": "deny", "dt": _s(d.get("number_type"))},
                        option=orjson.OPT_SORT_KEYS).decode()


def _with_record_fields(d: dict[str, Any], flat: dict[str, str]) -> dict[str, Any]:
    """d with the event fields the projection reads taken from its record (flat: the
    record, _flat_record)."""
    if "direction" in d:
        return d
    packed = d.get("i")
    if isinstance(packed, list):
        # The packed values beside the record as JSON (authorize's usual shape), read as
        # they are rather than from flat's text of them.
        rec = {**flat, **dict(zip(CALL_PACKED_FIELDS, packed, strict=False))}
    else:
        rec = call_fields(flat)
    if not rec:
        return d
    out: dict[str, Any] = {k: rec.get(f) for k, f in _FIELDS_IN_RECORD.items()}
    out["counted"] = str(rec.get("cnt")) == "1"
    out.update(d)
    return out


TENANT_UPSERT = (
    "INSERT INTO tenants (tenant, name, currency, timezone, charge_inbound_calls, "
    "max_concurrent_calls, balance_micro, created_at, updated_at, authorizations_per_second) "
    "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (tenant) DO UPDATE "
    "SET name = excluded.name, currency = excluded.currency, "
    "timezone = excluded.timezone, charge_inbound_calls = excluded.charge_inbound_calls, "
    "max_concurrent_calls = excluded.max_concurrent_calls, updated_at = excluded.updated_at, "
    "authorizations_per_second = excluded.authorizations_per_second")
USER_UPSERT = ("INSERT INTO users VALUES (?, ?, ?, ?) ON CONFLICT (tenant, user_id) DO UPDATE "
               "SET record = excluded.record, updated_at = excluded.updated_at")
USER_DELETE = "DELETE FROM users WHERE tenant = ? AND user_id = ?"
TOPUP_INSERT = "INSERT INTO topups VALUES (?, ?, ?, ?, ?, ?)"
TOLLFREE_ADD = "INSERT INTO tollfree_numbers VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
TOLLFREE_REMOVE = "DELETE FROM tollfree_numbers WHERE tenant = ? AND number = ?"
CALL_INSERT = (
    "INSERT INTO calls (tenant, call_id, state, direction, user_id, from_number, "
    "to_number, dest_country, dest_class, month, pool, rate_prefix, reason, started_at, "
    "authorized_at, pool_reserved_minutes, credits_reserved_micro, record, counted) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
CALL_RESERVED = ("UPDATE calls SET pool_reserved_minutes = ?, credits_reserved_micro = ? "
                 "WHERE tenant = ? AND call_id = ?")
# An extension's event of the earlier shape carried the whole record.
CALL_RESERVED_RECORD = ("UPDATE calls SET pool_reserved_minutes = ?, "
                        "credits_reserved_micro = ?, record = ?, record_changes = '{}' "
                        "WHERE tenant = ? AND call_id = ?")
CALL_RESERVED_CHANGES = ("UPDATE calls SET pool_reserved_minutes = ?, "
                         "credits_reserved_micro = ?, record_changes = ? "
                         "WHERE tenant = ? AND call_id = ?")
CALL_VOID = ("UPDATE calls SET state = 'denied', reason = ?, pool_reserved_minutes = 0, "
             "credits_reserved_micro = 0 WHERE tenant = ? AND call_id = ?")
CALL_CLOSE = ("UPDATE calls SET state = ?, pool_reserved_minutes = 0, "
              "credits_reserved_micro = 0 WHERE tenant = ? AND call_id = ?")
# Casts: PostgreSQL does not infer parameter types in a SELECT list from the target.
_T, _B = "CAST(? AS TEXT)", "CAST(? AS BIGINT)"
CDR_INSERT = (
    "INSERT INTO cdrs (tenant, call_id, user_id, direction, from_number, to_number, "
    "dest_country, dest_class, started_at, ended_at, duration_seconds, billed_seconds, "
    "overrun_seconds, pool, month, domestic_pool_minutes, international_pool_minutes, "
    "credits_micro, rate_prefix, reason, state, entry_id) "
    f"SELECT {_T}, {_T}, {_T}, COALESCE(c.direction, ''), COALESCE(c.from_number, ''), "
    "COALESCE(c.to_number, ''), COALESCE(c.dest_country, ''), COALESCE(c.dest_class, ''), "
    f"COALESCE(c.started_at, 0), {_B}, {_B}, {_B}, {_B}, {_T}, {_T}, {_B}, {_B}, {_B}, "
    f"{_T}, COALESCE(c.reason, ''), {_T}, {_T} "
    "FROM (SELECT 1 AS one) AS o LEFT JOIN calls c ON c.tenant = ? AND c.call_id = ? "
    "WHERE 1 = 1 ON CONFLICT DO NOTHING")


def _closed(entry_id: str, t: str, d: dict[str, Any], state: str) -> list[Stmt]:
    cid = _s(d.get("call_id"))
    pool = _s(d.get("pool"))
    minutes = _i(d.get("pool_minutes"))
    kind = pool.rsplit(":", 1)[-1] if pool else ""
    return [
        (CDR_INSERT, (t, cid, _s(d.get("user")), _i(d.get("ts")),
                      _i(d.get("duration_seconds")), _i(d.get("billed_seconds")),
                      _i(d.get("overrun_seconds")), pool, _s(d.get("month")),
                      minutes if kind == "domestic" else 0,
                      minutes if kind == "international" else 0,
                      _i(d.get("credits_micro")), _s(d.get("rate_prefix")), state, entry_id,
                      t, cid)),
        (CALL_CLOSE, (state, t, cid)),
    ]


def statements(entry_id: str, etype: str, t: str, d: dict[str, Any],
               balance: dict[str, int]) -> list[Stmt]:
    """The statements projecting one new event; adds wallet changes to ``balance``."""
    if etype in (E.TENANT_CREATED, E.TENANT_UPDATED):
        return [(TENANT_UPSERT, (
            t, _s(d.get("name")), _s(d.get("currency")), _s(d.get("timezone")),
            1 if d.get("charge_inbound_calls") else 0, _s(d.get("max_concurrent_calls")),
            _i(d.get("ts")), _i(d.get("ts")), _s(d.get("authorizations_per_second"))))]
    if etype in (E.USER_CREATED, E.USER_UPDATED):
        return [(USER_UPSERT, (t, _s(d.get("user")), _s(d.get("record")), _i(d.get("ts"))))]
    if etype == E.USER_DELETED:
        return [(USER_DELETE, (t, _s(d.get("user"))))]
    if etype == E.CREDITS_TOPPED_UP:
        amount = _i(d.get("amount_micro"))
        balance[t] = balance.get(t, 0) + amount
        return [(TOPUP_INSERT, (t, _s(d.get("idempotency_key")), amount,
                                _i(d.get("balance_micro")), _i(d.get("ts")),
                                _s(d.get("actor"))))]
    if etype == E.TOLLFREE_ADDED:
        return [(TOLLFREE_ADD, (t, _s(d.get("number")), _i(d.get("ts"))))]
    if etype == E.TOLLFREE_REMOVED:
        return [(TOLLFREE_REMOVE, (t, _s(d.get("number"))))]
    if etype in (E.CALL_ALLOWED, E.CALL_DENIED):
        if etype == E.CALL_ALLOWED:
            flat = _flat_record(d)
            record = orjson.dumps(flat, option=orjson.OPT_SORT_KEYS).decode()
        else:
            flat, record = {}, ""
        d = _with_record_fields(d, flat)
        return [(CALL_INSERT, (
            t, _s(d.get("call_id")), "active" if etype == E.CALL_ALLOWED else "denied",
            _s(d.get("direction")), _s(d.get("user")), _s(d.get("from")), _s(d.get("to")),
            _s(d.get("country")), _s(d.get("class")), _s(d.get("month")), _s(d.get("pool")),
            _s(d.get("rate_prefix")), _s(d.get("reason")), _i(d.get("started_at")),
            _i(d.get("ts")), _i(d.get("pool_reserved_minutes")),
            _i(d.get("credits_reserved_micro")),
            record if etype == E.CALL_ALLOWED else _denied_record(d),
            1 if d.get("counted") else 0))]
    if etype in (E.CALL_EXTENDED, E.CALL_EXTENSION_DENIED):
        pr, cr, cid = _i(d.get("pool_reserved_minutes")), _i(d.get("credits_reserved_micro")), \
            _s(d.get("call_id"))
        if d.get("set"):
            return [(CALL_RESERVED_CHANGES, (pr, cr, _record(d, "set"), t, cid))]
        if d.get("call"):
            return [(CALL_RESERVED_RECORD, (pr, cr, _record(d), t, cid))]
        return [(CALL_RESERVED, (pr, cr, t, cid))]
    if etype in (E.CALL_ENDED, E.CALL_EXPIRED):
        credits = _i(d.get("credits_micro"))
        if credits:
            balance[t] = balance.get(t, 0) - credits
        return _closed(entry_id, t, d, etype.split(".", 1)[1])
    if etype == E.CALL_VOIDED:
        # An allow that never reached the switch, undone (gateway.rules.voids): a denied call.
        return [(CALL_VOID, (_s(d.get("reason")), t, _s(d.get("call_id"))))]
    return []  # unknown types: kept in events only


async def run_statements(tx: Tx, stmts: Sequence[Stmt]) -> None:
    """In order; consecutive runs of one statement as one executemany."""
    i = 0
    while i < len(stmts):
        sql, j = stmts[i][0], i + 1
        while j < len(stmts) and stmts[j][0] == sql:
            j += 1
        if j - i == 1:
            await tx.execute(sql, *stmts[i][1])
        else:
            await tx.execute_many(sql, [s[1] for s in stmts[i:j]])
        i = j
