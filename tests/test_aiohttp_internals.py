"""The aiohttp internals the fast path (gateway/http/fastpath.py) builds on, checked by name: an
aiohttp upgrade that renames or reshapes one fails here, loudly, before it fails in
production. pyproject.toml pins aiohttp to the minor versions this was tested with; widen
the pin only with this file passing (docs/decisions/0003-http-fast-path.md)."""

from __future__ import annotations

import inspect

import aiohttp
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.tcp_helpers import tcp_nodelay
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import AppRunner
from aiohttp.web_server import Server

TESTED_MINOR = (3, 14)


def test_aiohttp_is_a_tested_minor_version() -> None:
    major, minor = (int(x) for x in aiohttp.__version__.split(".")[:2])
    assert (major, minor) == TESTED_MINOR, (
        f"aiohttp {aiohttp.__version__}: the fast path was tested with "
        f"{TESTED_MINOR[0]}.{TESTED_MINOR[1]}; check this file's internals, then the pin")


async def test_the_server_internals_the_fast_path_copies() -> None:
    app = web.Application()
    runner = AppRunner(app)
    server = await runner._make_server()  # FastServer wraps what this returns
    try:
        assert isinstance(server, Server)
        for name in ("_loop", "_kwargs", "_connections", "request_handler",
                     "request_factory", "handler_cancellation"):
            assert hasattr(server, name), f"aiohttp.web_server.Server.{name} is gone"
        assert isinstance(server._kwargs, dict)
        params = inspect.signature(Server.__init__).parameters
        for name in ("handler", "request_factory", "handler_cancellation", "loop"):
            assert name in params, f"Server.__init__ lost its {name} parameter"
    finally:
        await runner.cleanup()


def test_the_request_handler_internals_the_fast_path_uses() -> None:
    for name in ("data_received", "connection_made", "pause_writing", "handle_error",
                 "writing_paused"):
        assert hasattr(RequestHandler, name), f"RequestHandler.{name} is gone"
    source = inspect.getsource(RequestHandler)
    for attribute in ("self._request_count", "self._waiter", "self._loop"):
        assert attribute in source, f"RequestHandler no longer has {attribute}"
    params = inspect.signature(RequestHandler.handle_error).parameters
    assert list(params)[:5] == ["self", "request", "status", "exc", "message"]
    assert issubclass(HttpProcessingError, Exception)
    assert callable(tcp_nodelay) and SERVER_SOFTWARE.startswith("Python/")
