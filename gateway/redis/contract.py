"""The Redis contract: for every function of lua/, its KEYS and ARGV by name and order, the
shape of its reply, and its error statuses; the hash-field prefixes, the event types with
their fields, and every constant that Lua and Python both hold.

One source: gateway.redis.store builds every FCALL through it and decodes every reply into
its named tuple; tests/test_redis_contract.py parses the header of each lua/ file (the
``KEYS[i] name`` / ``ARGV[i] name`` / ``REPLY {OK, ...}`` / ``ERRORS ...`` lines) and the Lua
constants, and fails on any difference in names, order or count.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Generic, NamedTuple, TypeVar

Arg = str | int | bytes


class Status(enum.IntEnum):
    """First element of every function reply; lua/00_lib.lua declares the same constants."""

    OK = 0
    TENANT_NOT_FOUND = -1
    TENANT_SETTINGS_CHANGED = -2
    CALL_NOT_FOUND = -3
    CALL_ENDED = -4
    NUMBER_CONFLICT = -5
    IDEMPOTENCY_CONFLICT = -6
    CURRENCY_LOCKED = -7
    NOT_FOUND = -8
    BALANCE_LIMIT = -9
    MONTH_NEEDED = -10
    LATE = -11
    USED_BACKWARDS = -12  # extend: used_seconds below those already reported; detail: them


# The payload that follows the status of an error reply, by name (the others have none).
ERROR_DETAIL: Mapping[Status, tuple[str, ...]] = {
    Status.TENANT_SETTINGS_CHANGED: ("currency", "timezone"),  # the tenant's, now
    Status.NUMBER_CONFLICT: ("number",),
    Status.MONTH_NEEDED: ("month",),  # YYYYMM to call again with
    Status.USED_BACKWARDS: ("reported_seconds",),
}

# -- constants both sides hold -------------------------------------------------------------

# How long a month hash outlives its first write: long after its month ends (the spec's
# "expires after the month"), so a write need not renew it. 400 days.
MONTH_TTL_SECONDS = 400 * 86400
# Audit entries kept per tenant in Redis; older ones live only in the ledger.
AUDIT_MAX_ENTRIES = 1000
# Alert thresholds of a pool without its own setting (percent of capacity).
POOL_THRESHOLDS_DEFAULT = (80, 100)

# The version of the Lua library (lua/00_lib.lua): a process does not replace a library of a
# higher version with its own (gateway.redis.store.Store.load_functions). 2: an open call is
# one hash field (docs/decisions/0008-one-field-open-call.md); 3: the call path's ARGV
# packed (Function.packed), which a library of version 2 cannot read; libraries before 2
# declare none.
LIBRARY_VERSION = 3

# The Lua library's declaration of each (``local NAME = value`` in a library file of lua/):
# tests/test_redis_contract.py compares the literals with these values.
LUA_CONSTANTS: Mapping[str, int | tuple[int, ...]] = {
    "MONTH_TTL_SECONDS": MONTH_TTL_SECONDS,
    "AUDIT_MAX_ENTRIES": AUDIT_MAX_ENTRIES,
    "POOL_THRESHOLDS_DEFAULT": POOL_THRESHOLDS_DEFAULT,
    "LIBRARY_VERSION": LIBRARY_VERSION,
    **{s.name: s.value for s in Status},
}

# -- hash fields ---------------------------------------------------------------------------

# Fields of the pools hash {p}:t:T:pools, by (country, plan) "CC:PLAN".
POOL_LICENCES = "lic:"  # licences assigned
POOL_DOMESTIC_MINUTES = "dmin:"  # domestic minutes per licence
POOL_INTERNATIONAL_MINUTES = "imin:"  # international minutes per licence
# Fields of a month hash {p}:t:T:m:YYYYMM: by pool "CC:PLAN:KIND" (minutes) ...
MONTH_POOL_USED = "u:"
MONTH_POOL_RESERVED = "r:"
# ... and by user (micro-units of credits)
MONTH_USER_SPENT = "s:"
MONTH_USER_RESERVED = "sr:"
MONTH_SPEND_LIMIT_ANNOUNCED = "sla:"  # user's spend limit announced this month

# Every prefix a field name is built from in lua/ ('lic:' .. pool); the test checks that the
# library builds field names from these and no other.
FIELD_PREFIXES = (POOL_LICENCES, POOL_DOMESTIC_MINUTES, POOL_INTERNATIONAL_MINUTES,
                  MONTH_POOL_USED, MONTH_POOL_RESERVED, MONTH_USER_SPENT, MONTH_USER_RESERVED,
                  MONTH_SPEND_LIMIT_ANNOUNCED)
# The month-hash prefixes of counters (a field at zero may be deleted).
MONTH_COUNTER_PREFIXES = (MONTH_POOL_USED, MONTH_POOL_RESERVED, MONTH_USER_SPENT,
                          MONTH_USER_RESERVED)


def pool_id(country: str, plan: str) -> str:
    """The (country, plan) part of a pools-hash field: "CC:PLAN"."""
    return f"{country}:{plan}"


# -- event types ---------------------------------------------------------------------------

# The data fields of each event type on the partition, deck and token streams (besides
# type, tenant and ts, which every event carries), as lua/ writes them. The call events'
# "call" is the call's record (gateway.redis.keys.CALL_PACKED_FIELDS and its own fields).
_ADMIN = ("actor",)
EVENT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "tenant.created": ("name", "currency", "timezone", "charge_inbound_calls",
                       "max_concurrent_calls", "authorizations_per_second", *_ADMIN),
    "tenant.updated": ("name", "currency", "timezone", "charge_inbound_calls",
                       "max_concurrent_calls", "authorizations_per_second", *_ADMIN),
    "user.created": ("user", "record", *_ADMIN),
    "user.updated": ("user", "record", *_ADMIN),
    "user.deleted": ("user", *_ADMIN),
    "alerts.updated": ("pool_thresholds_percent", "low_balance_micro",
                       "auto_recharge_below_micro", "auto_recharge_amount_micro", *_ADMIN),
    "credits.topped_up": ("idempotency_key", "amount_micro", "balance_micro",
                          "recharge_settled", *_ADMIN),
    "tollfree.added": ("number", *_ADMIN),
    "tollfree.removed": ("number", *_ADMIN),
    "webhook.created": ("webhook_id", "webhook", *_ADMIN),
    "webhook.updated": ("webhook_id", "webhook", *_ADMIN),
    "webhook.deleted": ("webhook_id", *_ADMIN),
    "deck.replaced": ("currency", "rows", "bytes", "version", "csv", *_ADMIN),
    "token.created": ("token_id", "record"),
    "token.revoked": ("token_id", *_ADMIN),
    "call.allowed": ("call_id", "call", "i", "grants"),
    "call.denied": ("call_id", "direction", "user", "to", "from", "reason", "source",
                    "granted_seconds", "class", "country", "number_type", "month",
                    "started_at", "pool", "pool_reserved_minutes", "credits_reserved_micro",
                    "rate_prefix", "counted"),
    # "set": the record's fields the extension wrote, flat (with "grants" beside it as JSON
    # when written out, as call.allowed's): the ledger lays them over call.allowed's record.
    "call.extended": ("call_id", "used_seconds", "reason", "source", "granted_seconds",
                      "pool_reserved_minutes", "credits_reserved_micro", "set", "grants"),
    "call.extension_denied": ("call_id", "used_seconds", "reason", "source",
                              "granted_seconds", "pool_reserved_minutes",
                              "credits_reserved_micro"),
    "call.ended": ("call_id", "duration_seconds", "billed_seconds", "overrun_seconds", "pool",
                   "pool_minutes", "credits_micro", "month", "user", "rate_prefix"),
    "call.expired": ("call_id", "duration_seconds", "billed_seconds", "overrun_seconds",
                     "pool", "pool_minutes", "credits_micro", "month", "user", "rate_prefix"),
    "call.voided": ("call_id", "reason", "attempt", "pool", "pool_reserved_minutes",
                    "credits_reserved_micro", "month", "user"),
    "pool.threshold_crossed": ("country", "plan", "kind", "month", "threshold_percent",
                               "used_minutes", "reserved_minutes", "capacity_minutes"),
    "credits.low_balance": ("available_micro", "threshold_micro"),
    "credits.recharge_requested": ("amount_micro", "idempotency_key", "available_micro",
                                   "below_micro"),
    "spend_limit.reached": ("user_id", "month", "limit_micro"),
}

# Fields an event of that type may lack: call.allowed carries the record's packed fields
# ("i") and grants beside "call" as JSON (the usual path) or inside "call" (an id that
# needs escaping: the cjson path); credits.topped_up names the recharge it settled, if any.
EVENT_OPTIONAL_FIELDS: Mapping[str, tuple[str, ...]] = {
    "call.allowed": ("i", "grants"),
    "call.extended": ("grants",),
    "credits.topped_up": ("recharge_settled",),
}

# -- functions -----------------------------------------------------------------------------

R = TypeVar("R", bound=tuple[Any, ...])
_Getter = Callable[[Mapping[str, Any]], list[Any]]


class ContractError(TypeError):
    """A call built with names the function's contract does not declare."""


