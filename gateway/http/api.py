"""HTTP handlers of the v1 API (api.md): validate, authorize, call one service, answer JSON.

Handlers stay thin: every rule lives in gateway.rules.calls (call control), gateway.rules.admin
(administration) or Redis (lua/). Routes are a flat list at the bottom; each names the
roles it admits and whether it is scoped to the tenant in its path.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any
from zoneinfo import available_timezones

import phonenumbers
from aiohttp import web

from gateway import metrics as metrics_mod
from gateway.config import DIAL_OUT_POLICIES, Settings
from gateway.errors import CallNotFound, LedgerUnavailable, ValidationError
from gateway.http import api_cdrs
from gateway.http.observe import OBSERVER, Observer
from gateway.http.web import (
    ADMIN,
    CALLS,
    CLOCK,
    SETTINGS,
    STORE,
    Answer,
    Ctx,
    Handler,
    PublicRoute,
    Route,
    answer_json,
    check_access,
    json_response,
    to_response,
)
from gateway.redis.callrecord import CallRecord
from gateway.redis.store import TenantSettings
from gateway.rules import calls as calls_mod
from gateway.rules.admin import UserSpec, e164_number
from gateway.rules.calls import AuthorizeRequest
from gateway.rules.clock import parse_rfc3339
from gateway.rules.money import parse_money
from gateway.validate import (
    CALL_ID_HINT,
    CALL_ID_RE,
    ID_HINT,
    ID_RE,
    IDEMPOTENCY_KEY_RE,
    Fields,
    json_object,
)
from gateway.validate import query_month as _query_month
from gateway.vocab import DialOut, Role

log = logging.getLogger(__name__)

_TIMEZONES = frozenset(available_timezones())


async def _body(request: web.Request) -> dict[str, Any]:
    return json_object(await request.read())


# -- call control ------------------------------------------------------------------------

AUTHORIZE_FIELDS = ("call_id", "direction", "user_id", "to", "from", "started_at")


_AUTHORIZE_KEYS = frozenset(AUTHORIZE_FIELDS)


def _usual_authorize(body: dict[str, Any]) -> AuthorizeRequest | None:
    """The request switches send for nearly every call — outbound, no started_at — when
    parse_authorize below would accept it as is; None: parse_authorize decides (and names
    every error). A shortcut of the per-field machinery on the hot path; a property test
    holds the two to the same answers."""
    if "started_at" in body or body.get("direction", "outbound") != "outbound" \
            or not _AUTHORIZE_KEYS.issuperset(body):
        return None
    call_id, user_id, to, from_ = (body.get("call_id"), body.get("user_id"), body.get("to"),
                                   body.get("from"))
    if (type(call_id) is str and type(user_id) is str and type(to) is str
            and 0 < len(to) <= 64 and CALL_ID_RE.fullmatch(call_id) is not None
            and ID_RE.fullmatch(user_id) is not None
            and (from_ is None or (type(from_) is str and 0 < len(from_) <= 64))):
        return AuthorizeRequest(call_id, "outbound", user_id, to, from_, None)
    return None


SKEW_FIELD_ERROR = "must lie within {} s of the gateway clock"


def parse_authorize(body: dict[str, Any], now: int, skew: int | None) -> AuthorizeRequest:
    """``skew`` None: started_at is not checked against the clock (see authorize_call)."""
    usual = _usual_authorize(body)
    if usual is not None:
        return usual
    f = Fields(body, AUTHORIZE_FIELDS)
    call_id = f.string("call_id", required=True, max_len=128, pattern=CALL_ID_RE,
                       hint=CALL_ID_HINT)
    direction = f.choice("direction", ("outbound", "inbound"), default="outbound")
    user_id = f.string("user_id", max_len=64, pattern=ID_RE,
                       hint=ID_HINT)
    to = f.string("to", required=True, max_len=64)
    from_ = f.string("from", max_len=64)
    started_raw = f.string("started_at", max_len=64)
    if direction == "outbound" and body.get("user_id") is None:
        f.fail("user_id", "is required for an outbound call")
    if direction == "inbound" and body.get("from") is None:
        f.fail("from", "is required for an inbound call (the caller's number)")
    started: int | None = None
    if started_raw is not None:
        started = parse_rfc3339(started_raw)
        if started is None:
            f.fail("started_at", "must be an RFC 3339 time with offset, e.g. 2026-11-27T10:00:00Z")
        elif skew is not None and abs(started - now) > skew:
            f.fail("started_at", SKEW_FIELD_ERROR.format(skew))
    f.done()
    assert call_id is not None and direction is not None and to is not None
    return AuthorizeRequest(call_id, direction, user_id, to, from_, started)


async def authorize_call(app: web.Application, ctx: Ctx, call_id: str, raw: bytes) -> Answer:
    app[CALLS].new_request()
    body = json_object(raw)
    now, skew = int(app[CLOCK].now()), app[SETTINGS].clock_skew_seconds
    try:
        req = parse_authorize(body, now, skew)
    except ValidationError as exc:
        # A retry keeps its first answer (D32) even when its started_at has since left the
        # skew window: a well-formed request whose only fault is the skew is answered from
        # the call's record when there is one.
        if [(e.field, e.message) for e in exc.errors] != [
                ("started_at", SKEW_FIELD_ERROR.format(skew))]:
            raise
        recorded = await app[CALLS].recorded_answer(
            ctx.tenant_id, parse_authorize(body, now, None).call_id)
        if recorded is None:
            raise
        return answer_json(recorded)
    return answer_json(await app[CALLS].authorize(ctx.tenant_id, req))


def _seconds_field(body: dict[str, Any], name: str) -> int:
    f = Fields(body, (name,))
    value = f.integer(name, required=True, minimum=0, maximum=31 * 86400)
    f.done()
    assert value is not None
    return value


async def extend_call(app: web.Application, ctx: Ctx, call_id: str, raw: bytes) -> Answer:
    used = _seconds_field(json_object(raw), "used_seconds")
    return answer_json(await app[CALLS].extend(ctx.tenant_id, call_id, used))


async def end_call(app: web.Application, ctx: Ctx, call_id: str, raw: bytes) -> Answer:
    duration = _seconds_field(json_object(raw), "duration_seconds")
    return answer_json(await app[CALLS].end(ctx.tenant_id, call_id, duration))


CallControl = Callable[[web.Application, Ctx, str, bytes], Awaitable[Answer]]
SWITCH = (Role.SWITCH.value,)  # plain strings: checked on every call-control request


def on_request(op: CallControl) -> Handler:
    """A call-control operation as an aiohttp route handler (behind guarded)."""

    async def handler(request: web.Request, ctx: Ctx) -> web.StreamResponse:
        call_id = request.match_info.get("call_id", "")
        answer = await op(request.app, ctx, call_id, await request.read())
        transport = request.transport
        if op is authorize_call and (transport is None or transport.is_closing()):
            request.app[CALLS].answer_lost()  # an allow nobody hears is undone
        return to_response(answer)

    return handler


async def call_control(app: web.Application, op: CallControl, authorization: str | None,
                       path: Mapping[str, str], raw: bytes) -> Answer:
    """One call-control request outside aiohttp (gateway.http.fastpath): the same access check
    and operation as its route; errors raise, as in a route handler."""
    ctx = check_access(app, authorization, path, SWITCH)
    if isinstance(ctx, Answer):
        return ctx
    return await op(app, ctx, path.get("call_id", ""), raw)


async def get_call(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """From Redis while it holds the call (live, or within its replay window), else from the
    ledger, which holds every call's history."""
    call_id = request.match_info["call_id"]
    try:
        held = await request.app[CALLS].get(ctx.tenant_id, call_id)
    except CallNotFound:
        rec = await api_cdrs.call_from_ledger(request.app, ctx.tenant_id, call_id)
        if rec is None:
            raise
        return json_response(calls_mod.call_body(call_id, CallRecord.from_fields(rec)))
    if held.closed_only:
        # Redis keeps only what replays answer of a closed call: the rest from the ledger,
        # once it has the call closed too (else, while the persister catches up or the
        # ledger is down, what Redis has).
        try:
            rec = await api_cdrs.call_from_ledger(request.app, ctx.tenant_id, call_id)
        except LedgerUnavailable:
            rec = None
        if rec is not None and rec.get("st") == held.state:
            return json_response(calls_mod.call_body(call_id, CallRecord.from_fields(rec)))
    return json_response(calls_mod.call_body(call_id, held))


