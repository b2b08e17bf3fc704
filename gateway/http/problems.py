"""Exceptions to RFC 9457 problem documents: one table, for aiohttp's routes and the fast path.

Each domain error of gateway.errors is answered by exactly one entry of :data:`PROBLEMS`
(status, title, type slug, detail). The aiohttp middleware and the call-control fast path
(gateway.http.fastpath) both call :func:`error_answer`, so both answer byte for byte alike.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from aiohttp import web

from gateway.errors import (
    CallEnded,
    CallNotFound,
    Conflict,
    DeckNotFound,
    FieldError,
    LedgerUnavailable,
    NotFound,
    RateNotFound,
    RoleNotAllowed,
    ServiceUnavailable,
    StoreUnavailable,
    TenantNotFound,
    TokenNotFound,
    ValidationError,
    WebhookNotFound,
)
from gateway.http.web import BODY_LIMIT_BYTES, Answer, problem_answer, to_response

log = logging.getLogger(__name__)


class Problem(NamedTuple):
    """How one exception class is answered. ``detail`` is a template: ``{0}`` is replaced
    by the exception's message (a detail without it is the same for every instance)."""

    status: int
    title: str
    slug: str
    detail: str

    def answer(self, exc: BaseException) -> Answer:
        detail = self.detail.format(exc) if "{0}" in self.detail else self.detail
        return problem_answer(self.status, self.title, detail, slug=self.slug)


REDIS_UNAVAILABLE = Problem(503, "Service unavailable", "service-unavailable",
                            "Redis is unavailable; retry")

# Exact classes: subclasses are looked up by their first listed base (see error_answer).
PROBLEMS: dict[type[BaseException], Problem] = {
    TenantNotFound: Problem(404, "Not found", "tenant-not-found", "no such tenant"),
    CallNotFound: Problem(404, "Not found", "call-not-found", "no such call"),
    NotFound: Problem(404, "Not found", "not-found", "no such resource"),
    WebhookNotFound: Problem(404, "Not found", "webhook-not-found", "no such webhook"),
    TokenNotFound: Problem(404, "Not found", "token-not-found", "no such token"),
    DeckNotFound: Problem(404, "Not found", "deck-not-found", "{0}"),
    RateNotFound: Problem(404, "Not found", "rate-not-found", "{0}"),
    RoleNotAllowed: Problem(403, "Forbidden", "forbidden",
                            "this route makes switch tokens only, not {0}"),
    CallEnded: Problem(409, "Conflict", "call-ended", "the call has already ended"),
    Conflict: Problem(409, "Conflict", "conflict", "{0}"),
    LedgerUnavailable: Problem(503, "Service unavailable", "service-unavailable",
                               "the ledger is unavailable; retry"),
    ServiceUnavailable: REDIS_UNAVAILABLE,
    StoreUnavailable: REDIS_UNAVAILABLE,
}

# The answers that do not depend on the instance, encoded once.
_FIXED: dict[type[BaseException], Answer] = {
    cls: p.answer(Exception()) for cls, p in PROBLEMS.items() if "{0}" not in p.detail}


def _problem_of(cls: type[BaseException]) -> tuple[type[BaseException], Problem] | None:
    for base in cls.__mro__:
        problem = PROBLEMS.get(base)
        if problem is not None:
            return base, problem
    return None


def error_answer(exc: BaseException, method: str, path: str) -> Answer | None:
    """The problem document for an exception a handler may raise; None: not ours (a bug)."""
    if isinstance(exc, ValidationError):
        title = "Request too large" if exc.status == 413 else "Invalid request"
        return problem_answer(exc.status, title, str(exc), exc.errors, slug="validation")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return problem_answer(413, "Request too large",
                              f"the body exceeds {BODY_LIMIT_BYTES} bytes",
                              [FieldError("body", f"must be at most {BODY_LIMIT_BYTES} bytes")],
                              slug="validation")
    if isinstance(exc, web.HTTPException):
        if exc.status >= 400:
            return problem_answer(exc.status, exc.reason, exc.text or exc.reason,
                                  slug=str(exc.status))
        return None
    found = _problem_of(type(exc))
    if found is None:
        return None
    cls, problem = found
    if cls is StoreUnavailable:
        log.warning("%s %s: Redis unavailable: %r", method, path, exc)
    fixed = _FIXED.get(cls)
    return fixed if fixed is not None else problem.answer(exc)


@web.middleware
async def problems_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure leaves as an RFC 9457 problem document; bad input is never a 500."""
    try:
        return await handler(request)
    except Exception as exc:
        answer = error_answer(exc, request.method, request.path)
        if answer is None:
            raise
        return to_response(answer)