@dataclass(frozen=True)
class Function(Generic[R]):
    """One registered function: its KEYS and ARGV by name in order, and its reply.

    ``keys_rest`` / ``argv_rest``: the name of a repeated tail (``KEYS[4..]``), "" if none.
    ``packed``: ARGV goes as one argument, every value followed by a NUL byte (pack_argv;
    the header's PACKED line, lua/00_lib.lua args).
    ``reply``: the named tuple of an OK reply, status first. ``errors``: the statuses it
    may answer besides OK."""

    name: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    reply: type[R]
    errors: tuple[Status, ...] = ()
    keys_rest: str = ""
    argv_rest: str = ""
    flags: tuple[str, ...] = field(default=())  # registered flags, e.g. no-writes
    packed: bool = False
    _n_reply: int = field(init=False, repr=False, compare=False)
    _get_keys: _Getter = field(init=False, repr=False, compare=False)
    _get_argv: _Getter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Precomputed readers: the call path builds three FCALLs a call with them.
        object.__setattr__(self, "_n_reply", len(self.reply._fields))  # type: ignore[attr-defined]
        object.__setattr__(self, "_get_keys", _getter(self.keys))
        object.__setattr__(self, "_get_argv", _getter(self.argv))

    def keys_of(self, rest: Sequence[str] = (), /, **named: str) -> list[str]:
        """KEYS in the function's order, from every key by its contract name."""
        return self._ordered("KEYS", self.keys, self._get_keys, self.keys_rest, rest, named)

    def argv_of(self, rest: Sequence[Arg] = (), /, **named: Arg) -> list[Arg]:
        """ARGV in the function's order, from every argument by its contract name (packed,
        for a packed function)."""
        argv = self._ordered("ARGV", self.argv, self._get_argv, self.argv_rest, rest, named)
        if not self.packed or bytes in map(type, argv):  # bytes: sent as they are
            return argv
        return pack_argv(argv)

    def _ordered(self, what: str, names: tuple[str, ...], get: _Getter,
                 rest_allowed: str, rest: Sequence[Any], named: Mapping[str, Any]) -> list[Any]:
        if len(named) != len(names) or (rest and not rest_allowed):
            raise self._mismatch(what, names, named)
        try:
            out = get(named)
        except KeyError:
            raise self._mismatch(what, names, named) from None
        if rest:
            out.extend(rest)
        return out

    def _mismatch(self, what: str, names: tuple[str, ...],
                  named: Mapping[str, Any]) -> ContractError:
        return ContractError(f"{self.name} {what}: expected {names}, got {tuple(named)}")

    def decode(self, reply: Sequence[Any]) -> R:
        """An OK reply as the named tuple; fields Lua left nil at the end are None."""
        n = self._n_reply
        if len(reply) != n:
            reply = [*reply[:n], *[None] * (n - len(reply))]
        return self.reply._make(reply)  # type: ignore[attr-defined, no-any-return]