# -- tenants -----------------------------------------------------------------------------


def parse_tenant(body: dict[str, Any], tenant_id: str, settings: Settings,
                 currencies: Collection[str] | None = None) -> TenantSettings:
    """`currencies`: those with a rate deck now (uploaded ones too); default: the config's."""
    known = settings.rate_decks if currencies is None else currencies
    f = Fields(body, ("name", "currency", "timezone", "charge_inbound_calls",
                      "max_concurrent_calls", "authorizations_per_second"))
    name = f.string("name", default=tenant_id, max_len=200)
    currency = f.string("currency", default=settings.default_currency, max_len=3)
    if currency is not None and currency not in known:
        f.fail("currency", "no rate deck for this currency; known: " + ", ".join(sorted(known)))
    tz = f.string("timezone", default=settings.default_timezone, max_len=64)
    if tz is not None and tz not in _TIMEZONES:
        f.fail("timezone", "must be an IANA time zone such as Europe/Paris or UTC")
    charge_inbound = f.boolean("charge_inbound_calls", default=False)
    maxc = f.integer("max_concurrent_calls", minimum=1, maximum=1_000_000, nullable=True)
    rate = f.integer("authorizations_per_second", minimum=1, maximum=1_000_000, nullable=True)
    f.done()
    assert name is not None and currency is not None and tz is not None
    return TenantSettings(name, currency, tz, charge_inbound, maxc, rate)


