"""HTTP handlers of the run-time tokens (api.md, "Tokens").

Operator: ``POST`` / ``GET /v1/tokens``, ``DELETE /v1/tokens/{token_id}``, any role and
tenants. A tenant's admin: ``POST`` / ``GET /v1/tenants/{tenant_id}/tokens``,
``DELETE /v1/tenants/{tenant_id}/tokens/{token_id}``, limited to ``switch`` tokens of that
tenant alone: another role is 403, another tenant list a 400 naming ``tenants``, and a
token that is not such a token (another tenant's, an admin token, a switch token shared
with another tenant) is 404 exactly like a token that does not exist.

The worker that makes a change reloads its table at once; the others when the change is
pushed to them (gateway.http.tokens).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import TenantNotFound, TokenNotFound
from gateway.http.tokens import (
    TokenTable,
    create_token,
    list_tokens,
    parse_token_spec,
    revoke_token,
    token_poll_step,
)
from gateway.http.web import (
    CLOCK,
    STORE,
    Ctx,
    Route,
    json_response,
)
from gateway.polling import POLLER
from gateway.validate import json_object, path_id
from gateway.vocab import Role

log = logging.getLogger(__name__)

TOKENS_TABLE: web.AppKey[TokenTable] = web.AppKey("tokens", TokenTable)


async def _reload_here(app: web.Application) -> None:
    """This worker uses the change at once (its listener would a round trip later); a
    failure here is only logged: the pushed change and the recheck retry."""
    try:
        await app[TOKENS_TABLE].refresh(app[STORE])
    except Exception as exc:
        log.warning("token table not reloaded after a change (the token step retries): %r", exc)


async def _tenant_exists(request: web.Request, tenant_id: str) -> None:
    if not await request.app[STORE].tenant_exists(tenant_id):
        raise TenantNotFound(tenant_id)


async def _create(request: web.Request, ctx: Ctx, tenant_id: str | None) -> web.StreamResponse:
    body = json_object(await request.read())
    now = int(request.app[CLOCK].now())
    spec = parse_token_spec(body, now, tenant_id)  # RoleNotAllowed: 403
    record, secret = await create_token(request.app[STORE], spec, now, ctx.actor)
    await _reload_here(request.app)
    return json_response(record.created(secret), 201)


async def _revoke(request: web.Request, ctx: Ctx, tenant_id: str | None) -> web.StreamResponse:
    token_id = path_id(request.match_info["token_id"], "token_id")
    if not await revoke_token(request.app[STORE], token_id, tenant_id, ctx.actor,
                              int(request.app[CLOCK].now())):
        raise TokenNotFound(token_id)
    await _reload_here(request.app)
    return web.Response(status=204)


async def post_tokens(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return await _create(request, ctx, None)


async def get_tokens(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return json_response({"tokens": await list_tokens(request.app[STORE])})


async def delete_token(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return await _revoke(request, ctx, None)


async def post_tenant_tokens(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await _tenant_exists(request, ctx.tenant_id)
    return await _create(request, ctx, ctx.tenant_id)


async def get_tenant_tokens(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await _tenant_exists(request, ctx.tenant_id)
    return json_response({"tokens": await list_tokens(request.app[STORE], ctx.tenant_id)})


async def delete_tenant_token(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await _tenant_exists(request, ctx.tenant_id)
    return await _revoke(request, ctx, ctx.tenant_id)


async def tokens_ctx(app: web.Application) -> AsyncIterator[None]:
    """Loads the run-time tokens before the first request when Redis answers, then reloads
    them when woken (app.py's changes_ctx) or rechecked; at the end, writes the last uses
    not yet written."""
    table = app[TOKENS_TABLE]
    try:
        await table.refresh(app[STORE])
    except Exception as exc:
        log.warning("run-time tokens not loaded from Redis at start-up (loaded when Redis "
                    "answers): %r", exc)
    app[POLLER].add("token", token_poll_step(app[STORE], table, app[CLOCK]))
    yield
    await app[POLLER].remove("token")
    try:
        await table.flush_seen(app[STORE], app[CLOCK])
    except Exception as exc:
        log.warning("last token uses not written at shutdown: %r", exc)


TT = "/v1/tenants/{tenant_id}/tokens"

ROUTES: list[Route] = [
    Route("POST", "/v1/tokens", post_tokens, (Role.OPERATOR,)),
    Route("GET", "/v1/tokens", get_tokens, (Role.OPERATOR,)),
    Route("DELETE", "/v1/tokens/{token_id}", delete_token, (Role.OPERATOR,)),
    Route("POST", TT, post_tenant_tokens, (Role.ADMIN,)),
    Route("GET", TT, get_tenant_tokens, (Role.ADMIN,)),
    Route("DELETE", f"{TT}/{{token_id}}", delete_tenant_token, (Role.ADMIN,)),
]
