"""The store's refusals as domain errors: one translation of a function's non-OK status.

A Redis function refuses by status (gateway.redis.store.Status, lua/00_lib.lua); the
services raise the domain error it stands for (gateway.errors), which the API answers
with its problem document (gateway.http.problems).
"""

from __future__ import annotations

from gateway.errors import (
    CallEnded,
    CallNotFound,
    Conflict,
    NotFound,
    TenantNotFound,
    ValidationError,
)
from gateway.redis.store import Status, StoreError
from gateway.rules.money import BALANCE_MAX_MICRO, format_money


def domain_error(exc: StoreError) -> Exception:
    """The domain error for a refusal; ``exc`` itself for a status that is not one (a
    status the caller handles, or a fault)."""
    status = exc.status
    if status is Status.TENANT_NOT_FOUND:
        return TenantNotFound()
    if status is Status.CALL_NOT_FOUND:
        return CallNotFound()
    if status is Status.CALL_ENDED:
        return CallEnded()
    if status is Status.NOT_FOUND:
        return NotFound()
    if status is Status.USED_BACKWARDS:  # extend only: nothing was changed
        reported = int(exc.named["reported_seconds"])
        return ValidationError.one(
            "used_seconds", f"must not be lower than the {reported} s already "
                            "reported: time only moves forward")
    if status is Status.NUMBER_CONFLICT:
        return Conflict(f"number {exc.named['number']} already belongs to another user or is a "
                        "toll-free number of the tenant")
    if status is Status.IDEMPOTENCY_CONFLICT:
        return Conflict("idempotency_key was already used with a different amount")
    if status is Status.BALANCE_LIMIT:
        return ValidationError.one(
            "amount", f"the balance may not exceed {format_money(BALANCE_MAX_MICRO)}")
    if status is Status.CURRENCY_LOCKED:
        return Conflict("currency cannot change while the wallet holds or reserves credits")
    return exc
