"""The fixed words of callgate, each defined once: roles, dial-out policies, decisions, reasons
with their SIP codes, sources and event types.

api.md fixes the strings (they are on the wire, in the configuration and in Redis); the
Python code, the OpenAPI document and the tests all take them from here. Each is a
``StrEnum``: a member *is* its string (``Role.SWITCH == "switch"``), so JSON, Redis
arguments and metric labels carry exactly the value. The Lua functions write the same
strings (lua/); tests/test_vocab.py checks that both sides use the same ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class Role(StrEnum):
    """What a token may do (api.md, Conventions)."""

    SWITCH = "switch"  # call control
    ADMIN = "admin"  # tenant management and reports, for its tenants
    OPERATOR = "operator"  # everything, including rates and other tenants


class DialOut(StrEnum):
    """Where a user may call (D23); the first is the default."""

    INTERNATIONAL_AND_DOMESTIC = "international_and_domestic"
    DOMESTIC_ONLY = "domestic_only"
    NONE = "none"


class Verdict(StrEnum):
    """``decision`` of authorize and extend."""

    ALLOW = "allow"
    DENY = "deny"


class AllowReason(StrEnum):
    """``reason`` of an allow."""

    DOMESTIC_POOL = "domestic_pool"
    INTERNATIONAL_POOL = "international_pool"
    CREDITS = "credits"
    EMERGENCY = "emergency"
    TOLL_FREE = "toll_free"
    INBOUND_FREE = "inbound_free"


class DenyReason(StrEnum):
    """``reason`` of a deny; its SIP response is :data:`SIP_CODES`."""

    NO_CALLING_PLAN = "no_calling_plan"
    DIAL_OUT_POLICY = "dial_out_policy"
    DESTINATION_BLOCKED = "destination_blocked"
    INVALID_DESTINATION = "invalid_destination"
    POOL_EXHAUSTED_NO_CREDITS = "pool_exhausted_no_credits"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    CREDITS_NOT_ALLOWED = "credits_not_allowed"
    SPEND_LIMIT_REACHED = "spend_limit_reached"
    CONCURRENCY_LIMIT = "concurrency_limit"
    UNKNOWN_USER = "unknown_user"
    SERVICE_UNAVAILABLE = "service_unavailable"
    RATE_LIMITED = "rate_limited"  # the tenant's authorizations per second (rate-limits.md)


# The SIP response a switch sends for a deny (api.md: 402 money, 403 policy, plan and
# blocked destinations, 404 unknown user, 484 invalid number, 486 concurrency, 503
# service unavailable).
SIP_CODES: Final[Mapping[DenyReason, int]] = {
    DenyReason.NO_CALLING_PLAN: 403,
    DenyReason.DIAL_OUT_POLICY: 403,
    DenyReason.DESTINATION_BLOCKED: 403,
    DenyReason.INVALID_DESTINATION: 484,
    DenyReason.POOL_EXHAUSTED_NO_CREDITS: 402,
    DenyReason.INSUFFICIENT_CREDITS: 402,
    DenyReason.CREDITS_NOT_ALLOWED: 403,
    DenyReason.SPEND_LIMIT_REACHED: 402,
    DenyReason.CONCURRENCY_LIMIT: 486,
    DenyReason.UNKNOWN_USER: 404,
    DenyReason.SERVICE_UNAVAILABLE: 503,
    DenyReason.RATE_LIMITED: 503,
}

# Every reason, allows first, in the order of api.md (the OpenAPI enum).
REASONS: Final[tuple[str, ...]] = (*AllowReason, *DenyReason)


class Source(StrEnum):
    """What pays for an allowed call (``source``; null on deny)."""

    DOMESTIC_POOL = "domestic_pool"
    INTERNATIONAL_POOL = "international_pool"
    CREDITS = "credits"
    FREE = "free"


class EventType(StrEnum):
    """``type`` of the events the Redis functions append to the partition and notify
    streams (the ledger's persister and the notifier read them)."""

    TENANT_CREATED = "tenant.created"
    TENANT_UPDATED = "tenant.updated"
    USER_CREATED = "user.created"
    USER_UPDATED = "user.updated"
    USER_DELETED = "user.deleted"
    CREDITS_TOPPED_UP = "credits.topped_up"
    TOLLFREE_ADDED = "tollfree.added"
    TOLLFREE_REMOVED = "tollfree.removed"
    ALERTS_UPDATED = "alerts.updated"
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_UPDATED = "webhook.updated"
    WEBHOOK_DELETED = "webhook.deleted"
    CALL_ALLOWED = "call.allowed"
    CALL_DENIED = "call.denied"
    CALL_EXTENDED = "call.extended"
    CALL_EXTENSION_DENIED = "call.extension_denied"
    CALL_ENDED = "call.ended"
    CALL_EXPIRED = "call.expired"
    CALL_VOIDED = "call.voided"
    DECK_REPLACED = "deck.replaced"
    TOKEN_CREATED = "token.created"
    TOKEN_REVOKED = "token.revoked"
    # Alerts (notify streams), delivered as webhooks.
    POOL_THRESHOLD_CROSSED = "pool.threshold_crossed"
    CREDITS_LOW_BALANCE = "credits.low_balance"
    CREDITS_RECHARGE_REQUESTED = "credits.recharge_requested"
    SPEND_LIMIT_REACHED = "spend_limit.reached"


# The events a webhook may subscribe to, in the order of api.md (the default: all).
ALERT_EVENTS: Final[tuple[EventType, ...]] = (
    EventType.POOL_THRESHOLD_CROSSED, EventType.CREDITS_LOW_BALANCE,
    EventType.CREDITS_RECHARGE_REQUESTED, EventType.SPEND_LIMIT_REACHED)
