"""What every HTTP handler shares: the application's keys, the caller's context, answers and
problem documents, the access check, and the one way routes are declared.

Each handler module declares a ``ROUTES`` table of :class:`Route` (and, for the few
endpoints without a token, ``PUBLIC_ROUTES``); gateway.http.app registers them all with
:func:`add_routes`. A route is tenant-scoped exactly when its path names ``{tenant_id}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from gateway.config import Settings
from gateway.errors import FieldError
from gateway.http.auth import Authenticator, Principal
from gateway.redis.store import Store
from gateway.rules.admin import AdminService
from gateway.rules.calls import CallService
from gateway.rules.clock import Clock
from gateway.validate import CALL_ID_RE, path_id

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
STORE: web.AppKey[Store] = web.AppKey("store", Store)
CLOCK: web.AppKey[Clock] = web.AppKey("clock", Clock)
CALLS: web.AppKey[CallService] = web.AppKey("calls", CallService)
ADMIN: web.AppKey[AdminService] = web.AppKey("admin", AdminService)
AUTH: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)

BODY_LIMIT_BYTES = 64 * 1024
PROBLEM = "application/problem+json"

Handler = Callable[[web.Request, "Ctx"], Awaitable[web.StreamResponse]]
RawHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Route(NamedTuple):
    """One endpoint: who may call it (roles), behind :func:`check_access`."""

    method: str
    path: str
    handler: Handler
    roles: Sequence[str]


class PublicRoute(NamedTuple):
    """One endpoint without a token (probes, metrics, the OpenAPI document)."""

    method: str
    path: str
    handler: RawHandler


def add_routes(app: web.Application, routes: Sequence[Route | PublicRoute]) -> None:
    for route in routes:
        if isinstance(route, PublicRoute):
            app.router.add_route(route.method, route.path, route.handler)
        else:
            app.router.add_route(route.method, route.path,
                                 guarded(route.handler, route.roles,
                                         tenant_scoped="{tenant_id}" in route.path))


@dataclass(frozen=True, slots=True)
class Ctx:
    principal: Principal
    tenant_id: str

    @property
    def actor(self) -> str:
        """Who acts, for the audit trail: the token's id, never the token."""
        return self.principal.token_id


@dataclass(frozen=True, slots=True)
class Answer:
    """A response independent of the HTTP layer: aiohttp's handlers and the call-control
    fast path (gateway.http.fastpath) both send these, so both answer byte for byte alike."""

    status: int
    body: bytes
    content_type: str = "application/json"


def answer_json(body: Any, status: int = 200) -> Answer:
    return Answer(status, orjson.dumps(body))


def to_response(answer: Answer) -> web.Response:
    return web.Response(body=answer.body, status=answer.status,
                        content_type=answer.content_type)


def json_response(body: Any, status: int = 200) -> web.Response:
    return to_response(answer_json(body, status))


def problem_answer(status: int, title: str, detail: str, errors: Sequence[FieldError] = (),
                   slug: str | None = None) -> Answer:
    doc: dict[str, Any] = {
        "type": f"urn:callgate:problem:{slug or title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        doc["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return Answer(status, orjson.dumps(doc), PROBLEM)


def check_access(app: web.Application, authorization: str | None,
                 path: Mapping[str, str], roles: Sequence[str],
                 tenant_scoped: bool = True) -> Ctx | Answer:
    """Authenticate (401), check the path ids (400, raised), the role (403), the tenant
    (404). The caller's context, or the refusal to send."""
    principal = app[AUTH].authenticate(authorization)
    if principal is None:
        return problem_answer(401, "Unauthorized", "a valid bearer token is required")
    tenant_id = ""
    if tenant_scoped:
        tenant_id = path_id(path["tenant_id"], "tenant_id")
    if "user_id" in path:
        path_id(path["user_id"], "user_id")
    if "call_id" in path:
        path_id(path["call_id"], "call_id", CALL_ID_RE)
    if not principal.has_role(roles):
        return problem_answer(403, "Forbidden", f"role {principal.role} may not do this")
    if tenant_scoped and not principal.may_act_for(tenant_id):
        return problem_answer(404, "Not found", "no such tenant", slug="tenant-not-found")
    return Ctx(principal, tenant_id)


def guarded(handler: Handler, roles: Sequence[str], tenant_scoped: bool = True) -> Callable[
    [web.Request], Awaitable[web.StreamResponse]
]:
    """The handler behind check_access."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        ctx = check_access(request.app, request.headers.get("Authorization"),
                           request.match_info, roles, tenant_scoped)
        if isinstance(ctx, Answer):
            return to_response(ctx)
        return await handler(request, ctx)

    return wrapper
