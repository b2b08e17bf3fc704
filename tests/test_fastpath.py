"""The call-control fast path (gateway.http.fastpath) against aiohttp's own serving of the app.

Every other test talks to the gateway as `callgate serve` serves it (conftest: call control
on the fast path). Here the same requests, byte for byte, go to two servers of the same
application on the same Redis — one plain aiohttp, one with the fast path — and must get
the same status, content type and body; requests the fast path must not take (HTTP/1.0,
chunked, query strings, escapes, oversized bodies...) must be handed to aiohttp, and the
connection-level behaviour (pipelining, partial reads, handover mid-connection, close,
idle timeout) must hold.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ValidationError
from gateway.http.api import AUTHORIZE_FIELDS, _usual_authorize, parse_authorize
from gateway.http.app import create_app
from gateway.http.fastpath import BUFFER_HIGH_BYTES, CallgateRunner, FastServer
from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock
from tests.support.gateway import T0, make_settings
from tests.support.gwclient import OPERATOR_TOKEN

AUTH = f"Bearer {OPERATOR_TOKEN}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Servers:
    plain: int  # port: aiohttp only
    fast: int  # port: CallgateRunner
    fast_server: FastServer
    tenant: str


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def _serve(runner: web.AppRunner) -> int:
    await runner.setup()
    sock = _listening()
    await web.SockSite(runner, sock).start()
    return int(sock.getsockname()[1])


@pytest.fixture
async def servers(redis_server: RedisServer, tenant_id: str) -> AsyncIterator[Servers]:
    settings = make_settings(redis_server.url)
    clock = ManualClock(T0)
    plain = web.AppRunner(create_app(settings, clock=clock), access_log=None)
    fast = CallgateRunner(create_app(settings, clock=clock), access_log=None,
                          keepalive_timeout=1.0)
    plain_port, fast_port = await _serve(plain), await _serve(fast)
    setup = [
        request("PUT", f"/v1/tenants/{tenant_id}", {"name": "x"}),
        request("PUT", f"/v1/tenants/{tenant_id}/users/alice",
                {"country": "US", "plan": "domestic"}),
    ]
    for r in await exchange(plain_port, b"".join(setup), len(setup)):
        assert r.status in (200, 201), r
    assert isinstance(fast.server, FastServer)
    try:
        yield Servers(plain_port, fast_port, fast.server, tenant_id)
    finally:
        await fast.cleanup()
        await plain.cleanup()


def request(method: str, path: str, body: Any = None, *, auth: str | None = AUTH,
            raw: bytes | None = None, headers: dict[str, str] | None = None,
            version: str = "HTTP/1.1") -> bytes:
    data = raw if raw is not None else b"" if body is None else orjson.dumps(body)
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if not any(k.lower() == "transfer-encoding" for k in headers or {}):
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Response(int(status_line.split(" ")[1]), headers, body)


async def exchange(port: int, data: bytes, responses: int = 1, *,
                   chunks: int | None = None) -> list[Response]:
    """Send data on one new connection (all at once, or in pieces of `chunks` bytes) and
    read `responses` answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if chunks is None:
            writer.write(data)
        else:
            for i in range(0, len(data), chunks):
                writer.write(data[i:i + chunks])
                await writer.drain()
        await writer.drain()
        return [await asyncio.wait_for(read_response(reader), 10) for _ in range(responses)]
    finally:
        writer.close()


