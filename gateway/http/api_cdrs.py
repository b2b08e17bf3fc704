"""GET /v1/tenants/{t}/cdrs: ended calls from the ledger, newest first, cursor-paginated.

The ledger is opened on first use (a gateway that never serves a CDR opens no database)
and closed with the application.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import LedgerUnavailable, TenantNotFound, ValidationError
from gateway.http.web import SETTINGS, STORE, Ctx, json_response
from gateway.ledger import Ledger, open_ledger
from gateway.ledger.backoff import describe, expected_error
from gateway.ledger.cdrs import CALL_SQL, call_record, cdr_view, decode_cursor, encode_cursor
from gateway.rules.clock import parse_rfc3339
from gateway.validate import query_int

log = logging.getLogger(__name__)

CDR_PAGE_DEFAULT = 100
CDR_PAGE_MAX = 1000


class LedgerHolder:
    """The process's ledger connection, opened lazily, once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._ledger: Ledger | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Ledger:
        async with self._lock:
            if self._ledger is None:
                self._ledger = await open_ledger(self.url)
            return self._ledger

    async def close(self) -> None:
        if self._ledger is not None:
            await self._ledger.close()
            self._ledger = None


LEDGER: web.AppKey[LedgerHolder] = web.AppKey("ledger", LedgerHolder)


async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
    holder = LedgerHolder(app[SETTINGS].database_url_effective)
    app[LEDGER] = holder
    yield
    await holder.close()


async def call_from_ledger(app: web.Application, tenant_id: str,
                           call_id: str) -> dict[str, str] | None:
    """A call Redis no longer holds (its replay window is over), as its record's fields,
    from the ledger; None if the ledger has none."""
    try:
        ledger = await app[LEDGER].get()
        rows = await ledger.query(CALL_SQL, tenant_id, call_id)
    except Exception as exc:
        if not expected_error(exc):
            raise
        log.warning("GET call: ledger unavailable (%s)", describe(exc))
        raise LedgerUnavailable() from exc
    return call_record(rows[0]) if rows else None


def _time(query: dict[str, str], name: str) -> int | None:
    if name not in query:
        return None
    ts = parse_rfc3339(query[name])
    if ts is None:
        raise ValidationError.one(name, "must be an RFC 3339 date-time")
    return ts


async def list_cdrs(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    query = dict(request.query)
    from_ts, to_ts = _time(query, "from"), _time(query, "to")
    limit = query_int(query, "limit", CDR_PAGE_DEFAULT, 1, CDR_PAGE_MAX)
    before = None
    if "cursor" in query:
        before = decode_cursor(query["cursor"])
        if before is None:
            raise ValidationError.one("cursor", "is not a cursor this API returned")
    # A tenant that does not exist answers 404, as on every other tenant path.
    if not await request.app[STORE].tenant_exists(ctx.tenant_id):
        raise TenantNotFound(ctx.tenant_id)
    try:
        ledger = await request.app[LEDGER].get()
        rows = await ledger.cdrs(ctx.tenant_id, from_ts, to_ts, limit + 1, before)
    except Exception as exc:
        if not expected_error(exc):
            raise
        # The database is down or refusing: retry later, as for Redis (no address shown).
        log.warning("GET cdrs: ledger unavailable (%s)", describe(exc))
        raise LedgerUnavailable() from exc
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(int(last["ended_at"]), str(last["call_id"]))
    return json_response({"cdrs": [cdr_view(r) for r in page], "next_cursor": next_cursor})
