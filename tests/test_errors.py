"""Errors in one home: every domain error has one problem document, every store refusal one
domain error, and every transport failure one StoreUnavailable of the right kind."""

from __future__ import annotations

import inspect

import orjson
import pytest

from gateway import errors
from gateway.errors import (
    CallEnded,
    CallNotFound,
    Conflict,
    NotFound,
    StoreDisconnected,
    StoreErrorReply,
    StoreTimeout,
    StoreUnavailable,
    TenantNotFound,
    ValidationError,
)
from gateway.http.problems import PROBLEMS, error_answer
from gateway.http.web import problem_answer
from gateway.redis.client import RedisUnavailable, ReplyError
from gateway.redis.store import Status, StoreError, unavailable
from gateway.rules.refusals import domain_error

# Not answered through the table: bad input carries its fields (and 400 or 413); a bad
# configuration, or a newer function library in Redis, stops the start-up.
NOT_IN_TABLE = {ValidationError, errors.ConfigError, errors.NewerLibrary}


def domain_errors() -> list[type[BaseException]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, Exception) and cls.__module__ == errors.__name__
            and cls not in NOT_IN_TABLE]


@pytest.mark.parametrize("cls", domain_errors(), ids=lambda c: c.__name__)
def test_every_domain_error_has_a_problem_document(cls: type[Exception]) -> None:
    exc = cls("x") if cls is not StoreDisconnected else cls("x", sent=False)
    answer = error_answer(exc, "GET", "/")
    assert answer is not None and answer.content_type == "application/problem+json"
    doc = orjson.loads(answer.body)
    assert list(doc) == ["type", "title", "status", "detail"]
    assert doc["type"].startswith("urn:callgate:problem:") and doc["status"] == answer.status


def test_the_answers_are_those_the_handlers_gave() -> None:
    """Byte for byte what each handler answered before the table (the switch's 404s and
    the 503 of a Redis outage included)."""
    expected = {
        TenantNotFound(): problem_answer(404, "Not found", "no such tenant",
                                         slug="tenant-not-found"),
        CallNotFound(): problem_answer(404, "Not found", "no such call", slug="call-not-found"),
        CallEnded(): problem_answer(409, "Conflict", "the call has already ended",
                                   slug="call-ended"),
        Conflict("why"): problem_answer(409, "Conflict", "why", slug="conflict"),
        errors.RoleNotAllowed("admin"): problem_answer(
            403, "Forbidden", "this route makes switch tokens only, not admin"),
        StoreTimeout("late"): problem_answer(503, "Service unavailable",
                                             "Redis is unavailable; retry",
                                             slug="service-unavailable"),
        errors.DeckNotFound("no rate deck for XTS"): problem_answer(
            404, "Not found", "no rate deck for XTS", slug="deck-not-found"),
    }
    for exc, answer in expected.items():
        assert error_answer(exc, "POST", "/") == answer, exc


def test_an_exception_that_is_not_ours_is_not_answered() -> None:
    """A bug stays a 500 with its traceback: not mistaken for an outage."""
    assert error_answer(RuntimeError("bug"), "GET", "/") is None
    assert error_answer(OSError("not Redis"), "GET", "/") is None
    assert PROBLEMS[StoreUnavailable].status == 503


@pytest.mark.parametrize(("status", "detail", "expected"), [
    (Status.TENANT_NOT_FOUND, [], TenantNotFound),
    (Status.CALL_NOT_FOUND, [], CallNotFound),
    (Status.CALL_ENDED, [], CallEnded),
    (Status.NOT_FOUND, [], NotFound),
    (Status.NUMBER_CONFLICT, ["+14165550100"], Conflict),
    (Status.IDEMPOTENCY_CONFLICT, [], Conflict),
    (Status.CURRENCY_LOCKED, [], Conflict),
    (Status.BALANCE_LIMIT, [], ValidationError),
    (Status.USED_BACKWARDS, [120], ValidationError),
    (Status.LATE, [], StoreError),  # the caller's to handle: not a refusal
])
def test_one_translation_of_the_store_s_refusals(status: Status, detail: list[object],
                                                 expected: type[Exception]) -> None:
    assert type(domain_error(StoreError(status, detail))) is expected


@pytest.mark.parametrize(("cause", "kind", "may_have_run"), [
    (TimeoutError(), StoreTimeout, True),  # written, no reply by the deadline
    (RedisUnavailable("broke in flight", sent=True), StoreDisconnected, True),
    (RedisUnavailable("refused", sent=False), StoreDisconnected, False),
    (ConnectionResetError(), StoreDisconnected, False),
    (ReplyError("OOM command not allowed"), StoreErrorReply, False),
])
def test_transport_failures_become_one_exception_that_says_if_the_command_may_have_run(
        cause: BaseException, kind: type[StoreUnavailable], may_have_run: bool) -> None:
    """calls.py voids an authorize answered deny exactly when it may have run."""
    exc = unavailable(cause)
    assert type(exc) is kind and exc.may_have_run is may_have_run
    assert isinstance(exc, StoreUnavailable)
    assert unavailable(exc) is exc


def test_the_metric_labels_are_unchanged() -> None:
    assert (StoreTimeout.kind, StoreDisconnected.kind, StoreErrorReply.kind) == (
        "timeout", "unavailable", "error_reply")
    assert isinstance(StoreTimeout(), TimeoutError)  # asyncio.timeout's callers still see one
