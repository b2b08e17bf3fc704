"""HTTP handlers of the rate decks (api.md, "Tenant administration"): upload and lookup.

PUT /v1/rate-decks/{currency} (operator) replaces a currency's deck atomically. The body is
CSV (``text/csv``, UTF-8) and may be far larger than the 64 KiB of JSON requests: it is read
here, up to `DECK_LIMIT_BYTES`, not through the application-wide limit. A bad line rejects
the whole upload with a 400 whose error ``field`` is ``"line N, column NAME"`` (a header
name), or ``"line N"`` when the whole line is wrong (field count, CSV syntax), or ``"body"``
for an upload that is not UTF-8 or has no rows. Lines are 1-based; the header is line 1.

GET /v1/rate-decks/{currency}/lookup?number=+4420...&kind=outbound (admin, operator) answers
the row that rates that number in this worker's current deck, or 404.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import web

from gateway.errors import DeckNotFound, FieldError, RateNotFound, ValidationError
from gateway.http.web import CLOCK, STORE, Ctx, Route, json_response
from gateway.rules.decks import DECK_LIMIT_BYTES, DECKS, deck_rows_json, store_deck
from gateway.rules.money import format_rate
from gateway.rules.rating import KINDS, DeckError, Rate, RateDeck
from gateway.vocab import Role

CURRENCY_RE = re.compile(r"[A-Z]{3}", re.ASCII)
_NUMBER_RE = re.compile(r"\+?([0-9]{1,15})", re.ASCII)


def path_currency(request: web.Request) -> str:
    currency = request.match_info["currency"]
    if CURRENCY_RE.fullmatch(currency) is None:
        raise ValidationError.one("currency", "must be an ISO 4217 code: 3 capital letters")
    return currency


def deck_error_field(exc: DeckError) -> FieldError:
    """The error item of a bad deck line: ``line N, column NAME`` or ``line N``."""
    where = f"line {exc.line}, column {exc.column}" if exc.column else f"line {exc.line}"
    return FieldError(where, exc.message)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The body, refusing (413) past `limit` bytes without buffering more than that."""
    if request.content_length is not None and request.content_length > limit:
        raise ValidationError.one("body", f"must be at most {limit} bytes", status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValidationError.one("body", f"must be at most {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_deck(raw: bytes, currency: str) -> tuple[RateDeck, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError.one("body", f"must be UTF-8 text (bad byte at offset {exc.start})"
                                  ) from None
    try:
        deck = RateDeck.from_csv(text, currency)
    except DeckError as exc:
        raise ValidationError([deck_error_field(exc)]) from None
    if len(deck) == 0:
        raise ValidationError.one("body", "a deck needs the header line and at least one row")
    return deck, text


async def put_deck(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    currency = path_currency(request)
    raw = await _read_limited(request, DECK_LIMIT_BYTES)
    # A large deck takes about a second to parse: off the event loop, calls go on meanwhile.
    deck, text = await asyncio.to_thread(parse_deck, raw, currency)
    rows_json = await asyncio.to_thread(deck_rows_json, deck)
    version = await store_deck(request.app[STORE], deck, text, int(request.app[CLOCK].now()),
                               ctx.actor, rows_json)
    # This worker rates with it at once; the others when the change is pushed to them.
    request.app[DECKS].replace(deck, version)
    return json_response({"currency": currency, "rows": len(deck), "version": version})


def rate_body(currency: str, rate: Rate) -> dict[str, Any]:
    return {
        "currency": currency,
        "prefix": "+" + rate.prefix,
        "description": rate.description,
        "kind": rate.kind,
        "rate_per_minute": format_rate(rate.rate_per_minute_micro),
        "connection_fee": format_rate(rate.connection_fee_micro),
        "initial_increment": rate.initial_increment_seconds,
        "subsequent_increment": rate.subsequent_increment_seconds,
    }


async def lookup(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    currency = path_currency(request)
    errors: list[FieldError] = []
    # A "+" left unencoded in a query string arrives as a space: strip it with the rest.
    number = request.query.get("number", "").strip()
    match = _NUMBER_RE.fullmatch(number)
    if "number" not in request.query:
        errors.append(FieldError("number", "is required"))
    elif match is None:
        errors.append(FieldError("number", "must be an E.164 number: '+' then 1-15 digits, "
                                 "e.g. +442071838750 (write '+' as %2B in a URL)"))
    kind = request.query.get("kind", "outbound")
    if kind not in KINDS:
        errors.append(FieldError("kind", "must be one of " + ", ".join(KINDS)))
    if errors:
        raise ValidationError(errors)
    assert match is not None
    deck = request.app[DECKS].current.get(currency)
    if deck is None:
        raise DeckNotFound(f"no rate deck for {currency}")
    rate = deck.lookup(match.group(1), kind)
    if rate is None:
        raise RateNotFound(f"no {kind} row of the {currency} deck rates +{match.group(1)}")
    return json_response(rate_body(currency, rate))


D = "/v1/rate-decks/{currency}"

ROUTES: list[Route] = [
    Route("PUT", D, put_deck, (Role.OPERATOR,)),
    Route("GET", f"{D}/lookup", lookup, (Role.ADMIN,)),
]
