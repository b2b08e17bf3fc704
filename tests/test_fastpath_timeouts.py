"""Head timeout and connection cap (issue 11 §4), on the fast path and on connections handed
over to aiohttp: an incomplete request is closed after the head timeout however slowly its
bytes trickle in; past the cap, new connections are closed on arrival, counted and logged.

The gateway is served in-process as `callgate serve` serves it, with a head timeout of 1 s
(the setting's smallest) and, for the cap, a cap of 3 connections. Closing is polled with a
deadline; nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from gateway import metrics
from gateway.config import load_settings
from gateway.http.app import create_app
from gateway.http.fastpath import CallgateRunner, FastServer
from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock
from tests.support.gateway import T0, make_settings
from tests.support.gwclient import OPERATOR_TOKEN

DEADLINE_SECONDS = 15.0
TRICKLE_SECONDS = 0.25  # a byte this often: four per head timeout


@dataclass
class Served:
    port: int
    server: FastServer


@contextlib.asynccontextmanager
async def served(redis_url: str, keepalive_timeout: float = 75.0,
                 **overrides: object) -> AsyncIterator[Served]:
    settings = make_settings(redis_url, http_head_timeout_seconds=1, **overrides)
    runner = CallgateRunner(create_app(settings, clock=ManualClock(T0)), access_log=None,
                            keepalive_timeout=keepalive_timeout)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    assert isinstance(runner.server, FastServer)
    try:
        yield Served(int(sock.getsockname()[1]), runner.server)
    finally:
        await runner.cleanup()


@pytest.fixture
async def gw(redis_server: RedisServer) -> AsyncIterator[Served]:
    async with served(redis_server.url) as s:
        yield s


async def _closed_despite_trickle(port: int, first: bytes, trickle: bytes) -> bytes:
    """Send `first`, then one byte of `trickle` every TRICKLE_SECONDS (cycling) until the
    server closes the connection; what it answered. Fails past the deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = b""

    async def dribble() -> None:
        writer.write(first)
        i = 0
        while True:
            await asyncio.sleep(TRICKLE_SECONDS)
            writer.write(trickle[i % len(trickle):i % len(trickle) + 1])
            i += 1

    task = asyncio.create_task(dribble())
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {DEADLINE_SECONDS} s: {received!r}") from None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task
        writer.close()
    return received


HEAD = b"POST /v1/tenants/t-slow/calls HTTP/1.1\r\nHost: 127.0.0.1\r\n"
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize("first,trickle,handed_over", [
    # The fast path: a head that never ends (a header value growing a byte at a time).
    pytest.param(HEAD + b"X-Slow: ", b"a", False, id="fast-head"),
    # ... after a first request answered on the same connection.
    pytest.param(HEAD + b"Content-Length: 0\r\n\r\n" + HEAD + b"X-Slow: ", b"a", False,
                 id="fast-second-head"),
    # The fast path: a complete head, a body that never ends.
    pytest.param(HEAD + b"Content-Length: 1000\r\n\r\n{", b" ", False, id="fast-body"),
    # aiohttp's from the start (not call control), head cut short.
    pytest.param(b"GET /healthz HTTP/1.1\r\nX-Slow: ", b"a", True, id="handed-over-head"),
    # aiohttp's after a first request it answered.
    pytest.param(HEALTH + b"GET /healthz HTTP/1.1\r\nX-Slow: ", b"a", True,
                 id="handed-over-second-head"),
])
async def test_a_slow_head_is_closed(gw: Served, first: bytes, trickle: bytes,
                                     handed_over: bool) -> None:
    before = gw.server.head_timeouts
    answered = await _closed_despite_trickle(gw.port, first, trickle)
    statuses = re.findall(rb"HTTP/1\.1 (\d+)", answered)
    assert len(statuses) == first.count(b"HTTP/1.1\r\n") - 1, answered
    assert gw.server.head_timeouts == before + 1
    assert gw.server.handovers == (1 if handed_over else 0)


