"""GET /v1/tenants/{tenant_id}/audit: who changed what, and when (admin, operator).

Every administrative change (tenant, users, top-ups, toll-free numbers) is recorded by its
Lua function in the same atomic step as the change: an event on the partition stream (for
the ledger) and the same record on the tenant's capped audit list (lua/00_lib.lua `audit`,
keys.AUDIT_MAX_ENTRIES newest entries). This endpoint reads that list, newest first.
``actor`` is the id of the token that made the change (``bootstrap`` for the
CALLGATE_OPERATOR_TOKEN); tokens themselves are never recorded.

Pagination: ``limit`` (1-200, default 50) and ``cursor``, the ``next_cursor`` of the
previous page: the stream id of the last entry returned, so that entries added meanwhile
neither repeat nor shift a page.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import TenantNotFound, ValidationError
from gateway.http.web import STORE, Ctx, Route, json_response
from gateway.redis.keys import AUDIT_MAX_ENTRIES
from gateway.rules.clock import rfc3339
from gateway.validate import query_int
from gateway.vocab import Role

# A Redis stream entry id: milliseconds-sequence.
_STREAM_ID_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})", re.ASCII)
# Recorded by emit() for every event; shown as top-level members, not as details.
_ENVELOPE = ("id", "type", "tenant", "ts", "actor")


def _stream_id(text: str) -> tuple[int, int]:
    m = _STREAM_ID_RE.fullmatch(text)
    if m is None:
        raise ValidationError.one("cursor", "must be the next_cursor of a previous page")
    return int(m.group(1)), int(m.group(2))


def audit_entry(raw: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(raw)
    details = {k: v for k, v in data.items() if k not in _ENVELOPE}
    if isinstance(details.get("record"), str):  # the user record, stored as JSON text
        details["record"] = orjson.loads(details["record"])
    return {
        "id": str(data.get("id", "")),
        "at": rfc3339(int(data.get("ts", 0))),
        "actor": str(data.get("actor", "")),
        "action": str(data.get("type", "")),
        "details": details,
    }


async def get_audit(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    limit = query_int(request.query, "limit", 50, 1, 200)
    cursor = _stream_id(request.query["cursor"]) if "cursor" in request.query else None
    store = request.app[STORE]
    k = store.keys(ctx.tenant_id)
    raws = await store.raw(k.audit, "LRANGE", k.audit, 0, AUDIT_MAX_ENTRIES - 1)
    if not raws and not await store.raw(k.tenant, "EXISTS", k.tenant):
        raise TenantNotFound(ctx.tenant_id)
    entries: list[dict[str, Any]] = []
    for raw in raws:
        entry = audit_entry(str(raw))
        if cursor is not None and _stream_id(entry["id"]) >= cursor:
            continue
        entries.append(entry)
        if len(entries) == limit + 1:
            break
    more = len(entries) > limit
    entries = entries[:limit]
    return json_response({
        "entries": entries,
        "next_cursor": entries[-1]["id"] if more else None,
    })


ROUTES: list[Route] = [
    Route("GET", "/v1/tenants/{tenant_id}/audit", get_audit, (Role.ADMIN,)),
]