async def put_tenant(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    spec = parse_tenant(await _body(request), ctx.tenant_id, request.app[SETTINGS],
                        request.app[CALLS].decks.current)
    body, created = await request.app[ADMIN].put_tenant(ctx.tenant_id, spec, ctx.actor)
    return json_response(body, 201 if created else 200)


async def get_tenant(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return json_response(await request.app[ADMIN].get_tenant(ctx.tenant_id))


# -- users -------------------------------------------------------------------------------

USER_FIELDS = ("country", "plan", "dial_out", "credits_allowed", "monthly_spend_limit",
               "max_concurrent_calls", "numbers")


def parse_user(body: dict[str, Any], settings: Settings) -> UserSpec:
    f = Fields(body, USER_FIELDS)
    country = f.string("country", required=True, max_len=2)
    if country is not None and country not in phonenumbers.SUPPORTED_REGIONS:
        f.fail("country", "must be an ISO 3166 alpha-2 country code such as US, CA or GB")
    plan = f.choice("plan", tuple(settings.plans), required=True)
    dial_out = f.choice("dial_out", DIAL_OUT_POLICIES,
                        default=DialOut.INTERNATIONAL_AND_DOMESTIC.value)
    credits_allowed = f.boolean("credits_allowed", default=True)
    limit: int | None = None
    if f.has("monthly_spend_limit"):
        try:
            limit = parse_money(f.raw("monthly_spend_limit"), "monthly_spend_limit",
                                allow_zero=True)
        except ValidationError as exc:
            f.errors.extend(exc.errors)
    maxc = f.integer("max_concurrent_calls", minimum=1, maximum=10_000, nullable=True)
    numbers: list[str] = []
    for i, raw in enumerate(f.string_list("numbers", max_items=20)):
        try:
            n = e164_number(raw, f"numbers[{i}]")
        except ValidationError as exc:
            f.errors.extend(exc.errors)
            continue
        if n not in numbers:
            numbers.append(n)
    f.done()
    assert country is not None and plan is not None and dial_out is not None
    return UserSpec(country, plan, dial_out, credits_allowed, limit, maxc, tuple(numbers))


async def put_user(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    spec = parse_user(await _body(request), request.app[SETTINGS])
    body, created = await request.app[ADMIN].put_user(
        ctx.tenant_id, request.match_info["user_id"], spec, ctx.actor
    )
    return json_response(body, 201 if created else 200)


async def get_user(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return json_response(
        await request.app[ADMIN].get_user(ctx.tenant_id, request.match_info["user_id"])
    )


async def delete_user(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await request.app[ADMIN].delete_user(ctx.tenant_id, request.match_info["user_id"], ctx.actor)
    return web.Response(status=204)


# -- credits, pools, toll-free numbers --------------------------------------------------------


async def topup(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    body = await _body(request)
    f = Fields(body, ("amount", "idempotency_key"))
    amount: int | None = None
    if "amount" not in body:
        f.fail("amount", "is required")
    else:
        try:
            amount = parse_money(body["amount"], "amount")
        except ValidationError as exc:
            f.errors.extend(exc.errors)
    key = f.string("idempotency_key", required=True, max_len=128, pattern=IDEMPOTENCY_KEY_RE,
                   hint="must be 1-128 printable ASCII characters without spaces")
    f.done()
    assert amount is not None and key is not None
    return json_response(await request.app[ADMIN].topup(ctx.tenant_id, key, amount, ctx.actor))


async def get_credits(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return json_response(await request.app[ADMIN].credits(ctx.tenant_id))


async def get_pools(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    month = _query_month(request.query)
    return json_response(await request.app[ADMIN].pools(ctx.tenant_id, month))


async def put_tollfree(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    number = e164_number(request.match_info["e164"], "e164", toll_free=True)
    body, created = await request.app[ADMIN].put_tollfree(ctx.tenant_id, number, ctx.actor)
    return json_response(body, 201 if created else 200)


async def delete_tollfree(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    number = e164_number(request.match_info["e164"], "e164")
    await request.app[ADMIN].delete_tollfree(ctx.tenant_id, number, ctx.actor)
    return web.Response(status=204)


# -- operations (no token) ----------------------------------------------------------------


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def observer_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context (after the store's): what /metrics and /readyz read from
    Redis, sampled at most once a second per worker (gateway.http.observe)."""
    app[OBSERVER] = Observer(app[SETTINGS], app[STORE], app[CLOCK])
    yield
    await app[OBSERVER].close()


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when Redis answers, the function library is loaded and the persister is not
    stalled. Without a token (probes): which check failed, from a fixed vocabulary, no
    address or error text; with an operator token, the details as well."""
    ctx = check_access(request.app, request.headers.get("Authorization"), {}, OPERATOR,
                       tenant_scoped=False)
    ready, body = await request.app[OBSERVER].readiness(details=isinstance(ctx, Ctx))
    return json_response(body, 200 if ready else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text format, rendered at most once a second per worker with the gauges
    sampled from Redis (active calls, reaper overdue, Redis memory) no more often; a
    scrape never fails, nor waits long, because Redis does (gateway.http.observe)."""
    body = await request.app[OBSERVER].exposition()
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = metrics_mod.CONTENT_TYPE
    return resp


ADMIN_ROLE = (Role.ADMIN,)
OPERATOR = (Role.OPERATOR,)
T = "/v1/tenants/{tenant_id}"

ROUTES: list[Route] = [
    Route("POST", f"{T}/calls", on_request(authorize_call), SWITCH),
    Route("POST", f"{T}/calls/{{call_id}}/extend", on_request(extend_call), SWITCH),
    Route("POST", f"{T}/calls/{{call_id}}/end", on_request(end_call), SWITCH),
    Route("GET", f"{T}/calls/{{call_id}}", get_call, (Role.SWITCH, Role.ADMIN)),
    Route("PUT", T, put_tenant, OPERATOR),
    Route("GET", T, get_tenant, ADMIN_ROLE),
    Route("PUT", f"{T}/users/{{user_id}}", put_user, ADMIN_ROLE),
    Route("GET", f"{T}/users/{{user_id}}", get_user, ADMIN_ROLE),
    Route("DELETE", f"{T}/users/{{user_id}}", delete_user, ADMIN_ROLE),
    Route("POST", f"{T}/credits/topups", topup, ADMIN_ROLE),
    Route("GET", f"{T}/credits", get_credits, ADMIN_ROLE),
    Route("GET", f"{T}/pools", get_pools, ADMIN_ROLE),
    Route("PUT", f"{T}/toll-free-numbers/{{e164}}", put_tollfree, ADMIN_ROLE),
    Route("DELETE", f"{T}/toll-free-numbers/{{e164}}", delete_tollfree, ADMIN_ROLE),
    Route("GET", f"{T}/cdrs", api_cdrs.list_cdrs, ADMIN_ROLE),
]


PUBLIC_ROUTES: list[PublicRoute] = [
    PublicRoute("GET", "/healthz", healthz),
    PublicRoute("GET", "/readyz", readyz),
    PublicRoute("GET", "/metrics", metrics),
]
