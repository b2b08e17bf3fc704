"""A call's record by full names: the typed view of the short fields Redis stores.

Redis keeps an open call in a hash whose field names are short (gateway/redis/keys.py, most
packed in 'i'), a closed call in one packed string; the ledger's row of a call is read into
the same names (gateway/ledger/cdrs.py). Everything else reads a call through CallRecord.
"""

from __future__ import annotations

from dataclasses import dataclass


def _int(text: str | None) -> int:
    return int(text) if text else 0


def _when(text: str | None) -> int | None:
    return int(text) if text else None


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A call as stored. Times are seconds since the epoch, money micro-units.

    ``closed_only``: the compact record Redis keeps of a closed call for its replay window,
    only what repeats answer (the first answer, the bill, month, user, pool, rate prefix);
    its direction, numbers, times and grants are in the ledger (None / empty here)."""

    state: str  # active | ended | expired | denied
    decision: str  # authorize's first answer (D32)
    reason: str
    source: str
    first_grant_seconds: int
    first_grant_expires_at: int
    destination_class: str
    destination_country: str
    destination_type: str
    month: str  # YYYYMM of the call's start, tenant's zone
    user_id: str
    pool: str
    rate_prefix: str
    direction: str | None
    to_number: str | None
    from_number: str
    started_at: int | None
    authorized_at: int | None
    granted_seconds_total: int  # the horizon: seconds since answer the call may last
    grant_expires_at: int  # the current grant's
    grants_json: str  # the grants, a JSON array of {at, seconds, source, expires_at}
    duration_seconds: int
    billed_domestic_pool_minutes: int
    billed_international_pool_minutes: int
    billed_credits_micro: int
    overrun_seconds: int
    ended_at: int | None
    closed_only: bool

    @classmethod
    def from_fields(cls, r: dict[str, str]) -> CallRecord:
        """From a record's fields by their stored names (gateway.redis.keys.call_fields)."""
        return cls(
            state=r["st"], decision=r.get("d", ""), reason=r.get("rsn", ""),
            source=r.get("src", ""), first_grant_seconds=_int(r.get("g")),
            first_grant_expires_at=_int(r.get("exp")), destination_class=r.get("cls", ""),
            destination_country=r.get("dc", ""), destination_type=r.get("dt", ""),
            month=r.get("mon", ""), user_id=r.get("uid", ""), pool=r.get("pool", ""),
            rate_prefix=r.get("rp", ""), direction=r.get("dir"), to_number=r.get("to"),
            from_number=r.get("from", ""), started_at=_when(r.get("sa")),
            authorized_at=_when(r.get("t0")), granted_seconds_total=_int(r.get("h")),
            grant_expires_at=_int(r.get("gexp")), grants_json=r.get("grants") or "[]",
            duration_seconds=_int(r.get("dur")), billed_domestic_pool_minutes=_int(r.get("bdp")),
            billed_international_pool_minutes=_int(r.get("bip")),
            billed_credits_micro=_int(r.get("bc")), overrun_seconds=_int(r.get("over")),
            ended_at=_when(r.get("ended")), closed_only="z" in r,
        )
