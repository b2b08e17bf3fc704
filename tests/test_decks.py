"""Rate decks at run time: upload, atomic replacement, pick-up by every worker within 1 s.

Decks are global keys of the shared session Redis, so these tests use currencies that no
other test rates with (ISO 4217 reserves XTS for tests; XT* otherwise unassigned).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
import pytest
import redis

from gateway.http.app import create_app
from gateway.redis.keys import DECKS_EVENTS, deck_key
from gateway.redis.server import RedisServer
from gateway.rules.rating import HEADER
from tests.support.gateway import make_settings
from tests.support.gwclient import AUTH, Gateway

CSV_HEADERS = {**AUTH, "Content-Type": "text/csv"}
HEAD = ",".join(HEADER)
LONDON = "+442071838750"


def deck(*rows: str) -> bytes:
    return ("\n".join([HEAD, *rows]) + "\n").encode()


@pytest.fixture
async def two(redis_server: RedisServer, aiohttp_client: Any,
              clock: Any) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two app instances (two workers) on the same Redis."""
    settings = make_settings(redis_server.url)
    a = await aiohttp_client(create_app(settings, clock=clock))
    b = await aiohttp_client(create_app(settings, clock=clock))
    yield Gateway(a, clock, settings), Gateway(b, clock, settings)


async def put_deck(gw: Gateway, currency: str, body: bytes, status: int = 200) -> Any:
    resp = await gw.client.put(f"/v1/rate-decks/{currency}", data=body, headers=CSV_HEADERS)
    doc = await resp.json(content_type=None)
    assert resp.status == status, doc
    return doc


async def lookup(gw: Gateway, currency: str, number: str, status: int | None = 200) -> Any:
    q = f"?number={number.replace('+', '%2B')}"
    return await gw.req("GET", f"/v1/rate-decks/{currency}/lookup{q}", status=status)


