"""CDRs as the API and the export show them: money as 4-decimal strings, RFC 3339 times."""

from __future__ import annotations

import base64
import re
from typing import Any

from gateway.ledger.project import call_record_of
from gateway.redis.keys import call_fields
from gateway.rules.clock import rfc3339
from gateway.rules.money import format_money
from gateway.validate import CALL_ID_RE, INT_MAX

CSV_COLUMNS = (
    "tenant_id", "call_id", "user_id", "direction", "from", "to", "destination_country",
    "destination_class", "started_at", "ended_at", "duration_seconds", "billed_seconds",
    "domestic_pool_minutes", "international_pool_minutes", "credits_charged", "rate_prefix",
    "reason", "state",
)


def cdr_view(row: dict[str, Any]) -> dict[str, Any]:
    """One CDR of the ledger (gateway.ledger.base.CDR_COLUMNS) as the API shows it."""
    return {
        "tenant_id": row["tenant"],
        "call_id": row["call_id"],
        "user_id": row["user_id"] or None,
        "direction": row["direction"],
        "from": row["from_number"] or None,
        "to": row["to_number"],
        "destination_country": row["dest_country"] or None,
        "destination_class": row["dest_class"],
        "started_at": rfc3339(int(row["started_at"])),
        "ended_at": rfc3339(int(row["ended_at"])),
        "duration_seconds": int(row["duration_seconds"]),
        "billed_seconds": int(row["billed_seconds"]),
        "overrun_seconds": int(row["overrun_seconds"]),
        "domestic_pool_minutes": int(row["domestic_pool_minutes"]),
        "international_pool_minutes": int(row["international_pool_minutes"]),
        "credits_charged": format_money(int(row["credits_micro"])),
        "rate_prefix": row["rate_prefix"] or None,
        "reason": row["reason"],
        "state": row["state"],
    }


CALL_SQL = (
    "SELECT c.state, c.direction, c.user_id, c.from_number, c.to_number, c.dest_country, "
    "c.dest_class, c.month, c.pool, c.rate_prefix, c.reason, c.started_at, c.authorized_at, "
    "c.record, c.record_changes, d.duration_seconds, d.domestic_pool_minutes, "
    "d.international_pool_minutes, d.credits_micro, d.overrun_seconds, d.ended_at "
    "FROM calls c LEFT JOIN cdrs d ON d.tenant = c.tenant AND d.call_id = c.call_id "
    "WHERE c.tenant = ? AND c.call_id = ?")


def call_record(row: Any) -> dict[str, str]:
    """A ledger row of CALL_SQL as the fields of a call's Redis record (keys.call_fields'
    names), for the view of a call Redis no longer holds: what the record carried (an
    allowed call's), the call's columns, and its bill."""
    (state, direction, user_id, from_number, to_number, country, klass, month, pool,
     rate_prefix, reason, started_at, authorized_at, record, changes, duration, dom, intl,
     credits, overrun, ended_at) = row
    rec: dict[str, str] = call_fields(call_record_of(record, changes))
    allowed = bool(rec.get("d") == "allow") and state != "denied"
    rec.update({
        "st": str(state), "dir": str(direction), "uid": str(user_id or ""),
        "from": str(from_number or ""), "to": str(to_number), "dc": str(country or ""),
        "cls": str(klass or ""), "mon": str(month or ""), "pool": str(pool or ""),
        "rp": str(rate_prefix or ""), "rsn": str(reason or ""), "sa": str(started_at or ""),
        "t0": str(authorized_at or ""), "d": "allow" if allowed else "deny",
    })
    if not allowed:
        rec.update({"src": "", "grants": "[]", "h": "0"})
    if ended_at is not None:
        rec.update({"dur": str(duration), "bdp": str(dom), "bip": str(intl),
                    "bc": str(credits), "over": str(overrun), "ended": str(ended_at)})
    return rec


def csv_row(row: dict[str, Any]) -> list[str]:
    view = cdr_view(row)
    return ["" if view[c] is None else str(view[c]) for c in CSV_COLUMNS]


def encode_cursor(ended_at: int, call_id: str) -> str:
    return base64.urlsafe_b64encode(f"{ended_at}/{call_id}".encode()).decode().rstrip("=")


# A cursor: base64url of "<ended_at>/<call_id>", as encode_cursor writes it. What decodes
# is checked as strictly as what the API accepts elsewhere: the database never sees an
# integer it cannot hold (SQLite raised OverflowError past 2^63) nor text it refuses
# (PostgreSQL refuses NUL).
_CURSOR_RE = re.compile(r"([0-9]{1,13})/(" + CALL_ID_RE.pattern + ")", re.ASCII)
CURSOR_CHARS_MAX = 4 * (13 + 1 + 128) // 3 + 4


def decode_cursor(text: str) -> tuple[int, str] | None:
    """(ended_at, call_id) of a cursor encode_cursor wrote; None for anything else."""
    if len(text) > CURSOR_CHARS_MAX or not text.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    m = _CURSOR_RE.fullmatch(raw)
    if m is None or int(m.group(1)) > INT_MAX:
        return None
    return int(m.group(1)), m.group(2)