def _cases(t: str) -> list[tuple[str, bytes, bool]]:
    """(name, raw request, served by the fast path?)"""
    calls = f"/v1/tenants/{t}/calls"
    ok = {"call_id": "c-1", "user_id": "alice", "to": "+12125550100"}
    return [
        ("no-token", request("POST", calls, ok, auth=None), True),
        ("unknown-token", request("POST", calls, ok, auth="Bearer nope"), True),
        ("basic-scheme", request("POST", calls, ok, auth=f"Basic {OPERATOR_TOKEN}"), True),
        ("malformed-json", request("POST", calls, raw=b'{"call_id": '), True),
        ("empty-body", request("POST", calls, raw=b""), True),
        ("json-array", request("POST", calls, [1, 2]), True),
        ("unknown-field", request("POST", calls, {**ok, "colour": "red"}), True),
        ("bad-call-id", request("POST", calls, {**ok, "call_id": "a b"}), True),
        ("long-to", request("POST", calls, {**ok, "to": "1" * 65}), True),
        ("user-id-number", request("POST", calls, {**ok, "user_id": 7}), True),
        ("bad-direction", request("POST", calls, {**ok, "direction": "sideways"}), True),
        ("bad-started-at", request("POST", calls, {**ok, "started_at": "yesterday"}), True),
        ("inbound-without-from", request("POST", calls, {**ok, "direction": "inbound"}), True),
        ("bad-tenant-id", request("POST", "/v1/tenants/a:b/calls", ok), True),
        ("unknown-tenant", request("POST", f"/v1/tenants/{t}-none/calls", ok), True),
        ("extend-bad-call-id", request("POST", f"{calls}/a*b/extend", {"used_seconds": 1}),
         True),
        ("extend-negative", request("POST", f"{calls}/c-9/extend", {"used_seconds": -1}),
         True),
        ("extend-unknown-call", request("POST", f"{calls}/c-9/extend", {"used_seconds": 1}),
         True),
        ("end-string", request("POST", f"{calls}/c-9/end", {"duration_seconds": "5"}), True),
        ("end-unknown-call", request("POST", f"{calls}/c-9/end", {"duration_seconds": 5}),
         True),
        ("too-large", request("POST", calls, raw=b" " * (65 * 1024)), False),
        ("query-string", request("POST", f"{calls}?x=1", ok), False),
        ("escaped-tenant", request("POST", f"/v1/tenants/{t}%2Dx/calls", ok), False),
        ("dot-segment", request("POST", f"/v1/tenants/{t}/../{t}/calls", ok), False),
        ("trailing-slash", request("POST", f"{calls}/", ok), False),
        ("get", request("GET", calls), False),
        ("http-1.0", request("POST", calls, ok, version="HTTP/1.0"), False),
        ("chunked", request("POST", calls, raw=b"2\r\n{}\r\n0\r\n\r\n",
                            headers={"Transfer-Encoding": "chunked"}), False),
        ("extend-wrong-verb", request("POST", f"{calls}/c-9/stretch", {}), False),
    ]


async def test_same_answers_as_aiohttp(servers: Servers) -> None:
    for name, raw, fast in _cases(servers.tenant):
        before = (servers.fast_server.fast_requests, servers.fast_server.handovers)
        [expected] = await exchange(servers.plain, raw)
        [got] = await exchange(servers.fast, raw)
        assert (got.status, got.headers.get("content-type"), got.body) == (
            expected.status, expected.headers.get("content-type"), expected.body), name
        after = (servers.fast_server.fast_requests, servers.fast_server.handovers)
        assert after == ((before[0] + 1, before[1]) if fast else (before[0], before[1] + 1)), \
            name


async def test_answer_headers(servers: Servers) -> None:
    raw = request("POST", f"/v1/tenants/{servers.tenant}/calls",
                  {"call_id": "h-1", "user_id": "alice", "to": "+12125550100"})
    [got] = await exchange(servers.fast, raw)
    [replayed] = await exchange(servers.plain, raw)  # D32: the same answer from aiohttp
    assert got.status == 200 and got.body == replayed.body
    assert orjson.loads(got.body)["decision"] == "allow"
    assert got.headers["content-type"] == replayed.headers["content-type"]
    assert got.headers["server"] == replayed.headers["server"]
    assert got.headers["date"].endswith(" GMT")
    assert "connection" not in got.headers  # kept alive


async def test_pipelined_and_split_requests(servers: Servers) -> None:
    calls = f"/v1/tenants/{servers.tenant}/calls"
    raws = [request("POST", calls, {"call_id": f"p-{i}", "user_id": "alice",
                                    "to": "+12125550100"}) for i in range(5)]
    got = await exchange(servers.fast, b"".join(raws), 5)
    assert [orjson.loads(r.body)["call_id"] for r in got] == [f"p-{i}" for i in range(5)]
    # The same bytes one at a time: the parser waits for the whole head and body.
    again = await exchange(servers.fast, b"".join(raws[:2]), 2, chunks=1)
    assert [r.body for r in again] == [r.body for r in got[:2]]
    assert servers.fast_server.fast_requests == 7