async def until(deadline_s: float, probe: Any) -> Any:
    """Poll `probe()` until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    while True:
        got = await probe()
        if got:
            return got
        assert time.monotonic() < end, "not within the deadline"
        await asyncio.sleep(0.02)


async def test_upload_then_every_instance_rates_with_it_within_1s(
    two: tuple[Gateway, Gateway], redis_sync: redis.Redis, tenant_id: str
) -> None:
    a, b = two
    # A first deck; the tenant can only be created in a currency that has one.
    await put_deck(a, "XTS", deck("44,UK,outbound,0.60,,60,60", "1,NANP,outbound,0.01,,60,60"))

    async def b_has_deck() -> bool:
        return "prefix" in await lookup(b, "XTS", LONDON, status=None)

    await until(1.0, b_has_deck)
    await a.tenant(tenant_id, currency="XTS")
    await a.user(tenant_id, "u", "US", "pay_as_you_go")
    await a.topup(tenant_id, "1.00", "k1")
    # 1.00 at 0.60/min in 60 s increments buys one minute.
    first = await b.call(tenant_id, "c0", LONDON, user="u")
    assert (first["source"], first["granted_seconds"]) == ("credits", 60), first
    await b.end(tenant_id, "c0", 0)

    # Worker A takes the new deck; worker B must rate with it within 1 s of the answer.
    body = await put_deck(a, "XTS", deck("44,UK,outbound,0.30,,60,60",
                                         "1,NANP,outbound,0.01,,60,60"))
    assert body["rows"] == 2 and body["currency"] == "XTS"
    uploaded = time.monotonic()
    attempts = 0

    async def rated_with_new_deck() -> bool:
        nonlocal attempts
        attempts += 1
        d = await b.call(tenant_id, f"c{attempts}", LONDON, user="u")
        await b.end(tenant_id, f"c{attempts}", 0)  # unanswered: releases the reservation
        return bool(d["granted_seconds"] == 180)  # 1.00 at 0.30/min: three minutes

    await until(1.0, rated_with_new_deck)
    assert time.monotonic() - uploaded < 1.0
    row = await lookup(b, "XTS", LONDON)
    assert row == {"currency": "XTS", "prefix": "+44", "description": "UK", "kind": "outbound",
                   "rate_per_minute": "0.300000", "connection_fee": "0.000000",
                   "initial_increment": 60, "subsequent_increment": 60}

    # The change is an event with its actor (the bootstrap operator's token id).
    last = cast(list[Any], redis_sync.xrevrange(DECKS_EVENTS, count=1))[0][1]
    data = orjson.loads(last[b"data"])
    assert (data["type"], data["currency"], data["rows"], data["actor"]) == (
        "deck.replaced", "XTS", 2, "bootstrap")


async def test_longest_prefix_wins_and_kinds_are_separate(two: tuple[Gateway, Gateway]) -> None:
    a, _ = two
    await put_deck(a, "XTB", deck("44,UK,outbound,0.10,,,", "4420,London,outbound,0.05,,,",
                                  "44,UK toll-free origin,toll_free_inbound,0.02,,,"))
    assert (await lookup(a, "XTB", LONDON))["prefix"] == "+4420"
    assert (await lookup(a, "XTB", "+441632960000"))["prefix"] == "+44"
    resp = await a.req("GET", "/v1/rate-decks/XTB/lookup?number=%2B4420&kind=toll_free_inbound")
    assert resp["rate_per_minute"] == "0.020000"
    # An unencoded '+' arrives as a space: still understood.
    assert (await a.req("GET", "/v1/rate-decks/XTB/lookup?number=+4420"))["prefix"] == "+4420"
    doc = await lookup(a, "XTB", "+33123456789", status=404)
    assert doc["type"].endswith("rate-not-found")
    doc = await lookup(a, "XTQ", LONDON, status=404)
    assert doc["type"].endswith("deck-not-found")


@pytest.mark.parametrize("body,field,message", [
    (deck("44,UK,outbound,0.10,,60,60", "33,FR,outbound,abc,,60,60"),
     "line 3, column rate_per_minute", "decimal"),
    (deck("44,UK,outbound,-0.10,,60,60"), "line 2, column rate_per_minute", "decimal"),
    (deck("44,UK,outbound,1e3,,60,60"), "line 2, column rate_per_minute", "decimal"),
    (deck("44,UK,outbound,NaN,,60,60"), "line 2, column rate_per_minute", "decimal"),
    (deck("44,UK,inbound,0.10,,60,60"), "line 2, column kind", "outbound"),
    (deck("044,UK,outbound,0.10,,60,60"), "line 2, column prefix", "digits"),
    (deck("44,UK,outbound,0.10,,0,60"), "line 2, column initial_increment", "seconds"),
    (deck("44,UK,outbound,0.10,,60"), "line 2", "fields"),
    (deck("44,UK,outbound,0.10,,60,60", "44,UK again,outbound,0.20,,60,60"),
     "line 3, column prefix", "duplicate of line 2"),
    (b"prefix,description,kind,rate,connection_fee,initial_increment,subsequent_increment\n"
     b"44,UK,outbound,0.10,,60,60\n", "line 1, column rate_per_minute", "header"),
    (deck(), "body", "at least one row"),
    (b"", "line 1, column prefix", "header"),
    (deck("44,\xff,outbound,0.10,,60,60").replace(b"\xc3\xbf", b"\xff"), "body", "UTF-8"),
], ids=["rate-word", "negative", "exponent", "nan", "kind", "prefix-0", "increment-0",
        "field-count", "duplicate", "header", "no-rows", "empty", "not-utf8"])
async def test_one_bad_line_rejects_the_whole_upload(
    two: tuple[Gateway, Gateway], body: bytes, field: str, message: str
) -> None:
    a, _ = two
    await put_deck(a, "XTC", deck("44,UK,outbound,0.10,,60,60"))
    resp = await a.client.put("/v1/rate-decks/XTC", data=body, headers=CSV_HEADERS)
    doc = await resp.json(content_type=None)
    assert resp.status == 400 and resp.content_type == "application/problem+json", doc
    assert doc["errors"][0]["field"] == field, doc
    assert message in doc["errors"][0]["message"], doc
    # Nothing replaced: the old deck still rates.
    assert (await lookup(a, "XTC", LONDON))["rate_per_minute"] == "0.100000"


async def test_bad_currency_size_and_role(two: tuple[Gateway, Gateway]) -> None:
    a, _ = two
    for currency in ("usd", "US", "USDX", "U1D"):
        doc = await put_deck(a, currency, deck("44,UK,outbound,0.10,,,"), status=400)
        assert doc["errors"][0]["field"] == "currency"
    doc = await a.req("GET", "/v1/rate-decks/XTB/lookup?number=abc", status=400)
    assert doc["errors"][0]["field"] == "number"
    doc = await a.req("GET", "/v1/rate-decks/XTB/lookup?number=%2B44&kind=x", status=400)
    assert doc["errors"][0]["field"] == "kind"
    doc = await a.req("GET", "/v1/rate-decks/XTB/lookup", status=400)
    assert doc["errors"][0]["field"] == "number"
    from gateway.rules.decks import DECK_LIMIT_BYTES

    big = deck("44,UK,outbound,0.10,,,") + b"#" * DECK_LIMIT_BYTES
    doc = await put_deck(a, "XTD", big, status=413)
    assert doc["errors"][0]["field"] == "body"


def make_deck_csv(rows: int) -> str:
    lines = [HEAD]
    lines += [f"{1_000_000 + i},Destination {i},outbound,0.{i % 10000:04d},0.01,60,60"
              for i in range(rows)]
    return "\n".join(lines) + "\n"


MEASURE = r"""
import resource, sys, time, tracemalloc, gc
sys.path.insert(0, sys.argv[2])
from gateway.rules.rating import RateDeck
from tests.test_decks import make_deck_csv
text = make_deck_csv(int(sys.argv[1]))
gc.collect()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
t0 = time.perf_counter()
deck = RateDeck.from_csv(text, "XTS")
seconds = time.perf_counter() - t0
gc.collect()
rss_delta = rss() - before
del deck
gc.collect()
tracemalloc.start()
deck = RateDeck.from_csv(text, "XTS")
traced, _peak = tracemalloc.get_traced_memory()
print(seconds, rss_delta, traced, len(text))
"""


def test_100k_row_deck_loads_under_5s_and_50MB() -> None:
    """The figures of the README: load time, resident and Python-allocated memory."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", MEASURE, "100000", root], check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    seconds, rss_delta, traced, csv_bytes = float(out[0]), int(out[1]), int(out[2]), int(out[3])
    print(f"100,000 rows ({csv_bytes / 1e6:.1f} MB CSV): {seconds:.2f} s, "
          f"RSS +{rss_delta / 2**20:.1f} MiB, tracemalloc {traced / 2**20:.1f} MiB")
    assert seconds < 5.0
    assert traced < 50 * 2**20 and rss_delta < 50 * 2**20


