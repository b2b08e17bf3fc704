"""The OpenAPI 3.1 document of the v1 API, served at GET /openapi.json.

Written by hand, operation by operation, from api.md; `build_document` keeps only the
operations the application really routes (tests check that the two sets are equal, so a
route without a description, or a description without a route, fails the suite). Every
request body schema has ``additionalProperties: false``: the one rule for unknown fields
(gateway.validate) is part of the contract. Errors are problem documents (RFC 9457).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from gateway import vocab
from gateway.config import Settings
from gateway.http.api_cdrs import CDR_PAGE_DEFAULT, CDR_PAGE_MAX
from gateway.http.web import SETTINGS, PublicRoute
from gateway.redis.keys import AUDIT_MAX_ENTRIES
from gateway.rules.rating import HEADER, KINDS

PROBLEM = "application/problem+json"
JSON = "application/json"

# Not only dots ("." and ".." are URL dot segments): refused with a 400 naming the id.
ID = {"type": "string", "pattern": "^(?!\\.+$)[A-Za-z0-9._-]{1,64}$"}
CALL_ID = {"type": "string", "pattern": "^(?!\\.+$)[A-Za-z0-9._:@-]{1,128}$"}
MONEY = {"type": "string", "pattern": r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,4})?$",
         "description": "decimal string, at most 4 decimals, e.g. \"25.00\"; never a number"}
MONEY_OUT = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{4}$", "examples": ["12.5000"]}
RATE_OUT = {"type": "string", "pattern": r"^[0-9]+\.[0-9]{6}$"}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
NULLABLE_STR = {"type": ["string", "null"]}
SECONDS = {"type": "integer", "minimum": 0, "maximum": 31 * 86400}

REASONS = [str(r) for r in vocab.REASONS]
ROLES = [r.value for r in vocab.Role]


def _obj(props: dict[str, Any], required: Iterable[str] = (), closed: bool = False,
         **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, **extra}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _schemas(settings: Settings) -> dict[str, Any]:
    destination = _obj({"country": NULLABLE_STR, "type": NULLABLE_STR, "class": NULLABLE_STR},
                       ["country", "type", "class"])
    billed = _obj({"domestic_pool_minutes": {"type": "integer"},
                   "international_pool_minutes": {"type": "integer"}, "credits": MONEY_OUT},
                  ["domestic_pool_minutes", "international_pool_minutes", "credits"])
    return {
        "Problem": _obj({
            "type": {"type": "string"}, "title": {"type": "string"},
            "status": {"type": "integer"}, "detail": {"type": "string"},
            "errors": {"type": "array", "items": _obj(
                {"field": {"type": "string", "description":
                           "the request field, path or query parameter; for a rate deck "
                           "upload 'line N, column NAME', 'line N' or 'body'"},
                 "message": {"type": "string"}}, ["field", "message"])},
        }, ["type", "title", "status", "detail"]),
        # -- call control
        "AuthorizeRequest": _obj({
            "call_id": CALL_ID,
            "direction": {"type": "string", "enum": ["outbound", "inbound"]},
            "user_id": ID,
            "to": {"type": "string", "minLength": 1, "maxLength": 64,
                   "description": "E.164, or a short code as dialled (911)"},
            "from": {"type": "string", "minLength": 1, "maxLength": 64},
            "started_at": TIME,
        }, ["call_id", "to"], closed=True),
        "ExtendRequest": _obj({"used_seconds": SECONDS}, ["used_seconds"], closed=True),
        "EndRequest": _obj({"duration_seconds": SECONDS}, ["duration_seconds"], closed=True),
        "Decision": _obj({
            "call_id": {"type": "string"},
            "decision": {"type": "string", "enum": [v.value for v in vocab.Verdict]},
            "reason": {"type": "string", "enum": REASONS},
            "granted_seconds": {"type": "integer", "minimum": 0},
            "grant_expires_at": NULLABLE_TIME,
            "source": {"type": ["string", "null"],
                       "enum": [*(s.value for s in vocab.Source), None]},
            "sip_code": {"type": ["integer", "null"]},
            "destination": destination,
        }, ["call_id", "decision", "reason", "granted_seconds", "grant_expires_at", "source",
            "sip_code", "destination"]),
        "Bill": _obj({
            "call_id": {"type": "string"},
            "state": {"type": "string", "enum": ["ended", "expired"]},
            "duration_seconds": {"type": "integer"}, "billed": billed,
        }, ["call_id", "state", "duration_seconds", "billed"]),
        "Call": _obj({
            "call_id": {"type": "string"},
            "state": {"type": "string", "enum": ["active", "ended", "expired"]},
            "decision": NULLABLE_STR, "reason": NULLABLE_STR, "destination": destination,
            "grants": {"type": "array", "items": _obj({
                "source": {"type": "string"}, "seconds": {"type": "integer"},
                "at": TIME, "expires_at": TIME})},
            "billed": billed,
        }, ["call_id", "state"]),
        # -- administration
        "TenantRequest": _obj({
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$",
                         "description": "a currency with a rate deck"},
            "timezone": {"type": "string", "minLength": 1, "maxLength": 64,
                         "examples": ["UTC", "Europe/Paris"]},
            "charge_inbound_calls": {"type": "boolean"},
            "max_concurrent_calls": {"type": ["integer", "null"], "minimum": 1,
                                     "maximum": 1_000_000},
            "authorizations_per_second": {
                "type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000,
                "description": "new calls authorized per second (a token bucket of twice "
                               "as many); null: the deployment's default"},
        }, closed=True),
        "Tenant": _obj({
            "tenant_id": {"type": "string"}, "name": NULLABLE_STR,
            "currency": NULLABLE_STR, "timezone": NULLABLE_STR,
            "charge_inbound_calls": {"type": "boolean"},
            "max_concurrent_calls": {"type": ["integer", "null"]},
            "authorizations_per_second": {"type": ["integer", "null"]},
        }, ["tenant_id", "name", "currency", "timezone"]),
        "UserRequest": _obj({
            "country": {"type": "string", "pattern": "^[A-Z]{2}$", "examples": ["US"]},
            "plan": {"type": "string", "enum": sorted(settings.plans)},
            "dial_out": {"type": "string", "enum": [d.value for d in vocab.DialOut]},
            "credits_allowed": {"type": "boolean"},
            "monthly_spend_limit": {"anyOf": [MONEY, {"type": "null"}]},
            "max_concurrent_calls": {"type": ["integer", "null"], "minimum": 1,
                                     "maximum": 10_000},
            "numbers": {"type": ["array", "null"], "maxItems": 20,
                        "items": {"type": "string", "minLength": 1, "maxLength": 64}},
        }, ["country", "plan"], closed=True),
        "User": _obj({
            "user_id": {"type": "string"}, "country": {"type": "string"},
            "plan": {"type": "string"}, "dial_out": {"type": "string"},
            "credits_allowed": {"type": "boolean"},
            "monthly_spend_limit": {"type": ["string", "null"]},
            "max_concurrent_calls": {"type": ["integer", "null"]},
            "numbers": {"type": "array", "items": {"type": "string"}},
        }, ["user_id", "country", "plan", "dial_out", "credits_allowed", "numbers"]),
        "TopupRequest": _obj({
            "amount": MONEY,
            "idempotency_key": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$"},
        }, ["amount", "idempotency_key"], closed=True),
        "Balance": _obj({"balance": MONEY_OUT, "currency": {"type": "string"}},
                        ["balance", "currency"]),
        "Credits": _obj({"balance": MONEY_OUT, "currency": {"type": "string"},
                         "reserved": MONEY_OUT, "available": MONEY_OUT},
                        ["balance", "currency"]),
        "Pools": _obj({
            "month": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
            "pools": {"type": "array", "items": _obj({
                k: {"type": "integer"} for k in (
                    "licenses", "minutes_per_user", "capacity_minutes", "used_minutes",
                    "reserved_minutes", "remaining_minutes")
            } | {"country": {"type": "string"}, "plan": {"type": "string"},
                 "kind": {"type": "string", "enum": ["domestic", "international"]},
                 "percent_used": {"type": ["number", "null"], "description":
                                  "(used + reserved) / capacity x 100, one decimal; null "
                                  "without capacity"}},
                ["country", "plan", "kind", "capacity_minutes", "used_minutes",
                 "reserved_minutes", "remaining_minutes"])},
        }, ["month", "pools"]),
        "TollFreeNumber": _obj({"number": {"type": "string"}}, ["number"]),
        "Cdr": _obj({
            "tenant_id": {"type": "string"}, "call_id": {"type": "string"},
            "user_id": NULLABLE_STR, "direction": {"type": "string"},
            "from": NULLABLE_STR, "to": {"type": "string"},
            "destination_country": NULLABLE_STR, "destination_class": {"type": "string"},
            "started_at": {"type": "string", "format": "date-time"},
            "ended_at": {"type": "string", "format": "date-time"},
            **{k: {"type": "integer"} for k in (
                "duration_seconds", "billed_seconds", "overrun_seconds",
                "domestic_pool_minutes", "international_pool_minutes")},
            "credits_charged": MONEY_OUT, "rate_prefix": NULLABLE_STR,
            "reason": {"type": "string"}, "state": {"type": "string"},
        }, ["call_id", "direction", "to", "started_at", "ended_at", "duration_seconds",
            "credits_charged"]),
        "CdrPage": _obj({"cdrs": {"type": "array", "items": _ref("Cdr")},
                         "next_cursor": NULLABLE_STR}, ["cdrs", "next_cursor"]),
        "AuditPage": _obj({
            "entries": {"type": "array", "items": _obj({
                "id": {"type": "string"}, "at": TIME, "actor": {"type": "string"},
                "action": {"type": "string"}, "details": {"type": "object"},
            }, ["id", "at", "actor", "action", "details"])},
            "next_cursor": NULLABLE_STR,
        }, ["entries", "next_cursor"]),
        # -- rate decks
        "DeckCsv": {"type": "string", "description": "CSV, UTF-8, header exactly "
                    + ",".join(HEADER) + "; kind is outbound or toll_free_inbound"},
        "DeckReplaced": _obj({"currency": {"type": "string"}, "rows": {"type": "integer"},
                              "version": {"type": "integer"}},
                             ["currency", "rows", "version"]),
        "DeckRow": _obj({
            "currency": {"type": "string"}, "prefix": {"type": "string"},
            "description": {"type": "string"}, "kind": {"type": "string", "enum": list(KINDS)},
            "rate_per_minute": RATE_OUT, "connection_fee": RATE_OUT,
            "initial_increment": {"type": "integer"},
            "subsequent_increment": {"type": "integer"},
        }, ["currency", "prefix", "kind", "rate_per_minute", "connection_fee",
            "initial_increment", "subsequent_increment"]),
        # -- tokens
        **_token_schemas(),
        # -- operations
        "Health": _obj({"status": {"type": "string"}}, ["status"]),
        "Ready": _obj({"status": {"type": "string", "enum": ["ready", "not ready"]},
                       "checks": {"type": "object",
                                  "additionalProperties": {"type": "string"}},
                       "details": {"type": "object",
                                   "description": "with an operator token only: Redis "
                                   "nodes, the last error, the persister's backlog"}},
                      ["status", "checks"]),
    } | _notify_schemas()


def _token_schemas() -> dict[str, Any]:
    tenants = {"type": "array", "maxItems": 100, "uniqueItems": True, "items": ID}
    token = {
        "id": {"type": "string", "pattern": "^tok_[0-9a-f]{16}$"},
        "role": {"type": "string", "enum": ROLES},
        "tenants": {"type": "array", "items": {"type": "string"}},
        "description": NULLABLE_STR, "created_at": TIME, "expires_at": NULLABLE_TIME,
    }
    shown = ["id", "role", "tenants", "description", "created_at", "expires_at"]
    return {
        "TokenRequest": _obj({
            "role": {"type": "string", "enum": ROLES,
                     "description": "required on /v1/tokens; on a tenant's route only "
                                    "switch (the default) is allowed, another role is 403"},
            "tenants": {"anyOf": [tenants, {"type": "null"}],
                        "description": "the tenants a switch or admin token acts for (none "
                                       "for an operator token); on a tenant's route, that "
                                       "tenant alone (the default)"},
            "description": {"type": ["string", "null"], "minLength": 1, "maxLength": 200},
            "expires_at": {"type": ["string", "null"], "format": "date-time",
                           "description": "RFC 3339, in the future; null: never expires"},
        }, closed=True),
        "TokenCreated": _obj({**token, "token": {
            "type": "string", "pattern": "^cg_[A-Za-z0-9_-]{43}$",
            "description": "the secret: shown in this answer only, never again"}},
            ["id", "token", *shown[1:]]),
        "Token": _obj({**token, "last_used_at": {
            **NULLABLE_TIME, "description": "coarse: recorded at most once a minute"}},
            [*shown, "last_used_at"]),
        "TokenList": _obj({"tokens": {"type": "array", "items": _ref("Token")}},
                          ["tokens"]),
    }


_PROBLEM_TEXT = {
    400: "invalid request: the problem's errors name each bad field or parameter",
    401: "no valid bearer token",
    403: "the token's role may not do this",
    404: "not found; a tenant that is not the token's answers exactly as a missing one",
    409: "conflict with the current state",
    413: "request body too large",
    503: "Redis unavailable; retry",
}


def _problems(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/Problem{c}"} for c in codes}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _path_param(name: str) -> dict[str, Any]:
    schemas: dict[str, dict[str, Any]] = {
        "tenant_id": ID, "user_id": ID, "call_id": CALL_ID, "webhook_id": ID,
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$", "examples": ["USD"]},
        "token_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$",
                     "examples": ["tok_3f1c0a9b8e7d6c5b"]},
        "e164": {"type": "string", "minLength": 1, "maxLength": 32,
                 "examples": ["+18005550199"],
                 "description": "E.164 number ('+' may be written %2B)"},
    }
    return {"name": name, "in": "path", "required": True, "schema": schemas[name]}


def _query(name: str, schema: dict[str, Any], required: bool = False,
           description: str = "") -> dict[str, Any]:
    param = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        param["description"] = description
    return param


def _body(schema_name: str, content_type: str = JSON) -> dict[str, Any]:
    return {"required": True, "content": {content_type: {"schema": _ref(schema_name)}}}


T = "/v1/tenants/{tenant_id}"


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    """(method, path) -> operation, for every route the gateway may serve."""
    guarded = (400, 401, 403, 404, 503)
    with_body = (*guarded, 413)
    ops: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", f"{T}/calls"): {
            "summary": "Authorize a new call (switch)", "requestBody": _body("AuthorizeRequest"),
            "responses": {"200": _json(_ref("Decision"), "the decision (a deny is a 200)"),
                          **_problems(*with_body)}},
        ("POST", f"{T}/calls/{{call_id}}/extend"): {
            "summary": "Next grant of a live call (switch)", "requestBody": _body("ExtendRequest"),
            "description": "Time only moves forward: a used_seconds lower than one already "
                           "reported for the call (as taken: at most the call's granted time "
                           "then) is a 400 whose error names used_seconds; nothing changes.",
            "responses": {"200": _json(_ref("Decision"), "the decision on the next grant"),
                          **_problems(*with_body, 409),
                          "400": {"description": _PROBLEM_TEXT[400] + "; also a used_seconds "
                                  "lower than one already reported (field used_seconds)",
                                  "content": {PROBLEM: {"schema": _ref("Problem")}}}}},
        ("POST", f"{T}/calls/{{call_id}}/end"): {
            "summary": "End a call and bill it (switch); idempotent",
            "requestBody": _body("EndRequest"),
            "responses": {"200": _json(_ref("Bill"), "the bill"),
                          **_problems(*with_body, 409)}},
        ("GET", f"{T}/calls/{{call_id}}"): {
            "summary": "A call's state, grants and bill (switch, admin)",
            "responses": {"200": _json(_ref("Call"), "the call"), **_problems(*guarded)}},
        ("PUT", T): {
            "summary": "Create or update a tenant (operator)",
            "requestBody": _body("TenantRequest"),
            "responses": {"200": _json(_ref("Tenant"), "updated"),
                          "201": _json(_ref("Tenant"), "created"),
                          **_problems(*with_body, 409)}},
        ("GET", T): {"summary": "A tenant (admin)",
                     "responses": {"200": _json(_ref("Tenant"), "the tenant"),
                                   **_problems(*guarded)}},
        ("PUT", f"{T}/users/{{user_id}}"): {
            "summary": "Create or update a user (admin)", "requestBody": _body("UserRequest"),
            "responses": {"200": _json(_ref("User"), "updated"),
                          "201": _json(_ref("User"), "created"),
                          **_problems(*with_body, 409)}},
        ("GET", f"{T}/users/{{user_id}}"): {
            "summary": "A user (admin)",
            "responses": {"200": _json(_ref("User"), "the user"), **_problems(*guarded)}},
        ("DELETE", f"{T}/users/{{user_id}}"): {
            "summary": "Remove a user and its licence (admin)",
            "responses": {"204": {"description": "removed"}, **_problems(*guarded)}},
        ("POST", f"{T}/credits/topups"): {
            "summary": "Top up the credits, once per idempotency key (admin)",
            "requestBody": _body("TopupRequest"),
            "responses": {"200": _json(_ref("Balance"), "the new balance"),
                          **_problems(*with_body, 409)}},
        ("GET", f"{T}/credits"): {
            "summary": "Credit balance (admin)",
            "responses": {"200": _json(_ref("Credits"), "the balance"), **_problems(*guarded)}},
        ("GET", f"{T}/pools"): {
            "summary": "Minute pools of a month (admin)",
            "parameters": [_query("month", {"type": "string",
                                            "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"},
                                  description="YYYY-MM; default: the current month")],
            "responses": {"200": _json(_ref("Pools"), "the pools"), **_problems(*guarded)}},
        ("PUT", f"{T}/toll-free-numbers/{{e164}}"): {
            "summary": "Register a toll-free number of the tenant (admin)",
            "responses": {"200": _json(_ref("TollFreeNumber"), "already registered"),
                          "201": _json(_ref("TollFreeNumber"), "registered"),
                          **_problems(*guarded, 409)}},
        ("DELETE", f"{T}/toll-free-numbers/{{e164}}"): {
            "summary": "Remove a toll-free number (admin)",
            "responses": {"204": {"description": "removed"}, **_problems(*guarded)}},
        ("GET", f"{T}/cdrs"): {
            "summary": "Ended calls from the ledger, newest first (admin)",
            "parameters": [
                _query("from", {"type": "string", "format": "date-time"},
                       description="calls ended at or after this time"),
                _query("to", {"type": "string", "format": "date-time"},
                       description="calls ended before this time"),
                _query("limit", {"type": "integer", "minimum": 1,
                                 "maximum": CDR_PAGE_MAX},
                       description=f"rows per page, default {CDR_PAGE_DEFAULT}"),
                _query("cursor", {"type": "string"},
                       description="next_cursor of the previous page"),
            ],
            "responses": {"200": _json(_ref("CdrPage"), "a page of CDRs"),
                          **_problems(*guarded)}},
        ("GET", f"{T}/audit"): {
            "summary": "Who changed what, when: newest first (admin)",
            "parameters": [
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 200},
                       description="entries per page, default 50"),
                _query("cursor", {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
                       description="next_cursor of the previous page"),
            ],
            "description": f"The last {AUDIT_MAX_ENTRIES} changes of the tenant; the ledger "
                           "keeps them all. actor is a token id, never a token.",
            "responses": {"200": _json(_ref("AuditPage"), "a page of changes"),
                          **_problems(*guarded)}},
        ("PUT", "/v1/rate-decks/{currency}"): {
            "summary": "Replace a currency's rate deck atomically (operator)",
            "requestBody": _body("DeckCsv", "text/csv"),
            "responses": {"200": _json(_ref("DeckReplaced"), "replaced; every worker rates "
                                       "with it within 1 s"),
                          **_problems(*guarded, 413)}},
        ("GET", "/v1/rate-decks/{currency}/lookup"): {
            "summary": "The deck row that rates a number: longest prefix (admin)",
            "parameters": [
                _query("number", {"type": "string", "pattern": r"^\+?[0-9]{1,15}$",
                                  "examples": ["+442071838750"]}, required=True),
                _query("kind", {"type": "string", "enum": list(KINDS)},
                       description="default outbound"),
            ],
            "responses": {"200": _json(_ref("DeckRow"), "the row"),
                          **_problems(400, 401, 403, 404)}},
        **_token_operations(guarded, with_body),
        ("GET", "/healthz"): {
            "summary": "The process is alive", "security": [],
            "responses": {"200": _json(_ref("Health"), "alive")}},
        ("GET", "/readyz"): {
            "summary": "Redis reachable and functions loaded", "security": [],
            "responses": {"200": _json(_ref("Ready"), "ready"),
                          "503": _json(_ref("Ready"), "not ready")}},
        ("GET", "/metrics"): {
            "summary": "Prometheus metrics", "security": [],
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}}},
        ("GET", "/openapi.json"): {
            "summary": "This document", "security": [],
            "responses": {"200": _json({"type": "object"}, "the OpenAPI 3.1 document")}},
    }
    ops.update(_notify_operations(guarded, with_body))
    for (_method, path), op in ops.items():
        names = [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]
        if names:
            op["parameters"] = [_path_param(n) for n in names] + op.get("parameters", [])
    return ops


def _token_operations(guarded: tuple[int, ...], with_body: tuple[int, ...]
                      ) -> dict[tuple[str, str], dict[str, Any]]:
    ops: dict[tuple[str, str], dict[str, Any]] = {}
    pickup = "; the token answers 401 on every worker within 1 s"
    for base, who in (("/v1/tokens", "operator"),
                      (f"{T}/tokens", "admin of the tenant: its switch tokens only")):
        ops[("POST", base)] = {
            "summary": f"Create a token ({who}); the secret is in this answer only",
            "requestBody": _body("TokenRequest"),
            "responses": {"201": _json(_ref("TokenCreated"), "created"),
                          **_problems(*with_body)}}
        ops[("GET", base)] = {
            "summary": f"The tokens, without their secrets ({who})",
            "responses": {"200": _json(_ref("TokenList"), "the tokens"),
                          **_problems(*guarded)}}
        ops[("DELETE", f"{base}/{{token_id}}")] = {
            "summary": f"Revoke a token ({who})",
            "responses": {"204": {"description": "revoked" + pickup},
                          **_problems(*guarded)}}
    return ops


def routed(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route of `app` (HEAD twins of GET left out)."""
    out = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        out.add((route.method, route.resource.canonical))
    return out


