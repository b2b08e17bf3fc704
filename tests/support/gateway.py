"""A gateway under test: its settings, served as ``callgate serve`` serves it, behind a
test client (the fixtures of tests/conftest.py use these; tests import them from here)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp.test_utils import TestServer
from aiohttp.web_runner import BaseRunner

from gateway.config import Settings, load_settings
from gateway.http.app import create_app
from gateway.http.fastpath import CallgateRunner
from gateway.rules.clock import ManualClock
from tests.support.gwclient import OPERATOR_TOKEN, Gateway

# 2026-11-27T10:00:00Z: the tests' "now"; ManualClock moves it across months when needed.
T0 = 1_795_773_600


def make_settings(redis_url: str, **overrides: object) -> Settings:
    """Settings for a gateway under test. The call-control bound is raised to 5 s: a loaded
    2-core CI machine must not turn into spurious service_unavailable answers. The tests of
    that bound (test_redis_down.py) set it back to 100 ms."""
    base = load_settings(env={"CALLGATE_OPERATOR_TOKEN": OPERATOR_TOKEN})
    fields: dict[str, object] = {"redis_timeout_ms": 5000, **overrides}
    return replace(base, redis_url=redis_url, **fields)  # type: ignore[arg-type]


class CallgateTestServer(TestServer):
    """The application served as `callgate serve` serves it: call control on the fast
    path (gateway.http.fastpath), everything else by aiohttp."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return CallgateRunner(self.app, **kwargs)


async def start_gateway(aiohttp_client: Any, clock: ManualClock, redis_url: str,
                        **overrides: object) -> Gateway:
    """The app on ``redis_url`` (make_settings with ``overrides``), served like
    `callgate serve` serves it, behind a test client."""
    settings = make_settings(redis_url, **overrides)
    client = await aiohttp_client(create_app(settings, clock=clock))
    return Gateway(client, clock, settings)