async def test_handover_mid_connection(servers: Servers) -> None:
    """Fast, then a request for aiohttp, then call control again: one connection, in order."""
    t = servers.tenant
    body = {"call_id": "m-1", "user_id": "alice", "to": "+12125550100"}
    raw = (request("POST", f"/v1/tenants/{t}/calls", body) + request("GET", "/healthz")
           + request("POST", f"/v1/tenants/{t}/calls/m-1/end", {"duration_seconds": 30}))
    first, health, end = await exchange(servers.fast, raw, 3)
    assert orjson.loads(first.body)["decision"] == "allow"
    assert orjson.loads(health.body) == {"status": "ok"}
    assert end.status == 200 and orjson.loads(end.body)["call_id"] == "m-1"
    assert (servers.fast_server.fast_requests, servers.fast_server.handovers) == (1, 1)


async def test_connection_close_and_idle_timeout(servers: Servers) -> None:
    t = servers.tenant
    raw = request("POST", f"/v1/tenants/{t}/calls", {"call_id": "k-1", "user_id": "alice",
                                                     "to": "+12125550100"},
                  headers={"Connection": "close"})
    reader, writer = await asyncio.open_connection("127.0.0.1", servers.fast)
    writer.write(raw)
    r = await asyncio.wait_for(read_response(reader), 10)
    assert r.status == 200 and r.headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    writer.close()
    # Idle: the server closes a kept-alive connection after its keep-alive timeout (1 s
    # here), checked a few times per timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", servers.fast)
    writer.write(raw.replace(b"Connection: close\r\n", b""))
    assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


# -- the usual-request shortcut of parse_authorize ------------------------------------------

_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.just(""), st.just("outbound"),
    st.just("inbound"), st.just("alice"), st.just("c-1"), st.just("+12125550100"),
    st.just("2026-11-27T10:00:00Z"), st.text(max_size=3), st.just("x" * 65),
    st.just("a b"), st.just("x" * 129),
)
_USUAL = {"call_id": "c-1", "user_id": "alice", "to": "+12125550100"}
_bodies = st.one_of(
    st.dictionaries(st.sampled_from([*AUTHORIZE_FIELDS, "extra"]), _values),
    # the usual body with one field changed, added or removed
    st.builds(lambda k, v: {**_USUAL, k: v}, st.sampled_from([*AUTHORIZE_FIELDS, "extra"]),
              _values),
    st.builds(lambda k: {f: v for f, v in _USUAL.items() if f != k}, st.sampled_from(
        list(_USUAL))),
)


@settings(max_examples=600, deadline=None)
@given(_bodies)
def test_usual_authorize_agrees_with_the_full_parser(body: dict[str, Any]) -> None:
    """Whenever the shortcut answers, the full parser gives the same request; the shortcut
    never accepts what the full parser rejects."""
    usual = _usual_authorize(body)
    if usual is None:
        return
    try:
        full = parse_authorize({k: v for k, v in body.items()}, T0, 300)
    except ValidationError as exc:
        raise AssertionError(f"shortcut accepted {body!r}; parser: {exc}") from exc
    assert usual == full


def test_usual_authorize_takes_the_usual_request() -> None:
    body = {"call_id": "c-1", "user_id": "alice", "to": "+12125550100"}
    assert _usual_authorize(body) is not None
    assert _usual_authorize({**body, "direction": "outbound", "from": "+12125550111"})
    assert _usual_authorize({**body, "started_at": "2026-11-27T10:00:00Z"}) is None


async def test_a_long_pipelined_burst_is_answered_in_order(servers: Servers) -> None:
    """More pipelined requests than the read buffer holds while one is in progress (reading
    pauses and resumes): every one answered, in order."""
    calls = f"/v1/tenants/{servers.tenant}/calls"
    n = 600  # ~150 kB of requests, beyond BUFFER_HIGH_BYTES
    raw = b"".join(request("POST", calls, {"call_id": f"b-{i}", "user_id": "alice",
                                           "to": "+12125550100"}) for i in range(n))
    assert len(raw) > BUFFER_HIGH_BYTES
    got = await exchange(servers.fast, raw, n)
    assert [orjson.loads(r.body)["call_id"] for r in got] == [f"b-{i}" for i in range(n)]
    assert all(r.status == 200 for r in got)
    assert servers.fast_server.fast_requests == n