async def test_config_decks_are_the_defaults(two: tuple[Gateway, Gateway],
                                             redis_sync: redis.Redis) -> None:
    a, _ = two
    # USD is never uploaded by the suite: the configuration's deck answers.
    assert redis_sync.get(deck_key("USD")) is None
    row = await lookup(a, "USD", LONDON)
    assert row["currency"] == "USD" and row["prefix"].startswith("+44")


async def test_a_worker_falls_back_to_the_csv(two: tuple[Gateway, Gateway],
                                              redis_sync: redis.Redis,
                                              redis_server: RedisServer) -> None:
    """Without the JSON rows (e.g. written by an older version) the CSV is parsed."""
    from gateway.redis.keys import deck_rows_key
    from gateway.redis.store import Store
    from gateway.rules.decks import Decks

    a, _ = two
    await put_deck(a, "XTE", deck("44,UK,outbound,0.10,,,"))
    redis_sync.delete(deck_rows_key("XTE"))
    store = Store.from_url(redis_server.url, a.settings.partitions)
    try:
        fresh = Decks({})
        assert await fresh.refresh(store)
        rate = fresh.current["XTE"].lookup(LONDON, "outbound")
        assert rate is not None and rate.rate_per_minute_micro == 100_000
        assert not await fresh.refresh(store)  # nothing changed since: one GET, no reload
    finally:
        await store.close()