def pack_argv(values: Sequence[str | int]) -> list[Arg]:
    """The ARGV of a packed function: one argument, every value (text or integer) followed
    by a NUL byte, which Redis reads for less than one argument each (BENCHMARKS.md). When a
    value holds a NUL, the values go as they are, one argument each, which the function
    reads too (lua/00_lib.lua args)."""
    text = ("%s\0" * len(values)) % tuple(values)  # half the time of a join of str()s
    if text.count("\0") != len(values):
        return list(values)
    return [text]


def _getter(names: tuple[str, ...]) -> _Getter:
    """The values of ``names`` in a mapping, in order, as a new list."""
    if len(names) == 1:
        name = names[0]
        return lambda named: [named[name]]
    if not names:
        return lambda named: []
    get = itemgetter(*names)  # in C: one call for every name
    return lambda named: [*get(named)]


# Reply shapes (an OK reply, status first).

class Done(NamedTuple):
    status: int


class Created(NamedTuple):
    status: int
    created: int  # 1 | 0


class Versioned(NamedTuple):
    status: int
    version: int


class TopupReply(NamedTuple):
    status: int
    balance_micro: str  # decimal text: exact beyond 2^53
    replayed: int


class CreditsReply(NamedTuple):
    status: int
    currency: str
    balance_micro: str | None
    reserved_micro: str | None


