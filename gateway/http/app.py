"""The aiohttp application: ``create_app(settings)`` with its resources in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import metrics
from gateway.config import Settings
from gateway.errors import StoreUnavailable
from gateway.http import api, api_alerts, api_audit, api_decks, api_tokens, openapi
from gateway.http.api import observer_ctx
from gateway.http.api_cdrs import ledger_ctx
from gateway.http.api_tokens import TOKENS_TABLE, tokens_ctx
from gateway.http.auth import Authenticator
from gateway.http.problems import problems_middleware
from gateway.http.tokens import TOKEN_RECHECK_SECONDS, TokenTable
from gateway.http.web import (
    ADMIN,
    AUTH,
    BODY_LIMIT_BYTES,
    CALLS,
    CLOCK,
    SETTINGS,
    STORE,
    Route,
    add_routes,
)
from gateway.polling import POLLER, SharedPoll
from gateway.redis.changes import ChangeListener
from gateway.redis.keys import DECKS_VERSION, TOKENS_VERSION
from gateway.redis.store import Store
from gateway.rules.admin import AdminService
from gateway.rules.calls import CallService
from gateway.rules.clock import Clock, SystemClock
from gateway.rules.decks import (
    DECK_RECHECK_SECONDS,
    DECKS,
    Decks,
    count_deck_poll_failure,
    deck_poll_step,
)

log = logging.getLogger(__name__)

# Every route with a token, by part of api.md (the handlers' modules declare them).
ROUTES: list[Route] = [*api.ROUTES, *api_decks.ROUTES, *api_audit.ROUTES, *api_tokens.ROUTES,
                       *api_alerts.ROUTES]

# How long a stopping worker waits for its queued voids to reach Redis.
VOIDS_DRAIN_SECONDS = 5.0


# The channels the Lua functions publish a new version on (named like the version key), and
# the step each wakes.
CHANGE_STEPS = {TOKENS_VERSION: "token", DECKS_VERSION: "rate-deck"}
CHANGES = web.AppKey("changes", ChangeListener)


async def changes_ctx(app: web.Application) -> AsyncIterator[None]:
    """Token and deck changes pushed to this worker: a connection of its own blocked on
    SUBSCRIBE, which wakes the step of what changed, and all of them on every (re)connect
    (what was published while it was away is lost: they read the versions again)."""
    poller = app[POLLER]

    def changed(channel: str) -> None:
        step = CHANGE_STEPS.get(channel)
        if step is not None:
            poller.wake(step)

    def connected() -> None:
        poller.wake(*CHANGE_STEPS.values())

    listener = ChangeListener(app[STORE].backend.listen_addresses, list(CHANGE_STEPS),
                              changed, connected)
    app[CHANGES] = listener
    task = asyncio.create_task(listener.run(), name="change-listener")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings, *, clock: Clock | None = None,
               store: Store | None = None) -> web.Application:
    """The gateway. ``settings.redis_url`` must be set (``serve`` starts a local Redis
    first when the configuration names none); tests may pass their own clock and store."""
    app = web.Application(middlewares=[problems_middleware], client_max_size=BODY_LIMIT_BYTES)
    app[SETTINGS] = settings
    app[CLOCK] = clock or SystemClock()
    app[AUTH] = Authenticator(settings.operator_token, settings.tokens, clock=app[CLOCK])
    app[DECKS] = Decks(settings.rate_decks)
    # Rate decks and run-time tokens are reloaded when a change is pushed (changes_ctx);
    # one slow tick rechecks both as a safety net: one wake-up.
    app[POLLER] = SharedPoll(min(DECK_RECHECK_SECONDS, TOKEN_RECHECK_SECONDS))

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
        except StoreUnavailable as exc:
            # Not fatal: calls are denied (emergency allowed) until Redis answers, and the
            # library is loaded on the first call that finds it missing.
            log.error("Redis unavailable at start-up: %r", exc)
        else:
            try:
                for warning in await s.persistence_warnings():
                    log.warning("%s", warning)
            except StoreUnavailable as exc:
                log.warning("Redis's persistence settings not read: %r", exc)
        app[STORE] = s
        app[CALLS] = CallService(settings, s, app[CLOCK], app[DECKS])
        app[ADMIN] = AdminService(settings, s, app[CLOCK])
        yield
        # Voids still queued go out before the connection closes (gateway.rules.voids).
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
    app[TOKENS_TABLE] = TokenTable(app[AUTH])
    app.cleanup_ctx.append(tokens_ctx)  # run-time tokens: after redis_ctx, it needs STORE
    app.cleanup_ctx.append(changes_ctx)  # after the steps it wakes are registered
    add_routes(app, [*ROUTES, *api.PUBLIC_ROUTES, *openapi.PUBLIC_ROUTES])
    return app
