"""Exactly one Redis round trip per call-control request, counted by Redis itself.

A private redis-server (nobody else's commands in its statistics): after the set-up,
CONFIG RESETSTAT, then N authorize / extend / end requests of every kind through the
HTTP app; INFO commandstats must then show exactly N calls of FCALL. Commandstats also
counts the commands the functions run inside Redis, so MONITOR (which tags those as
"lua") checks that the gateway itself sent nothing but those N FCALLs.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from gateway.http.app import create_app
from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock
from tests.support.gateway import T0, make_settings
from tests.support.gwclient import Gateway

NEW_YORK = "+12125550123"
LONDON = "+442071838750"
TOLL_FREE = "+18005550199"


@pytest.fixture
async def gw_private(own_redis: RedisServer, aiohttp_client: Any) -> AsyncIterator[Gateway]:
    settings = make_settings(own_redis.url)
    client = await aiohttp_client(create_app(settings, clock=ManualClock(T0)))
    yield Gateway(client, ManualClock(T0), settings)


def command_calls(server: RedisServer) -> dict[str, int]:
    """{command: calls} since the last CONFIG RESETSTAT, from INFO commandstats."""
    with redis.Redis.from_url(server.url) as r:
        stats = r.info("commandstats")
    # keys look like "cmdstat_fcall" (or "cmdstat_config|resetstat" for subcommands)
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def reset_stats(server: RedisServer) -> None:
    with redis.Redis.from_url(server.url) as r:
        r.config_resetstat()


STOP = "roundtrip-monitor-stop"


class Monitor:
    """Records the commands clients (not scripts) send, until it sees ECHO STOP."""

    def __init__(self, server: RedisServer) -> None:
        self.url = server.url
        self.client_commands: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def _run(self) -> None:
        r = redis.Redis.from_url(self.url, decode_responses=True)
        with r.monitor() as m:
            self._ready.set()
            for event in m.listen():
                command = str(event["command"])
                if command == f"ECHO {STOP}":
                    break
                if event.get("client_type") != "lua":
                    self.client_commands.append(command.split(" ", 1)[0].upper())
        r.close()

    def __exit__(self, *exc: object) -> None:
        with redis.Redis.from_url(self.url) as r:
            r.echo(STOP)
        self._thread.join(5)


async def test_one_fcall_per_call_control_request(
    gw_private: Gateway, own_redis: RedisServer
) -> None:
    gw, t = gw_private, "rt"
    await gw.tenant(t)
    for i in range(3):
        await gw.user(t, f"u{i}", "US", "domestic", numbers=[f"+1212555010{i}"])
    await gw.topup(t, "100.00", "topup-1")
    await gw.req("PUT", f"/v1/tenants/{t}/toll-free-numbers/{TOLL_FREE}", status=201)
    reset_stats(own_redis)
    with Monitor(own_redis) as monitor:
        requests = await call_lifecycles(gw, t)
    assert monitor.client_commands == ["FCALL"] * requests, monitor.client_commands

    calls = command_calls(own_redis)
    assert calls["fcall"] == requests, calls


async def call_lifecycles(gw: Gateway, t: str) -> int:
    """Every kind of call-control request; returns how many were made."""
    requests = 0
    for i in range(3):  # authorize -> end
        d = await gw.call(t, f"a-{i}", NEW_YORK, user=f"u{i}")
        assert d["decision"] == "allow", d
        await gw.end(t, f"a-{i}", 42)
        requests += 2
    d = await gw.call(t, "x-1", NEW_YORK, user="u0")  # authorize -> extend -> extend -> end
    assert d["decision"] == "allow", d
    await gw.extend(t, "x-1", 290)
    await gw.extend(t, "x-1", 590)
    await gw.end(t, "x-1", 700)
    requests += 4
    again = await gw.call(t, "x-1", NEW_YORK, user="u0")  # retried call id: a replay
    assert again["call_id"] == "x-1"
    requests += 1
    d = await gw.call(t, "deny-1", "+19005550100", user="u1")  # premium: denied up front
    assert d["decision"] == "deny", d
    d = await gw.call(t, "deny-2", NEW_YORK, user="nobody")  # unknown user
    assert (d["decision"], d["reason"]) == ("deny", "unknown_user"), d
    requests += 2
    d = await gw.call(t, "sos-1", "911", user="u2")  # emergency, then its end
    assert (d["decision"], d["reason"]) == ("allow", "emergency"), d
    await gw.end(t, "sos-1", 30)
    requests += 2
    d = await gw.call(t, "in-1", TOLL_FREE, direction="inbound", **{"from": LONDON})
    assert d["decision"] == "allow", d
    await gw.end(t, "in-1", 61)
    requests += 2
    d = await gw.call(t, "intl-1", LONDON, user="u2")  # international: credits
    assert d["decision"] == "allow", d
    await gw.end(t, "intl-1", 60)
    requests += 2
    return requests
