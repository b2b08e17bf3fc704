"""Redis unavailable: emergency calls go through, everything else is a bounded 503 deny."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from gateway.errors import StoreErrorReply
from gateway.http.app import CHANGES
from gateway.redis.keys import PartitionKeys, partition_of, partition_tag
from gateway.redis.server import RedisServer
from gateway.rules import calls
from gateway.rules.clock import ManualClock
from tests.support.gateway import T0, start_gateway
from tests.support.gwclient import Gateway

NEW_YORK = "+12125550123"


@pytest.fixture
async def gw_own(own_redis: RedisServer, aiohttp_client: Any) -> AsyncIterator[Gateway]:
    clock = ManualClock(T0)
    gw = await start_gateway(aiohttp_client, clock, own_redis.url, redis_timeout_ms=100)
    await gw.tenant("t1")
    await gw.user("t1", "u", "US", "domestic", numbers=["+12125550100"])
    await gw.call("t1", "before", NEW_YORK, user="u")
    yield gw


async def assert_unavailable(gw: Gateway) -> None:
    started = time.monotonic()
    d = await gw.call("t1", "c-down", NEW_YORK, user="u")
    assert (d["decision"], d["reason"], d["sip_code"]) == ("deny", "service_unavailable", 503)
    e = await gw.call("t1", "e-down", "911", user="u")
    assert (e["decision"], e["reason"], e["source"]) == ("allow", "emergency", "free")
    x = await gw.extend("t1", "before", 100)
    assert (x["decision"], x["reason"], x["sip_code"]) == ("deny", "service_unavailable", 503)
    end = await gw.end("t1", "before", 100, status=503)
    assert end["status"] == 503
    tenant = await gw.req("GET", "/v1/tenants/t1", status=503)
    assert tenant["type"].endswith("service-unavailable")
    ready = await gw.req("GET", "/readyz", status=503, headers={})
    assert ready["status"] == "not ready"
    # Bounded: six requests, each limited by the 100 ms timeout (generous margin for CI).
    assert time.monotonic() - started < 10


async def call_when_back(gw: Gateway, call_id: str, deadline_s: float = 10.0) -> Any:
    """Retry (as a switch would) until Redis answers again; the client backs off briefly
    after a failed connect, so the first attempts may still be denied."""
    deadline = time.monotonic() + deadline_s
    while True:
        d = await gw.call("t1", call_id, NEW_YORK, user="u")
        if d["reason"] != "service_unavailable" or time.monotonic() > deadline:
            return d
        await asyncio.sleep(0.01)  # pacing of the retry loop, not synchronisation


async def test_redis_killed(gw_own: Gateway, own_redis: RedisServer) -> None:
    own_redis.kill()
    await assert_unavailable(gw_own)
    own_redis.start()
    d = await call_when_back(gw_own, "after")
    assert (d["decision"], d["source"]) == ("allow", "domestic_pool")
    assert (await gw_own.end("t1", "before", 100))["billed"]["domestic_pool_minutes"] == 2


async def until(what: str, probe: Any, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not probe():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def test_the_change_listener_rides_out_a_redis_restart(
        gw_own: Gateway, own_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.redis.changes")
    listener = gw_own.client.app[CHANGES]
    await until("subscribed", lambda: listener.connected)
    own_redis.kill()
    failures = listener.failures
    await until("retrying", lambda: not listener.connected and listener.failures >= failures + 3)
    own_redis.start()
    await until("subscribed again", lambda: listener.connected and listener.connects >= 2)
    changes = [r for r in caplog.records if r.name == "gateway.redis.changes"]
    # One warning for the outage, one line when it ends: not one per attempt.
    assert [r.levelno for r in changes] == [logging.WARNING, logging.INFO], changes
    d = await call_when_back(gw_own, "after")
    assert d["decision"] == "allow"


async def test_redis_hung(gw_own: Gateway, own_redis: RedisServer) -> None:
    pid = own_redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # accepts nothing, answers nothing: the worst case
    try:
        await assert_unavailable(gw_own)
    finally:
        os.kill(pid, signal.SIGCONT)
    d = await call_when_back(gw_own, "after")
    assert d["decision"] == "allow"
    # The call whose request timed out while Redis was stopped may still have been
    # executed once Redis resumed: a retry returns that recorded answer (D32).
    retry = await gw_own.call("t1", "c-down", NEW_YORK, user="u")
    assert (retry["decision"], retry["reason"]) == ("allow", "domestic_pool")


async def test_readyz_reports_a_stalled_persister(gw_own: Gateway, own_redis: RedisServer) -> None:
    ready = await gw_own.req("GET", "/readyz", headers={})
    assert ready["checks"] == {"redis": "ok", "functions": "ok", "persister": "ok"}
    # An event appended an hour ago that no persister has taken: the ledger is behind.
    client = redis.Redis.from_url(own_redis.url)
    parts = gw_own.settings.partitions
    other = (partition_of("t1", parts) + 1) % parts  # a partition with no events yet
    stream = PartitionKeys(partition_tag(other)).events
    client.xadd(stream, {"type": "probe", "tenant": "t1", "data": "{}"},
                id=f"{int((time.time() - 3600) * 1000)}-0")
    client.close()
    # /readyz samples Redis at most once a second: poll until the next sample shows it.
    deadline = time.monotonic() + 10
    while (ready := await gw_own.req("GET", "/readyz", status=None, headers={}))[
            "status"] == "ready":
        assert time.monotonic() < deadline, ready
        await asyncio.sleep(0.1)  # pacing of the poll, not synchronisation
    assert ready["checks"] == {"redis": "ok", "functions": "ok", "persister": "stalled"}


async def test_deadline_fails_the_late_call_and_keeps_the_connection_in_step(
    own_redis: RedisServer,
) -> None:
    """The call path's deadline (one timer per connection): a command past its deadline
    fails with TimeoutError while Redis is hung; once Redis resumes, its late reply is
    discarded in order and the next caller gets its own reply, not that one."""
    from gateway.redis.client import SingleBackend, pack_command, parse_url

    _, [address] = parse_url(own_redis.url)
    backend = SingleBackend(address, 1.0)
    loop = asyncio.get_running_loop()
    assert await backend.submit("k", pack_command(("ECHO", "warm")), loop.time() + 5) == "warm"
    pid = own_redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        started = loop.time()
        late = backend.submit("k", pack_command(("ECHO", "late")), loop.time() + 0.1)
        with pytest.raises(TimeoutError):
            await late
        assert loop.time() - started < 5  # failed at its deadline, not at Redis's return
        patient = backend.submit("k", pack_command(("ECHO", "patient")), loop.time() + 10)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await patient == "patient"
    assert await backend.submit("k", pack_command(("ECHO", "next")), loop.time() + 5) == "next"
    await backend.close()


@pytest.mark.parametrize(("reply", "level"), [
    ("LOADING Redis is loading the dataset in memory", "WARNING"),
    ("MASTERDOWN Link with MASTER is down", "WARNING"),
    ("OOM command not allowed when used memory > 'maxmemory'.", "WARNING"),
    ("ERR user_script:1: Script attempted to access nonexistent global variable", "ERROR"),
])
def test_transient_error_replies_are_warnings(caplog: pytest.LogCaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch, reply: str,
                                              level: str) -> None:
    """A Redis still loading its AOF, or out of memory, is an operations matter, not a bug
    of ours: the error log is kept for replies that mean one (a 503 either way)."""
    monkeypatch.setitem(calls._log_state, "at", 0.0)  # not within a second of another line
    with caplog.at_level("WARNING", logger="gateway.rules.calls"):
        calls._log_failure("authorize", "t1", "c1", StoreErrorReply(reply))
    assert [r.levelname for r in caplog.records] == [level]


def test_failures_are_logged_at_most_once_a_second(caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An outage fails thousands of requests a second: one line a second says so, with the
    count of the failures it stands for."""
    monkeypatch.setitem(calls._log_state, "at", 0.0)
    with caplog.at_level("WARNING", logger="gateway.rules.calls"):
        for i in range(1000):
            calls._log_failure("authorize", "t1", f"c{i}", TimeoutError())
        monkeypatch.setitem(calls._log_state, "at", 0.0)  # a second later
        calls._log_failure("authorize", "t1", "last", TimeoutError())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "999 more failures" in messages[1]


@pytest.mark.parametrize(("appendonly", "extra", "expected"), [
    (True, [], None),
    (True, ["--aof-load-truncated", "yes"], "aof-load-truncated yes"),
    (False, [], "without its AOF"),
])
async def test_start_up_warns_of_a_redis_that_can_lose_acknowledged_changes(
        tmp_path: Any, aiohttp_client: Any, caplog: pytest.LogCaptureFixture,
        appendonly: bool, extra: list[str], expected: str | None) -> None:
    with RedisServer(tmp_path / "redis", appendonly=appendonly, extra_args=extra,
                     name="settings-redis") as server:
        with caplog.at_level("WARNING", logger="gateway.http.app"):
            gw = await start_gateway(aiohttp_client, ManualClock(T0), server.url)
            await gw.tenant("t1")  # started and serving
        warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.http.app"]
        if expected is None:
            assert warnings == []
        else:
            assert len(warnings) == 1 and expected in warnings[0], warnings
