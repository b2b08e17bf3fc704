"""The aiohttp application: ``create_app(settings)`` with its resources in cleanup_ctx."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import metrics
from gateway.admin import AdminService
from gateway.api import (
    ADMIN,
    AUTH,
    BODY_LIMIT_BYTES,
    CALLS,
    CLOCK,
    SETTINGS,
    STORE,
    add_routes,
    observer_ctx,
    problems_middleware,
)
from gateway.api_alerts import add_alert_routes
from gateway.api_audit import add_audit_routes
from gateway.api_cdrs import ledger_ctx
from gateway.api_decks import add_deck_routes
from gateway.api_tokens import add_token_routes
from gateway.auth import Authenticator
from gateway.calls import UNAVAILABLE, CallService
from gateway.clock import Clock, SystemClock
from gateway.config import Settings
from gateway.decks import (
    DECK_POLL_SECONDS,
    DECKS,
    Decks,
    count_deck_poll_failure,
    deck_poll_step,
)
from gateway.openapi import add_openapi_route
from gateway.polling import POLLER, SharedPoll
from gateway.store import Store
from gateway.tokens import TOKEN_POLL_SECONDS

log = logging.getLogger(__name__)

# How long a stopping worker waits for its queued voids to reach Redis.
VOIDS_DRAIN_SECONDS = 5.0


def create_app(settings: Settings, *, clock: Clock | None = None,
               store: Store | None = None) -> web.Application:
    """The gateway. ``settings.redis_url`` must be set (``serve`` starts a local Redis
    first when the configuration names none); tests may pass their own clock and store."""
    app = web.Application(middlewares=[problems_middleware], client_max_size=BODY_LIMIT_BYTES)
    app[SETTINGS] = settings
    app[CLOCK] = clock or SystemClock()
    app[AUTH] = Authenticator(settings.operator_token, settings.tokens, clock=app[CLOCK])
    app[DECKS] = Decks(settings.rate_decks)
    # One tick for the background polls (rate decks, run-time tokens): one wake-up.
    app[POLLER] = SharedPoll(min(DECK_POLL_SECONDS, TOKEN_POLL_SECONDS))

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        own = store is None
        if store is None:
            if not settings.redis_url:
                raise RuntimeError("create_app needs settings.redis_url")
            s = Store.for_settings(settings)
        else:
            s = store
        try:
            await s.load_functions()
        except UNAVAILABLE as exc:
            # Not fatal: calls are denied (emergency allowed) until Redis answers, and the
            # library is loaded on the first call that finds it missing.
            log.error("Redis unavailable at start-up: %r", exc)
        else:
            try:
                for warning in await s.persistence_warnings():
                    log.warning("%s", warning)
            except UNAVAILABLE as exc:
                log.warning("Redis's persistence settings not read: %r", exc)
        app[STORE] = s
        app[CALLS] = CallService(settings, s, app[CLOCK], app[DECKS])
        app[ADMIN] = AdminService(settings, s, app[CLOCK])
        yield
        # Voids still queued go out before the connection closes (gateway.voids).
        await app[CALLS].voider.drain(VOIDS_DRAIN_SECONDS)
        await app[CALLS].voider.close()
        if own:
            await s.close()

    async def decks_ctx(app: web.Application) -> AsyncIterator[None]:
        # Uploaded decks: loaded before the first request when Redis answers, then polled.
        try:
            await app[DECKS].refresh(app[STORE])
        except Exception as exc:
            log.warning("rate decks not loaded from Redis at start-up: %r", exc)
        app[POLLER].add("rate-deck", deck_poll_step(app[STORE], app[DECKS]),
                        on_failure=count_deck_poll_failure)
        yield
        await app[POLLER].remove("rate-deck")

    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(decks_ctx)
    app.cleanup_ctx.append(observer_ctx)  # /metrics and /readyz: Redis sampled once a second
    app.cleanup_ctx.append(ledger_ctx)  # GET …/cdrs reads the ledger (opened on first use)
    app.cleanup_ctx.append(metrics.flusher_ctx)
    add_routes(app)
    add_deck_routes(app)
    add_audit_routes(app)
    add_token_routes(app)  # also its poller (cleanup_ctx), after redis_ctx: it needs STORE
    add_alert_routes(app)
    add_openapi_route(app)  # last: it describes the routes above
    return app
