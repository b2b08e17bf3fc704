"""The call-control fast path: the three POSTs a switch sends for every call, served without
aiohttp's per-request machinery, on the same port and connections as everything else.

Profiling put about half of a worker's CPU per authorize inside aiohttp (request and
response objects, router, middleware, stream writer) — more than the call's own work. The
switch's requests are few and regular, so this protocol parses them itself:

    POST /v1/tenants/{tenant_id}/calls                    HTTP/1.1
    POST /v1/tenants/{tenant_id}/calls/{call_id}/extend   HTTP/1.1
    POST /v1/tenants/{tenant_id}/calls/{call_id}/end      HTTP/1.1

with a Content-Length body (or none) within the body limit, and answers them with the very
functions behind the aiohttp routes (gateway.api.call_control: same access check, same
operation, same problem documents). Everything else — any other method or path, a query
string, percent-escapes or dot segments, HTTP/1.0, chunked bodies, ``Expect``, ``Upgrade``,
a body over the limit, a malformed or oversized head — is handed, bytes and connection
together, to aiohttp's own protocol, which serves that connection from then on. So the fast
path only ever sees requests it can answer exactly as aiohttp would, and aiohttp keeps
answering the rest, including every error of HTTP itself.

Per connection, requests are answered one at a time in arrival order (as aiohttp does);
pipelined requests wait in the buffer. Idle connections close after the keep-alive timeout;
graceful shutdown lets the request in progress finish. A request whose client disconnects
still completes (the decision is made and recorded; the switch's retry gets the same answer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_nodelay
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from gateway.api import (
    BODY_LIMIT_BYTES,
    Answer,
    CallControl,
    authorize_call,
    call_control,
    end_call,
    error_answer,
    extend_call,
    problem_answer,
)

log = logging.getLogger(__name__)

# A head (request line and headers) longer than this goes to aiohttp, whose limits apply.
HEAD_LIMIT_BYTES = 8190
# aiohttp's default keep-alive timeout: an idle connection is closed after it.
KEEPALIVE_TIMEOUT_SECONDS = 75.0
# While a request is in progress, reading pauses once this much is buffered behind it.
BUFFER_HIGH_BYTES = BODY_LIMIT_BYTES + 2 * HEAD_LIMIT_BYTES

_PREFIX = b"/v1/tenants/"
_OPS: dict[bytes, CallControl] = {b"extend": extend_call, b"end": end_call}
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_SERVER = SERVER_SOFTWARE.encode()


class _Date:
    """The Date header, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        t = int(time.time())
        if t != cls.second:
            cls.second, cls.value = t, formatdate(t, usegmt=True).encode()
        return cls.value


def encode_response(answer: Answer, close: bool) -> bytes:
    head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n"
            b"Server: %s\r\n" % (answer.status, _REASONS.get(answer.status, b"Unknown"),
                                 answer.content_type.encode(), len(answer.body), _Date.now(),
                                 _SERVER))
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + answer.body


class _Request:
    __slots__ = ("authorization", "body", "close", "op", "path", "target")

    def __init__(self, op: CallControl, path: dict[str, str], target: str,
                 authorization: str | None, body: bytes, close: bool) -> None:
        self.op, self.path, self.target = op, path, target
        self.authorization, self.body, self.close = authorization, body, close


# What _parse found at the start of the buffer besides a request.
_INCOMPLETE = 0
_HANDOVER = 1


def _route(target: bytes) -> tuple[CallControl, dict[str, str]] | None:
    """The operation and path ids of a fast-path target, or None."""
    if (not target.startswith(_PREFIX) or not target.isascii() or b"?" in target
            or b"%" in target or b"#" in target or b"/." in target or b"//" in target):
        return None
    parts = target[len(_PREFIX):].split(b"/")
    if len(parts) == 2 and parts[1] == b"calls":
        return authorize_call, {"tenant_id": parts[0].decode()}
    if len(parts) == 4 and parts[1] == b"calls" and parts[3] in _OPS:
        return _OPS[parts[3]], {"tenant_id": parts[0].decode(), "call_id": parts[2].decode()}
    return None


def _parse(buf: bytearray) -> _Request | int:
    """A complete fast-path request at the start of buf (removed from it), _INCOMPLETE, or
    _HANDOVER when what starts there is for aiohttp."""
    eol = buf.find(b"\r\n")
    if eol < 0:
        return _HANDOVER if len(buf) > HEAD_LIMIT_BYTES or b"\n" in buf else _INCOMPLETE
    parts = bytes(buf[:eol]).split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
        return _HANDOVER
    route = _route(parts[1])
    if route is None:
        return _HANDOVER
    end = buf.find(b"\r\n\r\n", eol)
    if end < 0:
        return _HANDOVER if len(buf) > HEAD_LIMIT_BYTES else _INCOMPLETE
    if end > HEAD_LIMIT_BYTES:
        return _HANDOVER
    length: int | None = None
    authorization: str | None = None
    close = False
    for line in bytes(buf[eol + 2:end]).split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep or not name or b"\n" in line or b"\r" in line or name[-1] in b" \t" \
                or name[0] in b" \t":
            return _HANDOVER
        name = name.lower()
        if name == b"content-length":
            value = value.strip()
            if length is not None or not value.isdigit():
                return _HANDOVER
            length = int(value)
            if length > BODY_LIMIT_BYTES:
                return _HANDOVER
        elif name == b"authorization":
            if not value.isascii():
                return _HANDOVER
            if authorization is None:
                authorization = value.strip().decode()
        elif name == b"connection":
            close = b"close" in value.lower()
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            return _HANDOVER
    start = end + 4
    stop = start + (length or 0)
    if len(buf) < stop:
        return _INCOMPLETE
    body = bytes(buf[start:stop])
    del buf[:stop]
    return _Request(route[0], route[1], parts[1].decode(), authorization, body, close)