async def test_a_silent_connection_is_closed_after_the_head_timeout(gw: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        assert await asyncio.wait_for(reader.read(), DEADLINE_SECONDS) == b""
    finally:
        writer.close()
    assert gw.server.head_timeouts == 1


async def test_an_idle_kept_alive_connection_outlives_the_head_timeout(gw: Served) -> None:
    """Between requests the keep-alive timeout (75 s) applies, not the head timeout."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        for raw in (HEAD + b"Content-Length: 0\r\n\r\n", HEALTH):
            writer.write(raw)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_SECONDS)
            length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
            await reader.readexactly(length)
            # Two head timeouts (and several sweeps) of idleness.
            await asyncio.sleep(2 * gw.server.head_timeout)
        writer.write(HEALTH)
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                       DEADLINE_SECONDS)).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    assert gw.server.head_timeouts == 0


@pytest.mark.parametrize("prefix", [pytest.param(b"", id="fast"),
                                    pytest.param(HEALTH, id="handed-over")])
async def test_a_client_that_reads_nothing_is_cut_off(redis_server: RedisServer,
                                                      prefix: bytes) -> None:
    """Answers pile up unread (the worker stops reading and answering): after the
    keep-alive timeout (1 s here) of that, the connection is aborted."""
    async with served(redis_server.url, keepalive_timeout=1.0) as gw:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
        _, writer = await asyncio.open_connection(sock=sock)
        raw = HEAD + b"Content-Length: 0\r\n\r\n"  # 401 each: no token
        writer.write(prefix + raw * 40_000)  # ~9 MB of answers: more than buffers hold
        async with asyncio.timeout(DEADLINE_SECONDS):
            while gw.server.open_connections:
                await asyncio.sleep(0.05)
        assert gw.server.handovers == (1 if prefix else 0)
        writer.transport.abort()


def _metric(name: str) -> float:
    text = metrics.render()[0].decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


async def test_the_connection_cap(redis_server: RedisServer,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """Three connections open (one handed over to aiohttp): the next ones are closed on
    arrival, counted, logged once; once one closes, a new connection is served."""
    caplog.set_level(logging.WARNING, logger="gateway.http.fastpath")
    rejected_before = _metric("callgate_http_connections_rejected_total")
    async with served(redis_server.url, http_max_connections=3) as gw:
        open_ = []
        for raw in (HEALTH, HEAD + b"Content-Length: 0\r\n\r\n", HEAD + b"Content-Length: 0"
                    b"\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(raw)
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_SECONDS)
            open_.append((reader, writer))
        assert gw.server.open_connections == 3
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(HEALTH)
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), DEADLINE_SECONDS) == b""
            writer.close()
        assert gw.server.rejected == 5
        cap_lines = [r for r in caplog.records if "connection cap reached" in r.getMessage()]
        assert len(cap_lines) == 1, cap_lines  # rate-limited: one line per 10 s
        # The sweep reports to the metrics within a second or so.
        async with asyncio.timeout(DEADLINE_SECONDS):
            while _metric("callgate_http_connections_rejected_total") < rejected_before + 5:
                await asyncio.sleep(0.05)
        assert _metric("callgate_http_connections") == 3
        # One closes: a new one is served.
        open_[0][1].close()
        async with asyncio.timeout(DEADLINE_SECONDS):
            while gw.server.open_connections > 2:
                await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(HEALTH)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_SECONDS)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()
        for _, w in open_[1:]:
            w.close()
        assert gw.server.rejected == 5


def test_the_settings_and_their_bounds() -> None:
    env = {"CALLGATE_OPERATOR_TOKEN": OPERATOR_TOKEN}
    defaults = load_settings(env=env)
    assert defaults.http_head_timeout_seconds == 10
    assert defaults.http_max_connections == 10_000
    s = load_settings(env={**env, "CALLGATE_HTTP_HEAD_TIMEOUT_SECONDS": "3",
                           "CALLGATE_HTTP_MAX_CONNECTIONS": "500"})
    assert (s.http_head_timeout_seconds, s.http_max_connections) == (3, 500)
    from gateway.errors import ConfigError

    for var, value in (("CALLGATE_HTTP_HEAD_TIMEOUT_SECONDS", "0"),
                       ("CALLGATE_HTTP_HEAD_TIMEOUT_SECONDS", "301"),
                       ("CALLGATE_HTTP_HEAD_TIMEOUT_SECONDS", "1.5"),
                       ("CALLGATE_HTTP_MAX_CONNECTIONS", "0")):
        with pytest.raises(ConfigError, match=var):
            load_settings(env={**env, var: value})


def test_the_cap_stays_below_the_file_descriptor_limit() -> None:
    import resource

    from gateway.http.fastpath import FD_RESERVE, connection_cap

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(10) == 10
    if hard != resource.RLIM_INFINITY:
        assert connection_cap(hard * 2) == hard - FD_RESERVE
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= min(soft, hard)
