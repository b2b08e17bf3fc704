"""Call control: what Python decides before the one Redis round trip, and the answers.

Python computes everything Redis does not hold (destination country and type, emergency
status, blocked ranges, the rate, the month) and hands it to one FCALL, which applies the
user-dependent rules atomically (lua/50_authorize.lua). Emergency calls are recognised here,
before Redis, so they are allowed even when Redis is down (D11).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import secrets
import time
from typing import Any, NamedTuple

import orjson

from gateway import metrics, vocab
from gateway.config import Settings
from gateway.errors import (
    CallNotFound,
    ServiceUnavailable,
    StoreErrorReply,
    StoreUnavailable,
    TenantNotFound,
)
from gateway.redis.callrecord import CallRecord
from gateway.redis.store import AuthorizeArgs, Bill, Decision, Status, Store, StoreError
from gateway.rules.clock import Clock, candidate_months, month_of, rfc3339
from gateway.rules.decks import Decks
from gateway.rules.money import format_money
from gateway.rules.numbers import Destination, classify
from gateway.rules.rating import Rate, RateDeck
from gateway.rules.refusals import domain_error
from gateway.rules.voids import Voider
from gateway.vocab import AllowReason, DenyReason, Source, Verdict

log = logging.getLogger(__name__)

# gateway.vocab.SIP_CODES keyed by plain strings: looked up with the reason Redis answered.
SIP_CODES: dict[str, int] = {reason.value: code for reason, code in vocab.SIP_CODES.items()}

# The fresh allow the current request's authorize made (tenant, call id, attempt), until
# its answer is written: a request task that finds its client gone calls
# CallService.answer_lost, which voids it. Per task: a context variable.
_FRESH_ALLOW: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "callgate_fresh_allow", default=None)


class AuthorizeRequest(NamedTuple):
    call_id: str
    direction: str
    user_id: str | None
    to: str
    from_: str | None
    started_at: int | None


_NO_RATE = Rate("", "", "outbound", 0, 0, 60, 60)
# Words of gateway.vocab as plain strings, for the call path's comparisons and arguments.
_ALLOW = Verdict.ALLOW.value
_INVALID_DESTINATION = DenyReason.INVALID_DESTINATION.value
_DESTINATION_BLOCKED = DenyReason.DESTINATION_BLOCKED.value
# An extension Redis could not decide (immutable: one for all).
_EXTEND_UNAVAILABLE = Decision(Verdict.DENY.value, DenyReason.SERVICE_UNAVAILABLE.value, "", 0,
                               0, "", "", "")


class CallService:
    def __init__(self, settings: Settings, store: Store, clock: Clock,
                 decks: Decks | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        # Rate decks by currency, replaced at run time when a new deck is uploaded
        # (gateway.rules.decks); the configuration's decks until then.
        self.decks = decks if decks is not None else Decks(settings.rate_decks)
        self._timeout_s = settings.redis_timeout_ms / 1000
        # Redis refuses a call-control function it starts later than this after the request
        # began (wall clock): a quarter of the deadline is left for the reply to come back,
        # so that late work is refused rather than done and then voided.
        self._redis_budget_ms = max(1, settings.redis_timeout_ms * 3 // 4)
        # Call-control requests in flight (waiting for Redis); past max_inflight_calls new
        # ones are shed at once (architecture.md, "Answers that stay true under stress").
        self.inflight = 0
        self.max_inflight = settings.max_inflight_calls
        self.voider = Voider(settings, store, clock)
        self._attempt_prefix = f"{os.getpid():x}.{secrets.token_hex(3)}."
        self._attempts = itertools.count(1)
        # Tenant currency and time zone, as last seen; authorize checks them in Lua and
        # answers the real ones when they changed, so a stale entry costs one retry.
        self._tenant_cache: dict[str, tuple[str, str]] = {}
        self._zone_lists: dict[str, str] = {}
        self._dearest_rates: dict[tuple[int, str], Rate] = {}

    # -- authorize ------------------------------------------------------------------------

    def _zone_list(self, country: str) -> str:
        zl = self._zone_lists.get(country)
        if zl is None:
            zl = "," + ",".join(sorted(self.settings.zone_of(country))) + ","
            self._zone_lists[country] = zl
        return zl

    def _predeny(self, dest: Destination) -> tuple[str, bool]:
        """(deny reason decided without the user, credits-only) for an outbound destination."""
        if dest.e164 is None:
            return _INVALID_DESTINATION, False
        digits = dest.e164[1:]
        if digits.startswith(self.settings.blocked_prefixes):  # a tuple: one C call
            return _DESTINATION_BLOCKED, False
        if dest.number_type in ("premium_rate", "shared_cost"):
            rules = self.settings.countries.get(dest.country or "")
            if rules is not None and rules.allows(dest.number_type, digits):
                return "", True
            return _DESTINATION_BLOCKED, False
        return "", False

    def _rate(self, currency: str, number: str | None, kind: str) -> Rate:
        deck = self.decks.current.get(currency)
        if deck is None:
            return _NO_RATE
        if number is None:
            # A caller we cannot place (anonymous, withheld): the dearest toll-free inbound
            # rate, so the tenant is never charged less than the call may cost.
            return self._dearest(deck, kind) if kind == "toll_free_inbound" else _NO_RATE
        return deck.lookup(number, kind) or _NO_RATE

    def _dearest(self, deck: RateDeck, kind: str) -> Rate:
        key = (id(deck), kind)
        rate = self._dearest_rates.get(key)
        if rate is None:
            rates = [r for r in deck.rows() if r.kind == kind]
            rate = max(rates, key=lambda r: (r.rate_per_minute_micro, r.connection_fee_micro),
                       default=_NO_RATE)
            self._dearest_rates[key] = rate
        return rate

    def _redis_deadline_us(self) -> int:
        """When Redis must refuse the function it has not started (wall clock, microseconds
        since the epoch: lua/00_lib.lua past_deadline)."""
        return time.time_ns() // 1000 + self._redis_budget_ms * 1000

    def _args(
        self, tenant_id: str, req: AuthorizeRequest, dest: Destination, now: int,
        currency: str, tz: str, attempt: str,
    ) -> AuthorizeArgs:
        started = req.started_at if req.started_at is not None else now
        predeny, credits_only = "", False
        to = dest.e164 or req.to
        if req.direction == "outbound":
            predeny, credits_only = self._predeny(dest)
            rate = self._rate(currency, dest.e164, "outbound")
        else:
            origin = classify(req.from_ or "").e164
            kind = "toll_free_inbound" if dest.number_type == "toll_free" else "outbound"
            rate = self._rate(currency, origin, kind)
        return AuthorizeArgs(
            tenant_id=tenant_id, call_id=req.call_id, now=now, month=month_of(started, tz),
            currency=currency, timezone=tz, direction=req.direction,
            user_id=req.user_id or "", to=to, from_=req.from_ or "",
            dest_country=dest.country or "", dest_type=dest.number_type,
            dest_zone=self._zone_list(dest.country) if dest.country else "",
            emergency_regions=(
                "," + ",".join(sorted(dest.emergency_regions)) + ","
                if dest.emergency_regions and req.direction == "outbound" else ""
            ),
            predeny=predeny, credits_only=credits_only, rate_prefix=rate.prefix,
            rate_micro_per_minute=rate.rate_per_minute_micro,
            connection_fee_micro=rate.connection_fee_micro,
            initial_increment=rate.initial_increment_seconds,
            subsequent_increment=rate.subsequent_increment_seconds,
            grant_max_seconds=self.settings.grant_seconds,
            retention_seconds=self.settings.call_retention_seconds, started_at=started,
            deadline_us=self._redis_deadline_us(), attempt=attempt,
            default_authorizations_per_second=self.settings.tenant_authorizations_per_second,
        )

    async def authorize(self, tenant_id: str, req: AuthorizeRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        now = int(self.clock.now())
        dest = classify(req.to)
        emergency = req.direction == "outbound" and bool(dest.emergency_regions)
        if self.inflight >= self.max_inflight:
            metrics.count_shed("authorize")
            decision = self._without_redis(dest, emergency, now)
        else:
            self.inflight += 1
            try:
                decision = await self._authorize(tenant_id, req, dest, emergency, now)
            finally:
                self.inflight -= 1
        if not decision.replayed:
            metrics.count_decision(decision.decision, decision.reason, decision.source)
        metrics.observe_request("authorize", time.perf_counter() - t0)
        return decision_body(req.call_id, decision)

    async def _authorize(self, tenant_id: str, req: AuthorizeRequest, dest: Destination,
                         emergency: bool, now: int) -> Decision:
        currency, tz = self._tenant_cache.get(
            tenant_id, (self.settings.default_currency, self.settings.default_timezone)
        )
        attempt = self._attempt_prefix + str(next(self._attempts))
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            try:
                decision = await self.store.authorize(
                    self._args(tenant_id, req, dest, now, currency, tz, attempt), deadline
                )
            except StoreError as exc:
                if exc.status is not Status.TENANT_SETTINGS_CHANGED:
                    raise
                currency, tz = str(exc.named["currency"]), str(exc.named["timezone"])
                self._tenant_cache[tenant_id] = (currency, tz)
                decision = await self.store.authorize(
                    self._args(tenant_id, req, dest, now, currency, tz, attempt), deadline
                )
        except StoreError as exc:
            if exc.status is Status.TENANT_NOT_FOUND:
                self._tenant_cache.pop(tenant_id, None)
                raise TenantNotFound(tenant_id) from exc
            # LATE (Redis started it past our deadline: nothing done), or the tenant's
            # settings changed again between our two attempts: no answer.
            _log_failure("authorize", tenant_id, req.call_id, exc)
            return self._without_redis(dest, emergency, now)
        except StoreUnavailable as exc:
            # The one round trip failed: deny / service_unavailable (or, for an emergency
            # call, an allow), never a hang, never a 500.
            _log_failure("authorize", tenant_id, req.call_id, exc)
            metrics.count_redis_failure(exc)
            if not emergency and exc.may_have_run:
                # Told deny; whatever the function did must be undone (gateway.rules.voids).
                self.voider.add(tenant_id, req.call_id, attempt)
            return self._without_redis(dest, emergency, now)
        if len(self._tenant_cache) > 100_000:
            self._tenant_cache.clear()
        self._tenant_cache[tenant_id] = (currency, tz)
        if decision.decision == _ALLOW and not decision.replayed and not emergency:
            _FRESH_ALLOW.set((tenant_id, req.call_id, attempt))
        return decision

    @staticmethod
    def new_request() -> None:
        """A new authorize request begins: nothing of an earlier one is this one's."""
        _FRESH_ALLOW.set(None)

    def answer_lost(self) -> None:
        """The answer of this request's authorize could not be written (the client is
        gone): a fresh allow it made is voided, as for a reply that came too late. A
        replayed allow is left alone: an earlier attempt may have delivered it."""
        fresh = _FRESH_ALLOW.get()
        if fresh is not None:
            _FRESH_ALLOW.set(None)
            self.voider.add(*fresh)

    def _without_redis(self, dest: Destination, emergency: bool, now: int) -> Decision:
        """The answer when Redis could not decide: emergency calls go through (D11)."""
        if emergency:
            grant = self.settings.grant_seconds
            return Decision(Verdict.ALLOW, AllowReason.EMERGENCY, Source.FREE, grant,
                            now + grant, "emergency", "", "emergency")
        return Decision(Verdict.DENY, DenyReason.SERVICE_UNAVAILABLE, "", 0, now, "",
                        dest.country or "", dest.number_type)

    # -- extend, end, get -------------------------------------------------------------------

    async def extend(self, tenant_id: str, call_id: str, used_seconds: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        now = int(self.clock.now())
        months = candidate_months(now, self.settings.clock_skew_seconds)
        unavailable = _EXTEND_UNAVAILABLE
        if self.inflight >= self.max_inflight:
            metrics.count_shed("extend")
            decision = unavailable
        else:
            self.inflight += 1
            deadline = asyncio.get_running_loop().time() + self._timeout_s
            try:
                decision = await self.store.extend(
                    tenant_id, call_id, now, used_seconds, months, self.settings.grant_seconds,
                    deadline, self._redis_deadline_us(),
                )
            except StoreError as exc:
                if exc.status is not Status.LATE:
                    raise domain_error(exc) from exc
                _log_failure("extend", tenant_id, call_id, exc)
                decision = unavailable
            except StoreUnavailable as exc:
                _log_failure("extend", tenant_id, call_id, exc)
                metrics.count_redis_failure(exc)
                decision = unavailable
            finally:
                self.inflight -= 1
        metrics.count_decision(decision.decision, decision.reason, decision.source)
        metrics.observe_request("extend", time.perf_counter() - t0)
        return decision_body(call_id, decision, current_grant=True)

    async def end(self, tenant_id: str, call_id: str, duration_seconds: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        now = int(self.clock.now())
        months = candidate_months(now, self.settings.clock_skew_seconds)
        if self.inflight >= self.max_inflight:
            metrics.count_shed("end")
            raise ServiceUnavailable("overloaded: shed")
        self.inflight += 1
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            bill = await self.store.end(
                tenant_id, call_id, now, duration_seconds, months,
                self.settings.call_retention_seconds, deadline=deadline,
            )
        except StoreError as exc:
            raise domain_error(exc) from exc
        except StoreUnavailable as exc:
            _log_failure("end", tenant_id, call_id, exc)
            metrics.count_redis_failure(exc)
            # Not billed, or billed without our knowing: the switch must retry (end is
            # idempotent, a retry answers the bill); the reaper bills the call as fully used
            # if it never gets through (D33).
            raise ServiceUnavailable(str(exc)) from exc
        finally:
            self.inflight -= 1
        metrics.observe_request("end", time.perf_counter() - t0)
        return bill_body(call_id, bill)

    async def recorded_answer(self, tenant_id: str, call_id: str) -> dict[str, Any] | None:
        """The answer authorize gave this call id, if it has one (D32): what the function
        replays for a retry, read here for a retry the gateway cannot send to it (its
        started_at has meanwhile left the clock-skew window). Not on the call path."""
        try:
            async with asyncio.timeout(self._timeout_s * 10):
                rec = await self.store.call_get(tenant_id, call_id)
        except (StoreUnavailable, TimeoutError) as exc:  # TimeoutError: our own bound
            raise ServiceUnavailable(str(exc)) from exc
        if rec is None:
            return None
        r = CallRecord.from_fields(rec)
        decision = Decision(
            decision=r.decision, reason=r.reason, source=r.source,
            granted_seconds=r.first_grant_seconds, grant_expires_at=r.first_grant_expires_at,
            destination_class=r.destination_class, destination_country=r.destination_country,
            destination_type=r.destination_type, replayed=True,
        )
        return decision_body(call_id, decision)

    async def get(self, tenant_id: str, call_id: str) -> CallRecord:
        """The call as Redis holds it: open, or closed within its replay window (then only
        what replays answer: CallRecord.closed_only; the ledger has the rest)."""
        try:
            async with asyncio.timeout(self._timeout_s * 10):
                rec = await self.store.call_get(tenant_id, call_id)
                if rec is None and not await self.store.tenant_exists(tenant_id):
                    # A missing tenant answers alike on every route (api.md).
                    raise TenantNotFound(tenant_id)
        except (StoreUnavailable, TimeoutError) as exc:  # TimeoutError: our own bound
            raise ServiceUnavailable(str(exc)) from exc
        if rec is None:
            raise CallNotFound(call_id)
        return CallRecord.from_fields(rec)


# Error replies of a Redis that is starting or failing over: it will answer again soon.
TRANSIENT_REPLIES = ("LOADING ", "MASTERDOWN ", "TRYAGAIN ", "CLUSTERDOWN ")
# Out of memory (maxmemory with noeviction): an operations problem, not a bug of ours.
OOM_REPLY = "OOM "

# Failures are logged at most once a second per worker (an outage or an overload fails
# thousands of requests a second), with the count of those left out.
_LOG_INTERVAL_SECONDS = 1.0
_log_state = {"at": 0.0, "suppressed": 0}


def _log_failure(op: str, tenant_id: str, call_id: str, exc: BaseException) -> None:
    t = time.monotonic()
    if t - _log_state["at"] < _LOG_INTERVAL_SECONDS:
        _log_state["suppressed"] += 1
        return
    more = int(_log_state["suppressed"])
    _log_state["at"], _log_state["suppressed"] = t, 0
    also = f" (and {more} more failures since the last line)" if more else ""
    # `extra`: the request's fields, for structured logs (CALLGATE_LOG_FORMAT=json).
    fields = {"operation": op, "tenant_id": tenant_id, "call_id": call_id}
    # Any other error reply is a fault of ours (a bug in a function): loud.
    if isinstance(exc, StoreErrorReply) and not exc.reply.startswith((*TRANSIENT_REPLIES,
                                                                      OOM_REPLY)):
        log.error("%s %s/%s: Redis error reply: %s%s", op, tenant_id, call_id, exc, also,
                  extra=fields)
    else:
        log.warning("%s %s/%s without Redis: %r%s", op, tenant_id, call_id, exc, also,
                    extra=fields)


def decision_body(call_id: str, d: Decision, current_grant: bool = False) -> dict[str, Any]:
    """The JSON answer of authorize and extend. An extension denied keeps the current grant:
    its expiry is the moment the switch must cut the call (``current_grant``)."""
    allowed = d.decision == _ALLOW
    shown = allowed or (current_grant and d.grant_expires_at > 0)
    return {
        "call_id": call_id,
        "decision": d.decision,
        "reason": d.reason,
        "granted_seconds": d.granted_seconds,
        "grant_expires_at": rfc3339(d.grant_expires_at) if shown else None,
        "source": d.source or None,
        "sip_code": None if allowed else SIP_CODES[d.reason],
        "destination": {
            "country": d.destination_country or None,
            "type": d.destination_type or None,
            "class": d.destination_class or None,
        },
    }


def _billed(dom: int, intl: int, credits_micro: int) -> dict[str, Any]:
    return {
        "domestic_pool_minutes": dom,
        "international_pool_minutes": intl,
        "credits": format_money(credits_micro),
    }


def bill_body(call_id: str, b: Bill) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "state": b.state,
        "duration_seconds": b.duration_seconds,
        "billed": _billed(b.domestic_pool_minutes,
                          b.international_pool_minutes, b.credits_micro),
        "overrun_seconds": b.overrun_seconds,
    }


def call_body(call_id: str, r: CallRecord) -> dict[str, Any]:
    closed = r.state in ("ended", "expired")
    body: dict[str, Any] = {
        "call_id": call_id,
        "state": "ended" if r.state == "denied" else r.state,
        "direction": r.direction or None,
        "user_id": r.user_id or None,
        "to": r.to_number or None,
        "from": r.from_number or None,
        "decision": r.decision,
        "reason": r.reason,
        "source": r.source or None,
        "destination": {
            "country": r.destination_country or None,
            "type": r.destination_type or None,
            "class": r.destination_class or None,
        },
        "month": f"{r.month[:4]}-{r.month[4:]}" if r.month else None,
        "started_at": rfc3339(r.started_at) if r.started_at is not None else None,
        "authorized_at": rfc3339(r.authorized_at) if r.authorized_at is not None else None,
        "granted_seconds_total": r.granted_seconds_total,
        "grant_expires_at": rfc3339(r.grant_expires_at) if r.state == "active" else None,
        "grants": [
            {"source": g["source"], "seconds": g["seconds"], "at": rfc3339(int(g["at"])),
             "expires_at": rfc3339(int(g["expires_at"]))}
            for g in orjson.loads(r.grants_json)
        ],
        "rate_prefix": ("+" + r.rate_prefix) if r.rate_prefix else None,
    }
    if closed:
        body["duration_seconds"] = r.duration_seconds
        body["billed"] = _billed(r.billed_domestic_pool_minutes,
                                 r.billed_international_pool_minutes, r.billed_credits_micro)
        body["overrun_seconds"] = r.overrun_seconds
        body["ended_at"] = rfc3339(r.ended_at) if r.ended_at is not None else None
    return body