def build_document(settings: Settings, routes: Iterable[tuple[str, str]] | None = None,
                   server_url: str | None = None) -> dict[str, Any]:
    """The document; with `routes`, only those operations (the ones the app serves)."""
    ops = _operations()
    keep = set(ops) if routes is None else set(routes)
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in ops.items():
        if (method, path) in keep:
            paths.setdefault(path, {})[method.lower()] = {
                "operationId": f"{method.lower()}_{path}", **op}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "callgate", "version": "1",
                 "description": "Real-time call authorization: pooled minute plans and "
                                "prepaid credits. Money is always a decimal string."},
        "paths": paths,
        "components": {
            "schemas": _schemas(settings),
            "responses": {
                f"Problem{c}": {"description": text,
                                "content": {PROBLEM: {"schema": _ref("Problem")}}}
                for c, text in _PROBLEM_TEXT.items()
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc


def described() -> set[tuple[str, str]]:
    """Every (method, path) this module can describe."""
    return set(_operations())


# The document of each application, built on its first request (its routes are final then).
_DOCUMENTS: weakref.WeakKeyDictionary[web.Application, bytes] = weakref.WeakKeyDictionary()


async def openapi_json(request: web.Request) -> web.StreamResponse:
    """GET /openapi.json (no token): built on the first request, from the routes the app
    has then, and kept."""
    body = _DOCUMENTS.get(request.app)
    if body is None:
        body = orjson.dumps(build_document(request.app[SETTINGS], routed(request.app)))
        _DOCUMENTS[request.app] = body
    return web.Response(body=body, content_type=JSON)


PUBLIC_ROUTES: list[PublicRoute] = [PublicRoute("GET", "/openapi.json", openapi_json)]


# -- alerts and webhooks (api.md, Notifications) ------------------------------------------

EVENT_TYPE = {"type": "string", "enum": [e.value for e in vocab.ALERT_EVENTS]}


def _notify_schemas() -> dict[str, Any]:
    recharge_in = {"oneOf": [{"type": "null"}, _obj({"below": MONEY, "amount": MONEY},
                                                   ["below", "amount"], closed=True)]}
    recharge_out = {"oneOf": [{"type": "null"}, _obj({"below": MONEY_OUT, "amount": MONEY_OUT},
                                                    ["below", "amount"])]}
    thresholds = {"type": "array", "maxItems": 10,
                  "items": {"type": "integer", "minimum": 1, "maximum": 100}}
    webhook = {"url": {"type": "string", "maxLength": 2048,
                       "description": "http(s); loopback and private networks refused "
                                      "unless CALLGATE_WEBHOOK_ALLOW_PRIVATE=1"},
               "events": {"type": "array", "minItems": 1, "items": EVENT_TYPE},
               "enabled": {"type": "boolean"}}
    return {
        "AlertsRequest": _obj({"pool_thresholds_percent": thresholds,
                               "low_balance": {"oneOf": [{"type": "null"}, MONEY]},
                               "auto_recharge": recharge_in}, closed=True),
        "Alerts": _obj({"pool_thresholds_percent": thresholds,
                        "low_balance": {"oneOf": [{"type": "null"}, MONEY_OUT]},
                        "auto_recharge": recharge_out},
                       ["pool_thresholds_percent", "low_balance", "auto_recharge"]),
        "WebhookRequest": _obj(webhook | {"secret": {
            "type": "string", "minLength": 32, "maxLength": 256,
            "description": "required when creating; never shown again"}}, ["url"],
            closed=True),
        "Webhook": _obj({"webhook_id": ID, **webhook, "created_at": TIME, "updated_at": TIME},
                        ["webhook_id", "url", "events", "enabled", "created_at",
                         "updated_at"]),
        "Deliveries": _obj({"deliveries": {"type": "array", "items": _obj({
            "event_id": {"type": "string"}, "type": EVENT_TYPE,
            "attempts": {"type": "integer"},
            "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "last_status": {"type": ["integer", "null"]}, "next_attempt_at": NULLABLE_TIME,
        }, ["event_id", "type", "attempts", "state", "last_status", "next_attempt_at"])}},
            ["deliveries"]),
    }


def _notify_operations(guarded: tuple[int, ...],
                       with_body: tuple[int, ...]) -> dict[tuple[str, str], dict[str, Any]]:
    w = f"{T}/webhooks/{{webhook_id}}"
    return {
        ("PUT", f"{T}/alerts"): {
            "summary": "Alert settings: pool thresholds, low balance, auto-recharge (admin)",
            "requestBody": _body("AlertsRequest"),
            "responses": {"200": _json(_ref("Alerts"), "the settings"),
                          **_problems(*with_body)}},
        ("GET", f"{T}/alerts"): {
            "summary": "Alert settings (admin)",
            "responses": {"200": _json(_ref("Alerts"), "the settings"), **_problems(*guarded)}},
        ("PUT", w): {
            "summary": "Create or update a webhook (admin); its secret is never shown again",
            "requestBody": _body("WebhookRequest"),
            "responses": {"200": _json(_ref("Webhook"), "updated"),
                          "201": _json(_ref("Webhook"), "created"),
                          **_problems(*with_body)}},
        ("GET", w): {"summary": "A webhook, without its secret (admin)",
                     "responses": {"200": _json(_ref("Webhook"), "the webhook"),
                                   **_problems(*guarded)}},
        ("DELETE", w): {"summary": "Remove a webhook (admin)",
                        "responses": {"204": {"description": "removed"},
                                      **_problems(*guarded)}},
        ("GET", f"{w}/deliveries"): {
            "summary": "A webhook's deliveries, newest first (admin)",
            "parameters": [_query("limit", {"type": "integer", "minimum": 1, "maximum": 100},
                                  description="deliveries listed, default 20")],
            "responses": {"200": _json(_ref("Deliveries"), "the deliveries"),
                          **_problems(*guarded)}},
    }
