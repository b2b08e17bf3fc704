"""Fixtures shared by the whole suite: real redis-server processes, no mocks.

A missing redis-server fails these fixtures loudly with an install hint (``make redis``);
tests are never skipped silently for lack of Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from aiohttp.web_runner import BaseRunner

from gateway.config import Settings, load_settings
from gateway.http.app import create_app
from gateway.http.fastpath import CallgateRunner
from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock
from tests.gwclient import Gateway
from tests.support.cluster import RedisCluster


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One standalone redis-server (AOF on) for the whole session, on a free port.

    Shared by every test: keep keys isolated per test (unique tenant ids or prefixes)
    instead of flushing. Tests that kill or restart Redis start a server of their own.
    """
    server = RedisServer(tmp_path_factory.mktemp("redis"), name="test-redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster of three primaries with a replica each (cluster-node-timeout 3 s),
    started on first use (it takes about 7 s)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"), replicas=1)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (AOF on), for tests that kill or hang it, count its
    commands, or need its data alone; resumed (if a test stopped it) and stopped after."""
    with RedisServer(tmp_path / "redis", name="own-redis") as server:
        yield server
        if server.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGCONT)


@pytest.fixture
def redis_sync(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A synchronous client of ``redis_server`` for assertions; replies are bytes."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The suite runs on uvloop, as the gateway does in production."""
    return {"uvloop": uvloop.new_event_loop}


# -- the gateway under test ----------------------------------------------------------------

from tests.gwclient import OPERATOR_TOKEN  # noqa: E402

# 2026-11-27T10:00:00Z: the tests' "now"; ManualClock moves it across months when needed.
T0 = 1_795_773_600


def make_settings(redis_url: str, **overrides: object) -> Settings:
    """Settings for a gateway under test. The call-control bound is raised to 5 s: a loaded
    2-core CI machine must not turn into spurious service_unavailable answers. The tests of
    that bound (test_redis_down.py) set it back to 100 ms."""
    from dataclasses import replace

    base = load_settings(env={"CALLGATE_OPERATOR_TOKEN": OPERATOR_TOKEN})
    fields: dict[str, object] = {"redis_timeout_ms": 5000, **overrides}
    return replace(base, redis_url=redis_url, **fields)  # type: ignore[arg-type]


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """The Redis the store-level tests run on; tests marked ``cluster`` also run on a
    local 3-primary Redis Cluster (see pytest_generate_tests below)."""
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_url" in metafunc.fixturenames:
        on_cluster = metafunc.definition.get_closest_marker("cluster") is not None
        topologies = ["single", "cluster"] if on_cluster else ["single"]
        metafunc.parametrize("store_url", topologies, indirect=True)


class CallgateTestServer(TestServer):
    """The application served as `callgate serve` serves it: call control on the fast
    path (gateway.http.fastpath), everything else by aiohttp."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return CallgateRunner(self.app, **kwargs)


@pytest.fixture
def aiohttp_client(aiohttp_client: Any) -> Any:
    """pytest-aiohttp's client factory, serving an application like `callgate serve`."""

    async def make(app: Any, **kwargs: Any) -> Any:
        if isinstance(app, web.Application):
            app = CallgateTestServer(app)
        assert isinstance(app, BaseTestServer)
        return await aiohttp_client(app, **kwargs)

    return make


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def tenant_id() -> str:
    """A fresh tenant per test: keys never collide, so no flush is needed."""
    return "t-" + uuid.uuid4().hex[:12]


async def start_gateway(aiohttp_client: Any, clock: ManualClock, redis_url: str,
                        **overrides: object) -> Gateway:
    """The app on ``redis_url`` (make_settings with ``overrides``), served like
    `callgate serve` serves it, behind a test client."""
    settings = make_settings(redis_url, **overrides)
    client = await aiohttp_client(create_app(settings, clock=clock))
    return Gateway(client, clock, settings)


@pytest.fixture
async def gw(store_url: str, clock: ManualClock, aiohttp_client: Any) -> Gateway:
    return await start_gateway(aiohttp_client, clock, store_url)


# Ledger fixtures (SQLite, and a PostgreSQL server the suite starts): ledger_url, postgres_url.
pytest_plugins = ["tests.ledger_fixtures"]
