"""Never a 500 for bad input in a query string: every query parameter of the list and lookup
routes (CDRs: cursor, from, to, limit; audit: cursor, limit; pools: month; rate-deck lookup:
number, kind) fuzzed with hypothesis against the real app, with its ledger on SQLite and on
PostgreSQL. Any input answers 2xx or 4xx; a 4xx is a problem document, and a 400 names
only parameters the request carried. (schemathesis covers bodies: test_schemathesis.py.)
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock
from tests.support.gateway import start_gateway
from tests.support.gwclient import AUTH, Gateway
from tests.test_cdrs import make_calls, persist_all

PROBLEM = "application/problem+json"
EXAMPLES = 60

# Text as a client may send it: any code point but lone surrogates (no URL carries them).
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_int_text = st.integers(min_value=-(10**30), max_value=10**30).map(str)
_digits = st.text(st.sampled_from("0123456789"), min_size=1, max_size=30)
# Where integers stop fitting: the databases' BIGINT, the API's INT_MAX, Python's digit cap.
_edges = st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 10**12, 10**12 + 1, 10**23,
                          -1, 0]).map(str) | st.just("9" * 5000)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Cursors: noise, and base64url of "<integer>/<text>" shaped like the real ones.
_cdr_cursor = st.one_of(
    _text,
    st.builds(lambda n, s: _b64(f"{n}/{s}".encode()),
              st.one_of(_edges, _int_text, _digits, _text), _text),
    st.binary(max_size=40).map(_b64),
)
_stream_id = st.one_of(_text, st.builds(lambda a, b: f"{a}-{b}", _edges, _edges),
                       st.builds(lambda a, b: f"{a}-{b}", _digits, _digits))
_time = st.one_of(
    _text,
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.builds(lambda y, mo, d, h, mi, s, z: f"{y}-{mo}-{d}T{h}:{mi}:{s}{z}",
              *(st.text(st.sampled_from("0123456789"), min_size=1, max_size=4)
                for _ in range(6)),
              st.sampled_from(["Z", "z", "+00:00", "-23:59", "+99:99", ""])),
)
_limit = st.one_of(_edges, _int_text, _digits, _text)
_month = st.one_of(_text, st.builds(lambda y, m: f"{y}-{m}", _digits, _digits))
_number = st.one_of(_text, st.builds(lambda d: "+" + d, _digits), _digits, _edges)
_kind = st.one_of(_text, st.sampled_from(["outbound", "inbound", "OUTBOUND", ""]))


def _params(**fields: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, str]]:
    """Any subset of the route's parameters, each with a value of its strategy."""
    return st.fixed_dictionaries({}, optional=fields)


# (path, its parameters, the required ones: a 400 may name those when absent)
ROUTES: list[tuple[str, st.SearchStrategy[dict[str, str]], set[str]]] = [
    ("/v1/tenants/{t}/cdrs", _params(cursor=_cdr_cursor, limit=_limit, **{"from": _time},
                                     to=_time), set()),
    ("/v1/tenants/{t}/audit", _params(cursor=_stream_id, limit=_limit), set()),
    ("/v1/tenants/{t}/pools", _params(month=_month), set()),
    ("/v1/rate-decks/USD/lookup", _params(number=_number, kind=_kind), {"number"}),
]


@pytest.fixture
async def fgw(own_redis: RedisServer, ledger_url: str, clock: ManualClock,
              aiohttp_client: Any, tenant_id: str) -> AsyncIterator[Gateway]:
    """A gateway whose ledger holds CDRs of the tenant (the CDR queries reach the
    database) and whose audit list holds its admin changes."""
    gw = await start_gateway(aiohttp_client, clock, own_redis.url, partitions=2,
                             database_url=ledger_url)
    await make_calls(gw, tenant_id)
    await persist_all(gw)
    yield gw


# aiohttp's own limit on a request line: a longer one never reaches the app, and aiohttp
# answers it with a plain-text 4xx.
REQUEST_LINE_BYTES_MAX = 8190


async def get(gw: Gateway, path: str, params: dict[str, str]) -> tuple[int, str, Any, int]:
    """(status, content type, JSON body or text, length of the URL) of one GET."""
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
    url = path + ("?" + query if query else "")
    resp = await gw.client.get(yarl.URL(url, encoded=True), headers=AUTH)
    text = await resp.text()
    doc = json.loads(text) if text and "json" in resp.content_type else text
    return resp.status, resp.content_type, doc, len(url)


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
async def test_any_query_answers_2xx_or_4xx(fgw: Gateway, tenant_id: str,
                                            data: st.DataObject) -> None:
    for template, strategy, required in ROUTES:
        params = data.draw(strategy, label=template)
        path = template.format(t=tenant_id)
        status, ctype, doc, url_length = await get(fgw, path, params)
        assert status < 500, (path, params, status, doc)
        if url_length > REQUEST_LINE_BYTES_MAX:
            assert status in (400, 414), (path, status, doc)
            continue
        if status >= 400:
            assert ctype == PROBLEM and doc["status"] == status, (path, params, doc)
        if status == 400:
            fields = {e["field"] for e in doc.get("errors", [])}
            assert fields and fields <= set(params) | required, (path, params, doc)