class PoolsReply(NamedTuple):
    status: int
    pools: list[str]  # the pools hash, flat field / value
    month: list[str]  # the month hash, flat


class SeenReply(NamedTuple):
    status: int
    updated: int  # ids whose last use moved


class EnqueueReply(NamedTuple):
    status: int
    created: int  # deliveries created


class AuthorizeReply(NamedTuple):
    status: int
    replayed: int
    decision: str
    reason: str
    source: str | None
    granted_seconds: int
    grant_expires_at: int
    destination_class: str | None
    destination_country: str | None
    destination_type: str | None


class ExtendReply(NamedTuple):
    status: int
    decision: str
    reason: str
    source: str | None
    granted_seconds: int
    grant_expires_at: int
    destination_class: str | None
    destination_country: str | None
    destination_type: str | None


class EndReply(NamedTuple):
    status: int
    state: str
    duration_seconds: int
    domestic_pool_minutes: int
    international_pool_minutes: int
    credits_micro: int
    overrun_seconds: int
    replayed: int


class VoidReply(NamedTuple):
    status: int
    voided: int  # 1 | 0


S = Status
_ADMIN_KEYS = ("events", "audit")
_USER_KEYS = ("tenant", "users", "pools", "numbers", "tollfree", *_ADMIN_KEYS)
_MONTHS = ("month_1", "month_2", "month_3")
_LIFECYCLE_KEYS = ("tenant", "call", "pools", *_MONTHS, "active", "events", "user_active")

TENANT_PUT = Function(
    "tenant_put", ("tenant", *_ADMIN_KEYS),
    ("tenant_id", "now", "name", "currency", "timezone", "charge_inbound_calls",
     "max_concurrent_calls", "actor", "authorizations_per_second"),
    Created, (S.CURRENCY_LOCKED,))
USER_PUT = Function(
    "user_put", _USER_KEYS, ("tenant_id", "user_id", "now", "record", "actor"), Created,
    (S.TENANT_NOT_FOUND, S.NUMBER_CONFLICT))
USER_DELETE = Function(
    "user_delete", _USER_KEYS, ("tenant_id", "user_id", "now", "actor"), Done,
    (S.TENANT_NOT_FOUND, S.NOT_FOUND))
ALERTS_PUT = Function(
    "alerts_put", ("tenant", "pools", *_ADMIN_KEYS),
    ("tenant_id", "now", "pool_thresholds", "low_balance_micro", "recharge_below_micro",
     "recharge_amount_micro", "actor"),
    Done, (S.TENANT_NOT_FOUND,))
TOPUP = Function(
    "topup", ("tenant", "topups", *_ADMIN_KEYS),
    ("tenant_id", "idempotency_key", "amount_micro", "now", "actor"), TopupReply,
    (S.TENANT_NOT_FOUND, S.IDEMPOTENCY_CONFLICT, S.BALANCE_LIMIT))
TOLLFREE_PUT = Function(
    "tollfree_put", ("tenant", "tollfree", "numbers", *_ADMIN_KEYS),
    ("tenant_id", "number", "now", "actor"), Created,
    (S.TENANT_NOT_FOUND, S.NUMBER_CONFLICT))
TOLLFREE_DELETE = Function(
    "tollfree_delete", ("tenant", "tollfree", "numbers", *_ADMIN_KEYS),
    ("tenant_id", "number", "now", "actor"), Done, (S.TENANT_NOT_FOUND, S.NOT_FOUND))
