"""/readyz: without a token, ready / not ready and which check failed, from a fixed
vocabulary, with no address or error text; with an operator token, the details."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from gateway.http.observe import OBSERVER
from gateway.redis.server import RedisServer
from gateway.redis.store import LIBRARY_NAME
from gateway.rules.clock import ManualClock
from tests.support.gateway import start_gateway
from tests.support.gwclient import AUTH, Gateway

ALL_OK = {"redis": "ok", "functions": "ok", "persister": "ok"}
VOCABULARY = {"ok", "failing", "missing", "stalled", "unknown"}


async def readyz(gw: Gateway, headers: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    resp = await gw.client.get("/readyz", headers=headers)
    text = await resp.text()
    return resp.status, await resp.json(content_type=None), text


async def until(gw: Gateway, headers: dict[str, str], check: str,
                value: str) -> tuple[int, dict[str, Any], str]:
    """Poll /readyz until ``check`` reads ``value`` (sampled at most once a second)."""
    deadline = time.monotonic() + 10
    while True:
        status, body, text = await readyz(gw, headers)
        if body["checks"][check] == value:
            return status, body, text
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)  # pacing of the poll


def assert_public(body: dict[str, Any], text: str, port: int) -> None:
    assert set(body) == {"status", "checks"}
    assert set(body["checks"]) == {"redis", "functions", "persister"}
    assert set(body["checks"].values()) <= VOCABULARY
    for leak in (str(port), "127.0.0.1", "Error", "refused", "redis://", "unix"):
        assert leak not in text, (leak, text)


async def test_readyz_public_and_operator_views(own_redis: RedisServer, clock: ManualClock,
                                                aiohttp_client: Any) -> None:
    gw = await start_gateway(aiohttp_client, clock, own_redis.url)
    gw.client.server.app[OBSERVER].set_interval(0)  # a round per request, to step through
    port = own_redis.port
    assert port

    status, body, text = await readyz(gw, {})
    assert (status, body) == (200, {"status": "ready", "checks": ALL_OK})
    assert_public(body, text, port)
    status, body, _ = await readyz(gw, AUTH)
    assert (status, body["status"], body["checks"]) == (200, "ready", ALL_OK)
    d = body["details"]
    assert d["redis_nodes"] == [f"127.0.0.1:{port}"]
    assert d["persister"]["lag_seconds"] == 0 and "backlog_entries" in d["persister"]
    assert "error" not in d
    # A token that is not an operator's, or not a token at all: the public view.
    for headers in ({"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic x"}):
        status, body, text = await readyz(gw, headers)
        assert (status, body) == (200, {"status": "ready", "checks": ALL_OK})

    # The function library gone: "functions" names it.
    client = redis.Redis.from_url(own_redis.url)
    client.function_delete(LIBRARY_NAME)
    client.close()
    status, body, text = await until(gw, {}, "functions", "missing")
    assert (status, body) == (503, {"status": "not ready", "checks": {
        "redis": "ok", "functions": "missing", "persister": "ok"}})
    assert_public(body, text, port)

    # Redis gone: "redis" names it; the address and the error only for the operator.
    own_redis.kill()
    status, body, text = await until(gw, {}, "redis", "failing")
    assert (status, body) == (503, {"status": "not ready", "checks": {
        "redis": "failing", "functions": "unknown", "persister": "unknown"}})
    assert_public(body, text, port)
    status, body, _ = await until(gw, AUTH, "redis", "failing")
    assert status == 503
    d = body["details"]
    assert d["redis_nodes"] == [f"127.0.0.1:{port}"]
    assert d["error"]  # the connection error's text, for the operator only
    assert d["sampled_seconds_ago"] is not None  # the last good sample's age


async def test_readyz_never_shows_the_redis_password(tmp_path: Any, clock: ManualClock,
                                                     aiohttp_client: Any) -> None:
    """Even the operator's details name the node without the URL's credentials."""
    with RedisServer(tmp_path / "redis", name="pw-redis") as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("requirepass", "s3cret-pw")
        client.close()
        url = f"redis://:s3cret-pw@127.0.0.1:{server.port}"
        gw = await start_gateway(aiohttp_client, clock, url)
        for headers in ({}, AUTH):
            status, body, text = await readyz(gw, headers)
            assert status == 200, body
            assert "s3cret-pw" not in text
        assert body["details"]["redis_nodes"] == [f"127.0.0.1:{server.port}"]
        await gw.client.close()