class FastProtocol(asyncio.Protocol):
    """One connection: call control here, anything else handed to aiohttp."""

    def __init__(self, server: FastServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False
        self._closing = False
        self._paused = False
        self.idle_since = 0.0

    @property
    def busy(self) -> bool:
        return self._busy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport = transport
        tcp_nodelay(transport, True)  # as aiohttp does: answers leave at once
        self.idle_since = self._server.loop.time()
        self._server.fast_connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.fast_connections.discard(self)
        self._transport = None
        self._buf.clear()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._busy:
            if not self._paused and len(self._buf) > BUFFER_HIGH_BYTES and self._transport:
                self._transport.pause_reading()
                self._paused = True
            return
        self._next()

    def close(self) -> None:
        """Close after the request in progress (graceful shutdown)."""
        self._closing = True
        if not self._busy and self._transport is not None:
            self._transport.close()

    def _next(self) -> None:
        transport = self._transport
        if transport is None or self._closing or not self._buf:
            return
        req = _parse(self._buf)
        if isinstance(req, _Request):
            self._busy = True
            self._server.track(self._serve(req))
        elif req == _HANDOVER:
            self._handover(transport)

    async def _serve(self, req: _Request) -> None:
        server = self._server
        try:
            answer = await call_control(server.app, req.op, req.authorization, req.path,
                                        req.body)
        except Exception as exc:
            answer = error_answer(exc, "POST", req.target) or _crashed(exc)
        transport = self._transport
        close = req.close or self._closing
        if transport is not None and not transport.is_closing():
            transport.write(encode_response(answer, close))
            if close:
                transport.close()
        self._busy = False
        self.idle_since = server.loop.time()
        if self._paused and transport is not None:
            self._paused = False
            transport.resume_reading()
        if not close:
            self._next()

    def _handover(self, transport: asyncio.Transport) -> None:
        """aiohttp's protocol takes this connection, starting with what is buffered."""
        self._server.fast_connections.discard(self)
        self._server.handovers += 1
        handler: RequestHandler = Server.__call__(self._server)
        data = bytes(self._buf)
        self._buf.clear()
        self._transport = None
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        handler.data_received(data)


def _crashed(exc: Exception) -> Answer:
    log.error("call control failed", exc_info=exc)
    return problem_answer(500, "Internal server error", "the request could not be answered")


class FastServer(Server):
    """aiohttp's protocol factory for the application, creating FastProtocol connections;
    connections handed over are aiohttp's as usual, registered with this server."""

    def __init__(self, base: Server, app: web.Application) -> None:
        # The same handler and settings as the server aiohttp made for the application.
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation,
                         loop=base._loop, **base._kwargs)
        self.app = app
        self.loop = base._loop
        self.fast_connections: set[FastProtocol] = set()
        self._in_flight: set[asyncio.Task[None]] = set()
        self.fast_requests = 0  # answered here
        self.handovers = 0  # connections handed to aiohttp
        self._sweeper: asyncio.TimerHandle | None = None
        self.keepalive_timeout = float(base._kwargs.get("keepalive_timeout",
                                                        KEEPALIVE_TIMEOUT_SECONDS))

    def __call__(self) -> Any:  # the protocol factory of the sites
        if self._sweeper is None and self.keepalive_timeout > 0:
            self._sweeper = self.loop.call_later(self.keepalive_timeout / 4, self._sweep)
        return FastProtocol(self)

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        self.fast_requests += 1
        task = self.loop.create_task(coro)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _sweep(self) -> None:
        """Close fast connections idle for longer than the keep-alive timeout."""
        deadline = self.loop.time() - self.keepalive_timeout
        for conn in list(self.fast_connections):
            if not conn.busy and conn.idle_since < deadline:
                conn.close()
        self._sweeper = self.loop.call_later(self.keepalive_timeout / 4, self._sweep)

    def pre_shutdown(self) -> None:
        super().pre_shutdown()
        for conn in list(self.fast_connections):
            conn.close()

    async def shutdown(self, timeout: float | None = None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._in_flight:  # call control in progress: a few milliseconds
            await asyncio.wait(set(self._in_flight), timeout=timeout)
        for conn in list(self.fast_connections):
            conn.close()
        await super().shutdown(timeout)


class CallgateRunner(web.AppRunner):
    """web.AppRunner whose sites serve call control on the fast path."""

    async def _make_server(self) -> Server:
        return FastServer(await super()._make_server(), self.app)