AUTHORIZE = Function(
    "authorize",
    ("tenant", "users", "call", "pools", "month", "numbers", "tollfree", "user_active",
     "active", "events", "rate", "notify"),
    ("tenant_id", "call_id", "now", "month", "currency", "timezone", "direction", "user_id",
     "to", "from_", "dest_country", "dest_type", "dest_zone", "emergency_regions", "predeny",
     "credits_only", "rate_prefix", "rate_micro_per_minute", "connection_fee_micro",
     "initial_increment", "subsequent_increment", "grant_max_seconds", "retention_seconds",
     "started_at", "deadline_us", "attempt", "default_authorizations_per_second"),
    AuthorizeReply, (S.TENANT_NOT_FOUND, S.TENANT_SETTINGS_CHANGED, S.LATE), packed=True)
EXTEND = Function(
    "extend", (*_LIFECYCLE_KEYS, "notify"),
    ("tenant_id", "call_id", "now", "used_seconds", *_MONTHS, "grant_max_seconds",
     "deadline_us"),
    ExtendReply,
    (S.TENANT_NOT_FOUND, S.CALL_NOT_FOUND, S.CALL_ENDED, S.LATE, S.USED_BACKWARDS),
    packed=True)
END_CALL = Function(
    "end_call", _LIFECYCLE_KEYS,
    ("tenant_id", "call_id", "now", "duration_seconds", *_MONTHS, "retention_seconds", "how",
     "grace_seconds"),
    EndReply, (S.TENANT_NOT_FOUND, S.CALL_NOT_FOUND, S.CALL_ENDED, S.MONTH_NEEDED),
    packed=True)
VOID_CALL = Function(
    "void_call", _LIFECYCLE_KEYS,
    ("tenant_id", "call_id", "now", "attempt", *_MONTHS, "retention_seconds"),
    VoidReply, (S.MONTH_NEEDED,))
POOLS_GET = Function(
    "pools_get", ("tenant", "pools", "month"), (), PoolsReply, (S.TENANT_NOT_FOUND,),
    flags=("no-writes",))
CREDITS_GET = Function(
    "credits_get", ("tenant",), (), CreditsReply, (S.TENANT_NOT_FOUND,),
    flags=("no-writes",))
DECK_PUT = Function(
    "deck_put", ("deck", "version", "events", "versions", "rows"),
    ("currency", "csv", "rows", "now", "actor", "rows_json"), Versioned)
TOKEN_CREATE = Function(
    "token_create", ("tokens", "version", "events"), ("token_id", "record", "now"),
    Versioned, (S.IDEMPOTENCY_CONFLICT,))
TOKEN_REVOKE = Function(
    "token_revoke", ("tokens", "version", "used", "events"),
    ("token_id", "tenant_id", "now", "actor"), Versioned, (S.NOT_FOUND,))
TOKENS_SEEN = Function(
    "tokens_seen", ("tokens", "used"), ("now",), SeenReply, argv_rest="token_ids")
WEBHOOK_PUT = Function(
    "webhook_put", ("tenant", "webhooks", *_ADMIN_KEYS),
    ("tenant_id", "now", "webhook_id", "record", "record_redacted", "actor", "webhooks_max"),
    Created, (S.TENANT_NOT_FOUND, S.BALANCE_LIMIT))
WEBHOOK_DELETE = Function(
    "webhook_delete", ("tenant", "webhooks", *_ADMIN_KEYS, "delivery_log"),
    ("tenant_id", "now", "webhook_id", "actor"), Done, (S.TENANT_NOT_FOUND, S.NOT_FOUND))
DELIVERY_ENQUEUE = Function(
    "delivery_enqueue", ("notify", "due", "pending"),
    ("group", "entry_id", "now_ms", "event_id", "type", "body", "tenant_id", "log_max"),
    EnqueueReply, keys_rest="deliveries", argv_rest="deliveries")
DELIVERY_RESULT = Function(
    "delivery_result", ("due", "pending", "delivery"),
    ("delivery_id", "state", "attempts", "last_status", "next_ms", "retention_seconds"), Done)

FUNCTIONS: Mapping[str, Function[Any]] = {f.name: f for f in (
    TENANT_PUT, USER_PUT, USER_DELETE, ALERTS_PUT, TOPUP, TOLLFREE_PUT, TOLLFREE_DELETE,
    AUTHORIZE, EXTEND, END_CALL, VOID_CALL, POOLS_GET, CREDITS_GET, DECK_PUT, TOKEN_CREATE,
    TOKEN_REVOKE, TOKENS_SEEN, WEBHOOK_PUT, WEBHOOK_DELETE, DELIVERY_ENQUEUE,
    DELIVERY_RESULT)}
