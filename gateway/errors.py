"""Errors shared by every layer: the domain's refusals, and the store's own failure.

Each domain error below is answered by the API as one RFC 9457 problem document, declared
once in gateway.http.problems (status, title, type, detail); the rules raise them, the HTTP
layer (aiohttp routes and the fast path alike) maps them. ``StoreUnavailable`` is how the
Redis layer reports that Redis did not answer, whatever the transport's own exceptions:
nothing above gateway.redis sees those.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid input: the field (JSON pointer-like dotted path) and what is wrong with it."""

    field: str
    message: str


class ValidationError(Exception):
    """Bad input: answered as 400 with one entry per bad field; nothing was changed."""

    def __init__(self, errors: list[FieldError] | FieldError, status: int = 400) -> None:
        self.errors = errors if isinstance(errors, list) else [errors]
        self.status = status
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in self.errors))

    @classmethod
    def one(cls, field: str, message: str, status: int = 400) -> ValidationError:
        return cls([FieldError(field, message)], status)


class ConfigError(Exception):
    """Invalid configuration, detected at start-up; the message names the bad key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"configuration key {key!r}: {message}")


class NewerLibrary(ConfigError):
    """Redis holds a function library of a higher version than this process's: a newer
    gateway runs against it, whose data this version could not read (docs/operations.md,
    "Upgrading"). Raised at start-up instead of replacing that library."""

    def __init__(self, held: int, ours: int) -> None:
        Exception.__init__(
            self, f"Redis holds callgate's function library version {held}, newer than this "
            f"version's {ours}: a newer gateway runs against it; upgrade this one rather than "
            "load the older library over it")
        self.key = "redis_url"
        self.held, self.ours = held, ours


# -- refusals of the domain (each one problem document) -----------------------------------


class TenantNotFound(Exception):
    """No such tenant, or not one the token may act for: answered 404 alike (api.md)."""


class CallNotFound(Exception):
    """No such call of the tenant (neither in Redis nor in the ledger): 404."""


class NotFound(Exception):
    """No such user, toll-free number or other resource of the tenant: 404."""


class WebhookNotFound(Exception):
    """No such webhook of the tenant: 404."""


class TokenNotFound(Exception):
    """No such token (or none the caller manages, which answers alike): 404."""


class DeckNotFound(Exception):
    """No rate deck for the currency (the message says which): 404."""


class RateNotFound(Exception):
    """No row of the deck rates the number (the message says which): 404."""


class CallEnded(Exception):
    """The call has already ended: an extend is refused (409)."""


class Conflict(Exception):
    """409: the request contradicts the current state; the message says how."""


class RoleNotAllowed(Exception):
    """A tenant admin asked for a token of another role than ``switch``: 403. The message
    is the role asked for."""


class ServiceUnavailable(Exception):
    """Redis did not answer, or the worker shed the request: 503, retry."""


class LedgerUnavailable(Exception):
    """The ledger database is down or refusing: 503, retry."""


# -- the store's failure --------------------------------------------------------------------


class StoreUnavailable(Exception):
    """Redis did not answer an operation: one exception, in three kinds, whatever the
    transport raised (the original is the ``__cause__``).

    ``kind`` labels callgate_redis_errors_total. ``may_have_run``: whether the command may
    have run in Redis although no reply came back, which decides whether an authorize
    answered deny must be voided (gateway.rules.voids)."""

    kind = "unavailable"
    may_have_run = False


class StoreTimeout(StoreUnavailable, TimeoutError):
    """The deadline passed with the command written: it may have run, its reply lost."""

    kind = "timeout"
    may_have_run = True


class StoreDisconnected(StoreUnavailable):
    """Redis could not be reached, or the connection broke. ``sent``: with the command in
    flight, so it may have run; False when it was never written."""

    def __init__(self, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.may_have_run = sent


class StoreErrorReply(StoreUnavailable):
    """Redis answered an error (LOADING, MASTERDOWN, OOM, or a fault of a function): the
    command did not run, or failed in a way a void could not mend. ``reply``: its text."""

    kind = "error_reply"

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply
