"""The fast path is exactly as strict as aiohttp (issue 12 §5): for any bytes, the status
codes answered and whether the connection stays usable are the same as aiohttp's.

Two servers of the same application on the same Redis run in a thread of their own: the
reference, every connection aiohttp's (CallgateRunner(fast=False)), and the fast path.
Each case sends the same bytes to both, on a new connection, and compares the answers
until the server closes:

    the request under test  +  a valid follow-up request  +  a run of NUL bytes

The follow-up shows whether the connection stayed usable; the NUL bytes end every
exchange with a 400 and a close, whatever state the request left the parser in (a head cut
short, or a body longer than announced: NULs complete it), so no exchange waits on a
timeout. aiohttp's own handlers read one byte at a time on both servers: aiohttp drops the
answers to the requests that precede a malformed one in the same read, so its answers would
otherwise depend on how TCP happened to cut the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import orjson
import pytest
import uvloop
from aiohttp import web
from aiohttp.web_protocol import _ErrInfo
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.http.app import create_app
from gateway.http.fastpath import AiohttpHandler, CallgateRunner, FastServer
from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock
from tests.support.gateway import T0, make_settings
from tests.support.gwclient import OPERATOR_TOKEN

TENANT = "t-strict"
MAX_LENGTH = 1000  # the largest Content-Length a case may announce
PADDING = b"\x00" * (MAX_LENGTH + 100)


class ByteFed(AiohttpHandler):
    """aiohttp's protocol, fed what arrives one byte at a time."""

    def data_received(self, data: bytes) -> None:
        for i in range(len(data)):
            super().data_received(data[i:i + 1])
            if self._messages and isinstance(self._messages[-1][0], _ErrInfo):
                return  # the parser has failed: the connection closes after its 400


class ByteFedRunner(CallgateRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        assert isinstance(server, FastServer)
        server.handler_class = ByteFed
        return server


@dataclass
class Ports:
    plain: int  # every connection aiohttp's
    fast: int
    fast_server: FastServer


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def _start(runner: web.AppRunner) -> int:
    await runner.setup()
    sock = _listening()
    await web.SockSite(runner, sock).start()
    return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ports(redis_server: RedisServer) -> Iterator[Ports]:
    """Both servers on an event loop in a thread: the tests talk to them with plain
    blocking sockets (hypothesis drives the examples synchronously)."""
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="strict-servers", daemon=True)
    thread.start()
    settings_ = make_settings(redis_server.url)
    clock = ManualClock(T0)
    plain = ByteFedRunner(create_app(settings_, clock=clock), access_log=None, fast=False)
    fast = ByteFedRunner(create_app(settings_, clock=clock), access_log=None)

    def run(coro: object) -> object:
        fut: Future[object] = asyncio.run_coroutine_threadsafe(coro, loop)  # type: ignore[arg-type]
        return fut.result(30)

    try:
        plain_port, fast_port = run(_start(plain)), run(_start(fast))
        assert isinstance(plain_port, int) and isinstance(fast_port, int)
        assert isinstance(fast.server, FastServer)
        result = Ports(plain_port, fast_port, fast.server)
        close = (("Connection", "close"),)
        for raw in (request("PUT", f"/v1/tenants/{TENANT}", {"name": "strict"}, headers=close),
                    request("PUT", f"/v1/tenants/{TENANT}/users/alice",
                            {"country": "US", "plan": "domestic"}, headers=close)):
            assert exchange(plain_port, raw)[0][0] in (200, 201)
        yield result
    finally:
        run(fast.cleanup())
        run(plain.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def request(method: str, path: str, body: object = None, *,
            auth: str | None = f"Bearer {OPERATOR_TOKEN}",
            headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    data = b"" if body is None else orjson.dumps(body)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    lines += [f"{k}: {v}" for k, v in headers]
    lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


Outcome = tuple[tuple[int, ...], bool]  # statuses answered, and closed by the server


def exchange(port: int, data: bytes) -> Outcome:
    """Send data on a new connection and read answers until the server closes it (or 10 s
    pass: then the outcome says "not closed")."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # closed early: a 400 before all was sent
            sock.sendall(data)
        received = bytearray()
        closed = False
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except ConnectionResetError:  # closed with our bytes unread: a reset after the data
            closed = True
        except TimeoutError:
            pass
    return _statuses(bytes(received)), closed


def _statuses(data: bytes) -> tuple[int, ...]:
    statuses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        statuses.append(int(lines[0].split(b" ")[1]))
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = rest[length:]
    return tuple(statuses)


FOLLOW_UP = request("POST", f"/v1/tenants/{TENANT}/calls",
                    {"call_id": "follow", "user_id": "alice", "to": "+12125550100"}, auth=None)


_LENGTHS_RE = re.compile(rb"(?i)content-length[ \t]*:[ \t]*([0-9]+)")


def both(ports: Ports, raw: bytes) -> tuple[Outcome, Outcome]:
    """(aiohttp's outcome, the fast path's) for raw + follow-up + NULs."""
    data = raw + FOLLOW_UP + PADDING
    return exchange(ports.plain, data), exchange(ports.fast, data)


def _valid_requests() -> list[bytes]:
    calls = f"/v1/tenants/{TENANT}/calls"
    ok = {"call_id": "s-1", "user_id": "alice", "to": "+12125550100"}
    return [
        request("POST", calls, ok),
        request("POST", calls, ok, auth=None),
        request("POST", calls, ok, auth="Bearer a-secret-looking-token-0123456789"),
        request("POST", f"{calls}/s-1/extend", {"used_seconds": 30}),
        request("POST", f"{calls}/s-2/end", {"duration_seconds": 5},
                headers=(("Connection", "keep-alive"), ("User-Agent", "switch/1.0"))),
        request("POST", f"{calls}/s-3/end", {"duration_seconds": 5},
                headers=(("Connection", "close"),)),
    ]


VALID = _valid_requests()
# Bytes that matter to HTTP parsing, and some that do not.
_BYTES = st.one_of(
    st.sampled_from(b"\x00\x01\t\n\x0b\x0c\r \x1f\x7f\x80\xff"),
    st.sampled_from(b":;,/.%?#\"'()<>@[]\\{}0159aAzZ-_~!+="),
    st.integers(0, 255),
)


def _hot_spots(data: bytes) -> list[int]:
    """Where a byte changed matters most: around every delimiter of the head, and every
    position of the Content-Length value and of the bearer token's end."""
    head_end = data.find(b"\r\n\r\n") + 4 if b"\r\n\r\n" in data else len(data)
    spots = {0, head_end, len(data)}
    for i in range(head_end):
        if data[i] in b" :/\r\n":
            spots.update((i, i + 1))
    for marker in (b"Content-Length: ", b"Authorization: "):
        start = data.find(marker)
        if start >= 0:
            end = data.find(b"\r\n", start)
            spots.update(range(start + len(marker), (end if end >= 0 else len(data)) + 1))
    return sorted(spots)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid fast-path request with one to three bytes inserted, deleted or replaced,
    mostly at the head's delimiters and in its values."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        spots = _hot_spots(bytes(data))
        pos = draw(st.one_of(st.sampled_from(spots), st.integers(0, len(data))))
        kind = draw(st.sampled_from(("insert", "delete", "replace")))
        if kind == "insert":
            data.insert(pos, draw(_BYTES))
        elif pos < len(data):
            if kind == "delete":
                del data[pos]
            else:
                data[pos] = draw(_BYTES)
    return bytes(data)


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutated())
def test_mutated_requests_get_aiohttps_verdict(ports: Ports, raw: bytes) -> None:
    # The NULs must be able to complete any body announced.
    assume(all(int(n) <= MAX_LENGTH for n in _LENGTHS_RE.findall(raw)))
    plain, fast = both(ports, raw)
    assert plain[1], f"plain aiohttp did not close: {raw!r}"
    assert fast == plain, f"{raw!r}: fast path {fast}, aiohttp {plain}"


def test_valid_requests_are_taken_by_the_fast_path(ports: Ports) -> None:
    """The property above means something: unmutated, the fast path answers them itself,
    and the follow-up on the same connection too."""
    for raw in VALID:
        before = ports.fast_server.fast_requests
        plain, fast = both(ports, raw)
        assert fast == plain and plain[1]
        closes = b"Connection: close" in raw
        assert ports.fast_server.fast_requests == before + (1 if closes else 2), raw
        assert len(plain[0]) == (1 if closes else 3), plain


# -- the report's cases, named -----------------------------------------------------------------

CALLS = f"/v1/tenants/{TENANT}/calls"
BODY = b'{"call_id":"n-1","user_id":"alice","to":"+12125550100"}'


def _raw(*fields: bytes, target: bytes = CALLS.encode(), body: bytes = BODY) -> bytes:
    return (b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body)


_LENGTH = b"Content-Length: %d" % len(BODY)
_AUTH = f"Authorization: Bearer {OPERATOR_TOKEN}".encode()

NAMED_400 = {
    "content-length-vt": _raw(_AUTH, b"Content-Length: \x0b%d" % len(BODY)),
    "content-length-ff": _raw(_AUTH, b"Content-Length: %d\x0c" % len(BODY)),
    "content-length-5000-digits": _raw(_AUTH, b"Content-Length: " + b"9" * 5000),
    "content-length-sign": _raw(_AUTH, b"Content-Length: +%d" % len(BODY)),
    "content-length-twice-differing": _raw(_AUTH, _LENGTH, b"Content-Length: 3"),
    "header-name-with-space": _raw(_AUTH, b"X Switch: a", _LENGTH),
    "space-before-colon": _raw(_AUTH + b" ", _LENGTH).replace(b"Authorization:",
                                                              b"Authorization :"),
    "authorization-control-byte": _raw(_AUTH + b"\x01", _LENGTH),
    "authorization-nul": _raw(_AUTH + b"\x00", _LENGTH),
    "value-with-del": _raw(b"User-Agent: sw\x7fitch", _AUTH, _LENGTH),
    "target-with-control": _raw(_AUTH, _LENGTH, target=CALLS.encode() + b"\x01"),
    "host-twice": _raw(b"Host: 127.0.0.1", _AUTH, _LENGTH),
    "content-length-twice-same": _raw(_AUTH, _LENGTH, _LENGTH),
    "content-type-twice": _raw(_AUTH, b"Content-Type: application/json",
                               b"Content-Type: application/json", _LENGTH),
    "chunked-and-length": _raw(_AUTH, b"Transfer-Encoding: chunked", _LENGTH),
    "obs-fold": _raw(_AUTH, b" folded", _LENGTH),
    "bare-cr": _raw(b"X-A: b\rc", _AUTH, _LENGTH),
}

NAMED_SAME = {
    "no-host": _raw(_AUTH, _LENGTH).replace(b"Host: 127.0.0.1\r\n", b""),
    "empty-host": _raw(_AUTH, _LENGTH).replace(b"Host: 127.0.0.1", b"Host:"),
    "authorization-twice": _raw(_AUTH, b"Authorization: Bearer other", _LENGTH),
    "tab-around-values": _raw(b"Authorization:\t" + _AUTH.split(b": ")[1] + b"\t",
                              b"Content-Length:\t%d\t" % len(BODY)),
    "expect-continue": _raw(_AUTH, _LENGTH, b"Expect: 100-continue"),
    "content-length-leading-zeros": _raw(_AUTH, b"Content-Length: 000%d" % len(BODY)),
    "content-length-11-digits": _raw(_AUTH, b"Content-Length: %011d" % len(BODY)),
    "connection-closed-is-not-close": _raw(_AUTH, _LENGTH, b"Connection: closed"),
    "connection-upgrade": _raw(_AUTH, _LENGTH, b"Connection: upgrade"),
    "content-encoding-gzip": _raw(_AUTH, _LENGTH, b"Content-Encoding: gzip"),
    "obs-text-in-value": _raw(b"User-Agent: sw\xe9", _AUTH, _LENGTH),
    "target-with-quote": _raw(_AUTH, _LENGTH, target=b"/v1/tenants/a\"b/calls"),
}


@pytest.mark.parametrize("name", sorted(NAMED_400))
def test_malformed_requests_get_400_from_the_fast_path(ports: Ports, name: str) -> None:
    """The report's cases and their neighbours: 400 (then the NULs' 400), as aiohttp."""
    plain, fast = both(ports, NAMED_400[name])
    assert fast == plain, name
    assert fast[0][0] == 400 and fast[1], (name, fast)


@pytest.mark.parametrize("name", sorted(NAMED_SAME))
def test_doubtful_requests_get_aiohttps_verdict(ports: Ports, name: str) -> None:
    plain, fast = both(ports, NAMED_SAME[name])
    assert fast == plain, name
