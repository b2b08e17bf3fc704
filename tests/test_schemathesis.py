"""The published contract holds: schemathesis against the live app over every operation.

The app runs as it does in production (a real TCP server, uvloop, its own redis-server, so
that generated rate decks and tenants touch no other test) with a tenant, a user, a live
call and a toll-free number already there, so that generated paths resolve. Every request
carries a valid operator token. Checks: no 5xx, status codes, content types and bodies
conform to /openapi.json.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
import uvloop
from aiohttp import web
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.http.app import create_app
from gateway.http.openapi import build_document, routed
from gateway.redis.server import RedisServer
from tests.support.gateway import make_settings
from tests.support.gwclient import AUTH

TENANT = "acme"
USER = "alice"
CALL = "live-1"
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveApp:
    """create_app(settings) served on 127.0.0.1:<port> by a thread with its own loop."""

    def __init__(self, redis_url: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._settings = make_settings(redis_url)
        self._loop = uvloop.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-app", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(create_app(self._settings))
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(30), "the app did not start"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    server = RedisServer(tmp_path_factory.mktemp("redis-schemathesis"), name="st-redis")
    server.start()
    app = LiveApp(server.url)
    app.start()
    s = requests.Session()
    s.headers.update(AUTH)
    t = f"{app.base}/v1/tenants/{TENANT}"
    seed: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PUT", t, {"name": "Acme"}),
        ("PUT", f"{t}/users/{USER}", {"country": "US", "plan": "domestic",
                                      "numbers": ["+12125550111"]}),
        ("POST", f"{t}/credits/topups", {"amount": "20.00", "idempotency_key": "seed"}),
        ("POST", f"{t}/calls", {"call_id": CALL, "user_id": USER, "to": "+12125550123"}),
        ("PUT", f"{t}/toll-free-numbers/%2B18005550199", None),
    ]
    for method, url, body in seed:
        resp = s.request(method, url, json=body, timeout=5)
        assert resp.status_code in (200, 201), resp.text
    yield app
    app.stop()
    server.stop()


@pytest.fixture(scope="module")
def api_schema(live: LiveApp) -> Any:
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    schema.config.generation.update(max_examples=MAX_EXAMPLES)
    schema.hook(map_path_parameters)
    return schema


def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    # Resolve paths: the seeded tenant always; the seeded user and call some of the time
    # (other ids exercise the 404s).
    if path_parameters and "tenant_id" in path_parameters:
        path_parameters["tenant_id"] = TENANT
        if path_parameters.get("user_id", "").startswith(("a", "b", "c", "0")):
            path_parameters["user_id"] = USER
        if path_parameters.get("call_id", "").startswith(("a", "b", "c", "0")):
            path_parameters["call_id"] = CALL
    return path_parameters


def _cases() -> list[Any]:
    """(method, path, mode) for every routed operation; negative data only where the
    operation takes some input (path, query or body)."""
    settings = make_settings("redis://127.0.0.1:1")
    app = create_app(settings)  # never started: for its routes only
    doc = build_document(settings, routed(app))
    cases = []
    for path, methods in sorted(doc["paths"].items()):
        for method, op in sorted(methods.items()):
            cases.append(pytest.param(method.upper(), path, GenerationMode.POSITIVE,
                                      id=f"{method.upper()} {path} positive"))
            if op.get("parameters") or op.get("requestBody"):
                cases.append(pytest.param(method.upper(), path, GenerationMode.NEGATIVE,
                                          id=f"{method.upper()} {path} negative"))
    return cases


@pytest.mark.parametrize("method,path,mode", _cases())
def test_api_conforms_to_its_openapi_document(api_schema: Any, method: str, path: str,
                                              mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        case.call_and_validate(headers=dict(AUTH), checks=CHECKS)

    run()
