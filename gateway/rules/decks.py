"""Rate decks at run time: uploaded to Redis, picked up by every worker within a second.

An upload (PUT /v1/rate-decks/{currency}) is parsed and validated whole in the gateway,
then stored with one FCALL (lua/80_deck_put.lua): the CSV, a global version counter and a
``deck.replaced`` event, atomically, and the new version PUBLISHed on the channel named like
the counter. Every worker listens there (gateway.redis.changes) and, woken, runs
`deck_poll_step`, which reads the version counter (one GET); when it moved, the worker reads
the per-currency versions, fetches and parses only the decks that changed, and swaps them
into its `Decks` holder. The same step runs when the listener (re)connects and every
`DECK_RECHECK_SECONDS`, the safety net for a message lost. The call path never touches
Redis for a deck: it reads ``Decks.current`` (a plain dict, replaced whole, never mutated in
place), so a call rates either entirely with the old deck or entirely with the new one.

Decks from the configuration files are the defaults while Redis holds none for a currency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from gateway import metrics
from gateway.redis import contract
from gateway.redis.keys import DECKS_EVENTS, DECKS_VERSION, DECKS_VERSIONS, deck_key, deck_rows_key
from gateway.redis.store import Store
from gateway.rules.rating import KINDS, DeckError, Rate, RateDeck

log = logging.getLogger(__name__)

# How often a worker reads the decks' version although nothing was pushed: the safety net
# under the pushed changes, not the path an upload takes (see TOKEN_RECHECK_SECONDS).
DECK_RECHECK_SECONDS = 5.0
# Largest accepted upload: a 100,000-row deck is about 5 MB of CSV.
DECK_LIMIT_BYTES = 32 * 1024 * 1024


class Decks:
    """The decks one worker rates with: currency -> RateDeck, plus the version loaded."""

    __slots__ = ("current", "loaded_versions", "version")

    def __init__(self, defaults: Mapping[str, RateDeck]) -> None:
        self.current: dict[str, RateDeck] = dict(defaults)
        self.version = 0  # the global counter last acted on; 0: nothing from Redis yet
        self.loaded_versions: dict[str, int] = {}  # currency -> its version from Redis

    def replace(self, deck: RateDeck, version: int) -> None:
        # A new dict, assigned at once: readers see the old mapping or the new one.
        self.current = {**self.current, deck.currency: deck}
        self.loaded_versions[deck.currency] = version

    async def refresh(self, store: Store) -> bool:
        """Load the decks that changed in Redis since the last refresh; True if any did."""
        raw = await store.raw(DECKS_VERSION, "GET", DECKS_VERSION)
        version = int(raw) if raw is not None else 0
        if version == self.version:
            return False
        flat = await store.raw(DECKS_VERSIONS, "HGETALL", DECKS_VERSIONS)
        versions = {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        changed = False
        for currency, deck_version in sorted(versions.items()):
            if self.loaded_versions.get(currency) == deck_version:
                continue
            rows = await store.raw(deck_rows_key(currency), "GET", deck_rows_key(currency))
            text = None if rows is not None else await store.raw(
                deck_key(currency), "GET", deck_key(currency))
            if rows is None and text is None:
                continue
            try:
                # Loading a large deck takes a while: off the event loop, so that calls
                # are still answered meanwhile. JSON rows load ~2.5x faster than the CSV.
                deck = await asyncio.to_thread(
                    deck_from_rows if rows is not None else RateDeck.from_csv,
                    str(rows if rows is not None else text), currency)
            except (DeckError, ValueError, TypeError) as exc:  # validated when stored; be safe
                log.error("rate deck %s version %d in Redis is invalid: %s", currency,
                          deck_version, exc)
                self.loaded_versions[currency] = deck_version
                continue
            self.replace(deck, deck_version)
            log.info("rate deck %s: version %d loaded (%d rows)", currency, deck_version,
                     len(deck))
            changed = True
        self.version = version
        return changed


DECKS: web.AppKey[Decks] = web.AppKey("decks", Decks)

_KIND_OF = {kind: kind for kind in KINDS}  # one shared str per kind, not one per row


def deck_rows_json(deck: RateDeck) -> bytes:
    return orjson.dumps([
        [r.prefix, r.description, r.kind, r.rate_per_minute_micro, r.connection_fee_micro,
         r.initial_increment_seconds, r.subsequent_increment_seconds] for r in deck.rows()
    ])


def deck_from_rows(rows_json: str, currency: str) -> RateDeck:
    """A deck from `deck_rows_json`; Rate and RateDeck still check every invariant."""
    return RateDeck(currency, (
        Rate(p, d, _KIND_OF.get(k, k), rate, fee, a, b)
        for p, d, k, rate, fee, a, b in orjson.loads(rows_json)
    ))


def deck_poll_step(store: Store, decks: Decks) -> Callable[[], Awaitable[None]]:
    """One read of the decks' version (a reload when it moved)."""

    async def step() -> None:
        if await decks.refresh(store):
            metrics.count_deck_reload(True)

    return step


def count_deck_poll_failure() -> None:
    metrics.count_deck_reload(False)


async def store_deck(store: Store, deck: RateDeck, csv_text: str, now: int,
                     actor: str, rows_json: bytes | None = None) -> int:
    """Store a validated deck and announce it (one FCALL); the new global version.
    `rows_json`: `deck_rows_json(deck)` if already computed (off the event loop)."""
    if rows_json is None:
        rows_json = deck_rows_json(deck)
    f = contract.DECK_PUT
    reply = await store.run(
        f,
        f.keys_of(deck=deck_key(deck.currency), version=DECKS_VERSION, events=DECKS_EVENTS,
                  versions=DECKS_VERSIONS, rows=deck_rows_key(deck.currency)),
        f.argv_of(currency=deck.currency, csv=csv_text, rows=len(deck), now=now, actor=actor,
                  rows_json=rows_json),
    )
    return int(reply.version)
