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
from aiohttp.test_utils import BaseTestServer

from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock
from tests.support.cluster import RedisCluster
from tests.support.gateway import T0, CallgateTestServer, start_gateway
from tests.support.gwclient import Gateway


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


@pytest.fixture
async def gw(store_url: str, clock: ManualClock, aiohttp_client: Any) -> Gateway:
    return await start_gateway(aiohttp_client, clock, store_url)


# Ledger fixtures (SQLite, and a PostgreSQL server the suite starts): ledger_url, postgres_url.
pytest_plugins = ["tests.support.ledger_fixtures"]
