"""The call-control fast path: the three POSTs a switch sends for every call, served without
aiohttp's per-request machinery, on the same port and connections as everything else.

Profiling put about half of a worker's CPU per authorize inside aiohttp (request and
response objects, router, middleware, stream writer) — more than the call's own work. The
switch's requests are few and regular, so this protocol parses them itself:

    POST /v1/tenants/{tenant_id}/calls                    HTTP/1.1
    POST /v1/tenants/{tenant_id}/calls/{call_id}/extend   HTTP/1.1
    POST /v1/tenants/{tenant_id}/calls/{call_id}/end      HTTP/1.1

with a Content-Length body (or none) within the body limit, and answers them with the very
functions behind the aiohttp routes (gateway.http.api.call_control: same access check, same
operation, same problem documents). The parser takes only what is plainly valid — RFC 9110
token header names, printable ASCII field values, a target of plain path characters, a
Content-Length of at most 10 digits, one Host — and everything else (any other method or
path, a query string, percent-escapes or dot segments, HTTP/1.0, chunked or encoded bodies,
``Expect``, ``Upgrade``, a body over the limit, any byte it is not sure of, a malformed or
oversized head) is handed, bytes and connection together, to aiohttp's own protocol, which
serves that connection from then on and gives its own verdict. So the fast path only ever
answers requests aiohttp would answer the same way, and aiohttp answers the rest, including
every error of HTTP itself.

Per connection, requests are answered one at a time in arrival order (as aiohttp does).
Limits (docs/http-limits.md), none costing a timer or a system call per request:

* Backpressure. At most PIPELINE_DEPTH parsed requests wait behind the one in progress and
  at most BUFFER_HIGH_BYTES of request bytes are held; beyond either, reading pauses. While
  the transport's write buffer is above its high-water mark (the client does not read its
  answers), no request is started and nothing is read.
* Head timeout (``http_head_timeout_seconds``). A request begun must arrive whole within it,
  and a new connection must send its first request within it; a byte now and then does not
  extend it. Connections handed to aiohttp get the same for their heads. Idle kept-alive
  connections close after the keep-alive timeout, as in aiohttp, and so does (aborted) a
  connection whose client has read none of its answers for that long.
* Connection cap (``http_max_connections``, kept below RLIMIT_NOFILE). Past it, new
  connections are closed on arrival, counted and logged (at most one line per 10 s).
* One sweep a second (or a quarter of the shortest timeout) checks every connection.

aiohttp's report of a malformed request (an ERROR with a traceback whose text quotes the
offending bytes, bearer tokens included) is replaced by one INFO line without them, at
most one a second, with the number left out. Graceful shutdown lets the request in
progress finish. A request whose client disconnects still completes (the decision is made
and recorded; the switch's retry gets the same answer).
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
import time
from collections import deque
from collections.abc import Coroutine
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.tcp_helpers import tcp_nodelay
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from gateway import metrics
from gateway.http.api import (
    CallControl,
    authorize_call,
    call_control,
    end_call,
    extend_call,
)
from gateway.http.problems import error_answer
from gateway.http.web import BODY_LIMIT_BYTES, CALLS, SETTINGS, Answer, problem_answer

log = logging.getLogger(__name__)

# A head (request line and headers) longer than this goes to aiohttp, whose limits apply.
HEAD_LIMIT_BYTES = 8190
# More header lines than this go to aiohttp (its own limit is 128).
MAX_HEADERS = 64
# aiohttp's default keep-alive timeout: an idle connection is closed after it.
KEEPALIVE_TIMEOUT_SECONDS = 75.0
# Parsed requests waiting behind the one in progress: reading pauses at this many.
PIPELINE_DEPTH = 16
# Request bytes held (unparsed, and bodies of waiting requests): reading pauses beyond.
BUFFER_HIGH_BYTES = BODY_LIMIT_BYTES + 2 * HEAD_LIMIT_BYTES
# File descriptors kept for everything but client connections (Redis, ledger, logs...).
FD_RESERVE = 100
# The sweep of connections runs this often at most (sooner for short timeouts).
SWEEP_SECONDS = 1.0
# At most one log line per this many seconds about the connection cap.
CAP_LOG_SECONDS = 10.0
# At most one log line per this many seconds about malformed requests.
BAD_REQUEST_LOG_SECONDS = 1.0

_OPS: dict[bytes, CallControl] = {b"extend": extend_call, b"end": end_call}
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_SERVER = SERVER_SOFTWARE.encode()

# RFC 3986 pchar without "%" (escapes go to aiohttp): the characters of a path segment.
_SEGMENT = rb"[A-Za-z0-9\-._~!$&'()*+,;=:@]+"
_REQUEST_LINE_RE = re.compile(
    rb"POST (/v1/tenants/(%s)/calls(?:/(%s)/(extend|end))?) HTTP/1\.1" % (_SEGMENT, _SEGMENT))
# Header fields, each "name:value CRLF": RFC 9110 token names; values of visible ASCII,
# spaces and tabs only (no control characters, no obs-text, no obs-fold).
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD = rb"%s:[\t\x20-\x7e]*\r\n" % _TOKEN
_FIELDS_RE = re.compile(rb"(?:%s)*" % _FIELD)


def _prefixes(literal: bytes) -> bytes:
    """A pattern matching every prefix of literal, the empty one included."""
    pattern = b""
    for byte in reversed(literal):
        pattern = b"(?:%s%s)?" % (re.escape(bytes([byte])), pattern)
    return pattern


# What may begin a fast-path request before its line is complete, and a head before its
# end: bytes that cannot be its beginning are handed over at once (aiohttp may answer
# them at once), never waited on.
_LINE_START_RE = re.compile(
    rb"%s|POST /v1/tenants/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*%s"
    % (_prefixes(b"POST /v1/tenants/"), _prefixes(b" HTTP/1.1\r")))
_FIELDS_START_RE = re.compile(
    rb"(?:%s)*(?:%s(?::[\t\x20-\x7e]*\r?)?|\r)?" % (_FIELD, _TOKEN))

# Header names the parser looks at: their codes. Singletons (aiohttp refuses a second one)
# have a bit of their own, above the low byte.
_HOST, _LENGTH, _AUTHORIZATION, _CONNECTION, _AIOHTTP = 1, 2, 3, 4, 5
_NAMES: dict[bytes, int] = {
    b"host": _HOST | 1 << 8,
    b"content-length": _LENGTH | 1 << 9,
    b"authorization": _AUTHORIZATION,
    b"connection": _CONNECTION,
    b"content-type": 1 << 10,
    b"user-agent": 1 << 11,
    b"content-location": 1 << 12,
    b"content-range": 1 << 13,
    b"etag": 1 << 14,
    b"max-forwards": 1 << 15,
    b"server": 1 << 16,
    # Headers that change how aiohttp reads or answers the request: aiohttp's.
    b"transfer-encoding": _AIOHTTP,
    b"content-encoding": _AIOHTTP,
    b"expect": _AIOHTTP,
    b"upgrade": _AIOHTTP,
    b"sec-websocket-key1": _AIOHTTP,
}


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


def _parse(buf: bytearray) -> _Request | int:
    """A complete fast-path request at the start of buf (removed from it), _INCOMPLETE, or
    _HANDOVER when what starts there is for aiohttp (not a call-control request, or not
    plainly valid: aiohttp then gives the verdict, 400 included)."""
    eol = buf.find(b"\r\n")
    if eol < 0:
        if len(buf) > HEAD_LIMIT_BYTES or _LINE_START_RE.fullmatch(buf) is None:
            return _HANDOVER
        return _INCOMPLETE
    line = _REQUEST_LINE_RE.fullmatch(buf, 0, eol)
    if line is None:
        return _HANDOVER
    target, tenant, call, op = line.groups()  # bytes, copied now: buf changes below
    if b"/." in target:  # dot segments: aiohttp normalises them
        return _HANDOVER
    end = buf.find(b"\r\n\r\n", eol)
    if end < 0:
        if len(buf) > HEAD_LIMIT_BYTES or _FIELDS_START_RE.fullmatch(buf, eol + 2) is None:
            return _HANDOVER
        return _INCOMPLETE
    if end > HEAD_LIMIT_BYTES:
        return _HANDOVER
    fields = bytes(buf[eol + 2:end + 2])  # each line with its CRLF; b"" when none
    if _FIELDS_RE.fullmatch(fields) is None:
        return _HANDOVER
    lines = fields.split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1:
        return _HANDOVER
    length = 0
    authorization: str | None = None
    close = False
    seen = 0
    for field in lines:
        if not field:
            continue
        name, _, value = field.partition(b":")
        code = _NAMES.get(name.lower(), 0)
        if not code:
            continue
        if code & seen & ~0xFF:  # a second singleton: aiohttp answers 400
            return _HANDOVER
        seen |= code
        kind = code & 0xFF
        if kind == _LENGTH:
            value = value.strip(b" \t")
            if not 0 < len(value) <= 10 or not value.isdigit():
                return _HANDOVER
            length = int(value)
            if length > BODY_LIMIT_BYTES:
                return _HANDOVER
        elif kind == _AUTHORIZATION:
            if authorization is None:
                authorization = value.strip(b" \t").decode()
        elif kind == _CONNECTION:
            for token in value.lower().split(b","):
                token = token.strip(b" \t")
                if token == b"close":
                    close = True
                elif token != b"keep-alive":
                    return _HANDOVER
        elif kind == _AIOHTTP:
            return _HANDOVER
    if not seen & _NAMES[b"host"] & ~0xFF:  # HTTP/1.1 without Host: aiohttp answers 400
        return _HANDOVER
    start = end + 4
    stop = start + length
    if len(buf) < stop:
        return _INCOMPLETE
    body = bytes(buf[start:stop])
    del buf[:stop]
    if op is None:
        return _Request(authorize_call, {"tenant_id": tenant.decode()}, target.decode(),
                        authorization, body, close)
    return _Request(_OPS[op], {"tenant_id": tenant.decode(), "call_id": call.decode()},
                    target.decode(), authorization, body, close)


class FastProtocol(asyncio.Protocol):
    """One connection: call control here, anything else handed to aiohttp."""

    def __init__(self, server: FastServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._queue: deque[_Request] = deque()  # parsed, waiting behind the one in progress
        self._queued_bytes = 0  # their bodies
        self._busy = False
        self._closing = False
        self._last = False  # a request asked to close: parse nothing after it
        self._aiohttp_next = False  # what starts the buffer is aiohttp's
        self._reading_paused = False
        self._writing_paused = False
        self._writing_paused_at = 0.0
        self.opened_at = 0.0
        self.idle_since = 0.0
        self.served = 0
        self._mark: tuple[int, float] | None = None  # (served, when) a partial request seen

    @property
    def busy(self) -> bool:
        return self._busy

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._transport = transport
        tcp_nodelay(transport, True)  # as aiohttp does: answers leave at once
        self.opened_at = self.idle_since = self._server.loop.time()
        self._server.fast_connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.fast_connections.discard(self)
        self._transport = None
        self._buf.clear()
        self._queue.clear()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._writing_paused_at = self._server.loop.time()
        self._flow()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._pump()

    def close(self) -> None:
        """Close after the request in progress (graceful shutdown)."""
        self._closing = True
        if not self._busy and self._transport is not None:
            self._transport.close()

    def _pump(self) -> None:
        """Parse what has arrived (up to the pipeline depth), start the next request when
        none is in progress, hand the connection over when aiohttp's turn has come."""
        transport = self._transport
        if transport is None or self._closing:
            return
        buf, queue = self._buf, self._queue
        while (buf and len(queue) < PIPELINE_DEPTH and not self._aiohttp_next
               and not self._last):
            req = _parse(buf)
            if isinstance(req, _Request):
                queue.append(req)
                self._queued_bytes += len(req.body)
                self._last = req.close
            elif req == _HANDOVER:
                self._aiohttp_next = True
            else:
                break
        if not self._busy and not self._writing_paused:
            if queue:
                req = queue.popleft()
                self._queued_bytes -= len(req.body)
                self._busy = True
                self._server.track(self._serve(req))
            elif self._aiohttp_next:
                self._handover(transport)
                return
        self._flow()

    def _flow(self) -> None:
        """Pause reading while enough is owed or the client does not read its answers;
        resume once that has drained (or nothing is left to work on)."""
        transport = self._transport
        if transport is None:
            return
        working = self._busy or bool(self._queue)
        owed = len(self._buf) + self._queued_bytes
        if self._reading_paused:
            if not self._writing_paused and (
                    not working or (len(self._queue) <= PIPELINE_DEPTH // 2
                                    and owed <= BUFFER_HIGH_BYTES // 2)):
                self._reading_paused = False
                transport.resume_reading()
        elif self._writing_paused or (working and (len(self._queue) >= PIPELINE_DEPTH
                                                   or owed > BUFFER_HIGH_BYTES)):
            self._reading_paused = True
            transport.pause_reading()

    async def _serve(self, req: _Request) -> None:
        server = self._server
        if req.op is authorize_call:
            server.app[CALLS].new_request()  # this task's context came from the last one's
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
        elif req.op is authorize_call:
            server.app[CALLS].answer_lost()  # an allow nobody hears is undone
        self._busy = False
        self.served += 1
        self.idle_since = server.loop.time()
        if close:
            self._closing = True
        else:
            self._pump()

    def expire(self, now: float, head_timeout: float, keepalive_timeout: float) -> bool:
        """Close the connection if a timeout has passed (called by the sweep); True if
        it was a head timeout."""
        transport = self._transport
        if transport is None:
            return False
        if self._writing_paused:  # the client reads none of its answers
            if keepalive_timeout > 0 and now - self._writing_paused_at >= keepalive_timeout:
                transport.abort()  # close() would wait for the answers to be read
            return False
        if self._busy or self._queue:
            self._mark = None
            return False
        if self.served == 0:  # the first request: within head_timeout of connecting
            if now - self.opened_at >= head_timeout:
                transport.close()
                return True
        elif self._buf:  # a request begun, incomplete: within head_timeout of first seen
            if self._mark is None or self._mark[0] != self.served:
                self._mark = (self.served, now)
            elif now - self._mark[1] >= head_timeout:
                transport.close()
                return True
        elif keepalive_timeout > 0 and now - self.idle_since >= keepalive_timeout:
            self.close()
        return False

    def _handover(self, transport: asyncio.Transport) -> None:
        """aiohttp's protocol takes this connection, starting with what is buffered."""
        self._server.fast_connections.discard(self)
        self._server.handovers += 1
        handler = self._server.aiohttp_handler()
        data = bytes(self._buf)
        self._buf.clear()
        self._transport = None
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        handler.data_received(data)


def _crashed(exc: Exception) -> Answer:
    log.error("call control failed", exc_info=exc)
    return problem_answer(500, "Internal server error", "the request could not be answered")


class _Rejected(asyncio.Protocol):
    """A connection over the cap: closed on arrival."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class AiohttpHandler(RequestHandler):
    """aiohttp's protocol for connections it serves, with the head timeout: the sweep
    closes one waiting for a request whose bytes began arriving longer than the head
    timeout ago (or, never used, opened longer ago), and one whose client has read
    nothing for the keep-alive timeout while answers wait."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._partial = False  # bytes arrived since the last complete request
        self._mark: tuple[int, float] | None = None
        self.opened_at = self._loop.time()
        self._writing_paused_at = 0.0

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writing_paused_at = self._loop.time()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):  # a malformed request: counted here, its
            BAD_REQUESTS.count += 1  # log line filtered (BadRequestFilter)
        return super().handle_error(request, status, exc, message)

    def data_received(self, data: bytes) -> None:
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:
            self._partial = False
        elif data:
            self._partial = True

    def expire(self, now: float, head_timeout: float, keepalive_timeout: float) -> bool:
        transport = self.transport
        if (transport is not None and self.writing_paused and keepalive_timeout > 0
                and now - self._writing_paused_at >= keepalive_timeout):
            transport.abort()  # the client reads none of its answers
            return False
        waiter = self._waiter
        if transport is None or waiter is None or waiter.done():  # not waiting
            self._mark = None
            return False
        if self._request_count == 0 and not self._partial:  # never used
            if now - self.opened_at < head_timeout:
                return False
        elif not self._partial:
            return False  # idle between requests: aiohttp's keep-alive timeout
        elif self._mark is None or self._mark[0] != self._request_count:
            self._mark = (self._request_count, now)
            return False
        elif now - self._mark[1] < head_timeout:
            return False
        self.force_close()
        return True


class _RateLimited:
    """Tells when a line may be logged: at most one per `seconds`; counts the others."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = float("-inf")
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            self.suppressed += 1
            return False
        self._last = now
        return True

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


class BadRequestFilter(logging.Filter):
    """On aiohttp's server logger: its report of a malformed request — an ERROR with a
    traceback quoting the request's bytes, bearer tokens included — becomes one INFO line
    naming the peer and the kind of error only, at most one a second."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = _RateLimited(BAD_REQUEST_LOG_SECONDS)
        self.count = 0  # malformed requests answered (the sweep moves them to the metric)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if self.limit.ready():
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            more = self.limit.take_suppressed()
            log.info("malformed HTTP request from %s answered %s (%s)%s", peer, exc.code,
                     type(exc).__name__, f"; {more} more not logged" if more else "")
        return False


BAD_REQUESTS = BadRequestFilter()
logging.getLogger("aiohttp.server").addFilter(BAD_REQUESTS)


def connection_cap(wanted: int) -> int:
    """The connection cap that fits RLIMIT_NOFILE (raising the soft limit up to the hard
    one when needed), FD_RESERVE descriptors kept for the rest of the worker."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft - FD_RESERVE < wanted:
        cap = max(1, soft - FD_RESERVE)
        log.warning("http_max_connections %d lowered to %d: RLIMIT_NOFILE is %d", wanted,
                    cap, soft)
        return cap
    return wanted


class FastServer(Server):
    """aiohttp's protocol factory for the application, creating FastProtocol connections
    (or, with fast=False, aiohttp's for every connection, with the same limits);
    connections handed over are aiohttp's as usual, registered with this server."""

    def __init__(self, base: Server, app: web.Application, *, fast: bool = True,
                 head_timeout: float | None = None,
                 max_connections: int | None = None) -> None:
        # The same handler and settings as the server aiohttp made for the application.
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation,
                         loop=base._loop, **base._kwargs)
        settings = app[SETTINGS]
        self.app = app
        self.fast = fast
        self.loop = base._loop
        self.fast_connections: set[FastProtocol] = set()
        self._in_flight: set[asyncio.Task[None]] = set()
        self.fast_requests = 0  # answered here
        self.handovers = 0  # connections handed to aiohttp
        self.rejected = 0  # connections closed on arrival (cap)
        self.head_timeouts = 0
        self._unreported = [0, 0, 0]  # rejected, head timeouts, bad requests: for metrics
        self._cap_log = _RateLimited(CAP_LOG_SECONDS)
        self.head_timeout = float(head_timeout if head_timeout is not None
                                  else settings.http_head_timeout_seconds)
        self.max_connections = connection_cap(
            max_connections if max_connections is not None else settings.http_max_connections)
        self._sweeper: asyncio.TimerHandle | None = None
        self.keepalive_timeout = float(base._kwargs.get("keepalive_timeout",
                                                        KEEPALIVE_TIMEOUT_SECONDS))
        shortest = min(t for t in (self.head_timeout, self.keepalive_timeout, 4 * SWEEP_SECONDS)
                       if t > 0)
        self.sweep_seconds = max(0.05, shortest / 4)
        self._bad_requests_seen = BAD_REQUESTS.count

    @property
    def open_connections(self) -> int:
        return len(self.fast_connections) + len(self._connections)

    def __call__(self) -> Any:  # the protocol factory of the sites
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.sweep_seconds, self._sweep)
        if self.open_connections >= self.max_connections:
            return self._reject()
        return FastProtocol(self) if self.fast else self.aiohttp_handler()

    handler_class: type[AiohttpHandler] = AiohttpHandler

    def aiohttp_handler(self) -> AiohttpHandler:
        return self.handler_class(self, loop=self._loop, **self._kwargs)

    def _reject(self) -> asyncio.Protocol:
        self.rejected += 1
        self._unreported[0] += 1
        if self._cap_log.ready():
            more = self._cap_log.take_suppressed()
            log.warning("connection cap reached: %d open (http_max_connections); new "
                        "connections are closed%s", self.open_connections,
                        f" ({more} more since the last line)" if more else "")
        return _Rejected()

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        self.fast_requests += 1
        task = self.loop.create_task(coro)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _sweep(self) -> None:
        """Close connections past their head or keep-alive timeout; report the counts."""
        now = self.loop.time()
        head, keepalive = self.head_timeout, self.keepalive_timeout
        timeouts = 0
        for conn in list(self.fast_connections):
            timeouts += conn.expire(now, head, keepalive)
        for handler in list(self._connections):
            if isinstance(handler, AiohttpHandler):
                timeouts += handler.expire(now, head, keepalive)
        self.head_timeouts += timeouts
        bad = BAD_REQUESTS.count - self._bad_requests_seen
        self._bad_requests_seen += bad
        rejected, earlier_timeouts, _ = self._unreported
        self._unreported = [0, 0, 0]
        metrics.set_http_state(self.open_connections, rejected, earlier_timeouts + timeouts,
                               bad)
        self._sweeper = self.loop.call_later(self.sweep_seconds, self._sweep)

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
    """web.AppRunner whose sites serve call control on the fast path (fast=False: every
    connection is aiohttp's, with the same connection limits). head_timeout and
    max_connections default to the application's settings."""

    def __init__(self, app: web.Application, *, fast: bool = True,
                 head_timeout: float | None = None, max_connections: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._fast_options: dict[str, Any] = {"fast": fast, "head_timeout": head_timeout,
                                              "max_connections": max_connections}

    async def _make_server(self) -> Server:
        return FastServer(await super()._make_server(), self.app, **self._fast_options)
