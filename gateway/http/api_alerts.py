"""HTTP handlers of alerts and webhooks (api.md, Notifications; role admin, operator too).

PUT/GET /v1/tenants/{t}/alerts: the tenant's alert settings (gateway.notify.alerts).
PUT/GET/DELETE /v1/tenants/{t}/webhooks/{webhook_id}: a webhook, never with its secret.
GET /v1/tenants/{t}/webhooks/{webhook_id}/deliveries?limit=: its deliveries, newest first.
Destinations are checked at registration here and again at each delivery by the notifier.
"""

from __future__ import annotations

from aiohttp import web

from gateway.http.web import (
    CLOCK,
    SETTINGS,
    STORE,
    Ctx,
    Route,
    json_response,
)
from gateway.notify import alerts
from gateway.redis.keys import DELIVERY_LOG_MAX
from gateway.validate import json_object, path_id, query_int
from gateway.vocab import Role


async def put_alerts(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    spec = alerts.parse_alerts(json_object(await request.read()))
    await alerts.put_alerts(request.app[STORE], ctx.tenant_id, spec,
                            int(request.app[CLOCK].now()), ctx.actor)
    return json_response(spec.body())


async def get_alerts(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return json_response((await alerts.get_alerts(request.app[STORE], ctx.tenant_id)).body())


def _webhook_id(request: web.Request) -> str:
    return path_id(request.match_info["webhook_id"], "webhook_id")


async def put_webhook(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    webhook_id = _webhook_id(request)
    spec = await alerts.parse_webhook(json_object(await request.read()),
                                      request.app[SETTINGS].webhook_allow_private)
    body, created = await alerts.put_webhook(request.app[STORE], ctx.tenant_id, webhook_id,
                                             spec, int(request.app[CLOCK].now()), ctx.actor)
    return json_response(body, 201 if created else 200)


async def get_webhook(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return json_response(await alerts.get_webhook(request.app[STORE], ctx.tenant_id,
                                                  _webhook_id(request)))


async def delete_webhook(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    await alerts.delete_webhook(request.app[STORE], ctx.tenant_id, _webhook_id(request),
                                int(request.app[CLOCK].now()), ctx.actor)
    return web.Response(status=204)


async def get_deliveries(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    webhook_id = _webhook_id(request)
    limit = query_int(request.query, "limit", 20, 1, DELIVERY_LOG_MAX)
    rows = await alerts.deliveries(request.app[STORE], ctx.tenant_id, webhook_id, limit)
    return json_response({"deliveries": rows})


T = "/v1/tenants/{tenant_id}"
W = f"{T}/webhooks/{{webhook_id}}"
ADMIN = (Role.ADMIN,)

ROUTES: list[Route] = [
    Route("PUT", f"{T}/alerts", put_alerts, ADMIN),
    Route("GET", f"{T}/alerts", get_alerts, ADMIN),
    Route("PUT", W, put_webhook, ADMIN),
    Route("GET", W, get_webhook, ADMIN),
    Route("DELETE", W, delete_webhook, ADMIN),
    Route("GET", f"{W}/deliveries", get_deliveries, ADMIN),
]
