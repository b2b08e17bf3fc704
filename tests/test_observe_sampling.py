"""/metrics and /readyz read Redis at most once a second per worker, whatever the number of
scrapers (gateway.http.observe). Redis's own command counters (INFO commandstats on the test's
own redis-server) count what the scrapes cost; a stalled Redis does not hold a scrape."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.http.app import create_app
from gateway.http.observe import OBSERVER, Observer, fullest
from gateway.redis.client import ReplyError
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock
from tests.support.gateway import make_settings, start_gateway
from tests.support.gwclient import Gateway

NEW_YORK = "+12125550123"
SCRAPERS = 64


@pytest.fixture
def rsync(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    yield client
    client.close()


def commandstats(client: redis.Redis) -> dict[str, int]:
    """{command: calls} from INFO commandstats."""
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def spent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two readings (the second INFO itself left out)."""
    out = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    out["info"] = out.get("info", 0) - 1
    return {k: n for k, n in out.items() if n}


async def settled(obs: Observer) -> None:
    """Until no round is in flight (one may outlive the requests that waited 0.5 s)."""
    deadline = time.monotonic() + 10
    while obs.metrics_rounds.in_flight or obs.ready_rounds.in_flight:
        assert time.monotonic() < deadline, "a sampling round never ended"
        await asyncio.sleep(0.01)  # pacing of the poll


def observer(gw: Gateway) -> Observer:
    obs: Observer = gw.client.server.app[OBSERVER]
    return obs


async def scrape(gw: Gateway) -> dict[str, float]:
    resp = await gw.client.get("/metrics")
    assert resp.status == 200
    return {s.name: s.value for f in text_string_to_metric_families(await resp.text())
            for s in f.samples if not s.labels}


async def test_concurrent_scrapes_share_one_sampling_round(
        own_redis: RedisServer, rsync: redis.Redis, clock: ManualClock,
        aiohttp_client: Any) -> None:
    """64 concurrent scrapes of /metrics, then of /readyz, then as many again: one sampling
    round each, one rendering. (The interval is an hour here so that the count does not
    depend on how fast the machine runs them; the next test keeps the default second.)"""
    gw = await start_gateway(aiohttp_client, clock, own_redis.url)
    obs = observer(gw)
    obs.set_interval(3600)
    partitions = gw.settings.partitions
    before = commandstats(rsync)
    for _ in range(2):
        resps = await asyncio.gather(*(gw.client.get("/metrics") for _ in range(SCRAPERS)))
        assert [r.status for r in resps] == [200] * SCRAPERS
        bodies = {await r.read() for r in resps}
        assert len(bodies) == 1  # one rendering, served to all
        ready = await asyncio.gather(*(gw.req("GET", "/readyz", headers={})
                                       for _ in range(SCRAPERS)))
        assert all(r["status"] == "ready" for r in ready)
    await settled(obs)
    cost = spent(before, commandstats(rsync))
    assert (obs.metrics_rounds.rounds, obs.ready_rounds.rounds, obs.renders.rounds) == (1, 1, 1)
    # One /metrics round: ZCARD + ZRANGE per partition, one INFO memory; one /readyz round:
    # one PING, one FUNCTION LIST, and the streams' status.
    assert cost["zcard"] == cost["zrange"] == partitions, cost
    assert cost["info"] == 1, cost
    assert cost["ping"] == 1, cost
    assert cost["function|list"] == 1, cost
    # Before: 128 commands per /metrics scrape, several hundred per /readyz.
    assert sum(cost.values()) < 2 * partitions + 4 * partitions + 10, cost


async def test_at_most_one_round_a_second(own_redis: RedisServer, rsync: redis.Redis,
                                          clock: ManualClock, aiohttp_client: Any) -> None:
    """The default interval: scrapers in a loop for about 2.5 s start at most one round per
    started second (counted by Redis, and by the observer)."""
    gw = await start_gateway(aiohttp_client, clock, own_redis.url)
    obs = observer(gw)
    assert obs.metrics_rounds.interval_s == 1.0
    partitions = gw.settings.partitions
    before = commandstats(rsync)
    t0 = time.monotonic()
    for _ in range(5000):  # bounded in count and in time
        if time.monotonic() - t0 > 2.5:
            break
        resps = await asyncio.gather(*(gw.client.get("/metrics") for _ in range(16)),
                                     *(gw.client.get("/readyz") for _ in range(4)))
        assert {r.status for r in resps} == {200}
        for r in resps:
            await r.read()
    elapsed = time.monotonic() - t0
    await settled(obs)
    cost = spent(before, commandstats(rsync))
    rounds = obs.metrics_rounds.rounds
    assert 1 <= rounds <= int(elapsed) + 1, (rounds, elapsed)
    if elapsed > 1.5:  # and a scrape after the first second started a new round
        assert rounds >= 2, (rounds, elapsed)
    assert obs.ready_rounds.rounds <= int(elapsed) + 1
    assert obs.renders.rounds <= int(elapsed) + 1
    assert cost["zcard"] == rounds * partitions, cost
    assert cost["ping"] == obs.ready_rounds.rounds, cost


@pytest.fixture
async def patient_gw(own_redis: RedisServer, clock: ManualClock,
                     aiohttp_client: Any) -> AsyncIterator[Gateway]:
    """A gateway whose store would wait a minute for Redis: a scrape that waited for its
    round would hang far past the client's timeout."""
    settings = make_settings(own_redis.url)
    store = Store.from_url(own_redis.url, settings.partitions, admin_timeout_s=60)
    client = await aiohttp_client(create_app(settings, clock=clock, store=store),
                                  timeout=aiohttp.ClientTimeout(total=20))
    try:
        yield Gateway(client, clock, settings)
    finally:
        await client.close()
        await store.close()


async def test_scrape_during_a_redis_stall_answers_with_the_last_sample(
        patient_gw: Gateway, own_redis: RedisServer) -> None:
    gw = patient_gw
    obs = observer(gw)
    obs.set_interval(0)  # every scrape wants a new round
    await gw.tenant("t")
    await gw.user("t", "u", "US", "domestic")
    assert (await gw.call("t", "c1", NEW_YORK, user="u"))["decision"] == "allow"
    fresh = await scrape(gw)
    assert (fresh["callgate_active_calls"], fresh["callgate_redis_up"]) == (1, 1)
    ready = await gw.req("GET", "/readyz", headers={})
    assert ready["status"] == "ready"

    pid = own_redis.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # connections open, nothing answered
    try:
        stale = await scrape(gw)  # answers although the round waits on Redis for 60 s
        assert (stale["callgate_active_calls"], stale["callgate_redis_up"]) == (1, 0)
        rounds = obs.metrics_rounds.rounds
        again = await asyncio.gather(*(scrape(gw) for _ in range(8)))
        assert all(s["callgate_redis_up"] == 0 for s in again)
        assert obs.metrics_rounds.rounds == rounds  # they joined the round in flight
        unknown = await gw.req("GET", "/readyz", status=503, headers={})
        assert unknown == {"status": "not ready", "checks": {
            "redis": "unknown", "functions": "unknown", "persister": "unknown"}}
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while (await scrape(gw))["callgate_redis_up"] != 1:
        assert time.monotonic() < deadline, "Redis resumed but never sampled again"
        await asyncio.sleep(0.05)  # pacing of the poll


async def test_scrape_with_redis_gone_answers(own_redis: RedisServer, clock: ManualClock,
                                              aiohttp_client: Any) -> None:
    gw = await start_gateway(aiohttp_client, clock, own_redis.url)
    observer(gw).set_interval(0)
    assert (await scrape(gw))["callgate_redis_up"] == 1
    own_redis.kill()
    deadline = time.monotonic() + 10
    while (sample := await scrape(gw))["callgate_redis_up"] != 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert sample["callgate_active_calls"] == 0  # the last sample's


async def test_redis_memory_sampled_and_oom_counted(own_redis: RedisServer,
                                                    rsync: redis.Redis, clock: ManualClock,
                                                    aiohttp_client: Any) -> None:
    """used_memory and maxmemory reach /metrics; at maxmemory (noeviction) the call path's
    OOM error replies are counted."""
    gw = await start_gateway(aiohttp_client, clock, own_redis.url)
    observer(gw).set_interval(0)
    await gw.tenant("t")
    await gw.user("t", "u", "US", "domestic")
    info: dict[str, Any] = rsync.info("memory")  # type: ignore[assignment]
    limit = int(info["used_memory"]) + 64 * 1024 * 1024
    rsync.config_set("maxmemory", limit)
    m = await scrape(gw)
    assert m["callgate_redis_memory_max_bytes"] == limit
    assert 0 < m["callgate_redis_memory_used_bytes"] < limit

    rsync.config_set("maxmemory", 1)  # now every write is refused
    ooms = m.get("callgate_redis_oom_errors_total", 0.0)
    await gw.req("POST", "/v1/tenants/t/calls", {"call_id": "c-oom", "user_id": "u",
                                                  "to": NEW_YORK}, status=None)
    m = await scrape(gw)
    assert m["callgate_redis_memory_max_bytes"] == 1
    assert m["callgate_redis_memory_used_bytes"] > 1
    assert m["callgate_redis_oom_errors_total"] == ooms + 1
    rsync.config_set("maxmemory", 0)


def test_oom_counter_counts_oom_replies_only() -> None:
    def oom_count() -> float:
        return float(metrics.REDIS_OOM_ERRORS._value.get())

    n = oom_count()
    metrics.count_redis_failure(ReplyError("OOM command not allowed when used memory > "
                                           "'maxmemory'."))
    metrics.count_redis_failure(ReplyError("ERR unknown command"))
    metrics.count_redis_failure(TimeoutError())
    metrics.count_redis_oom(ReplyError("WRONGTYPE Operation against a key"))
    assert oom_count() == n + 1


def test_fullest_primary() -> None:
    def info(used: int, maximum: int) -> str:
        return f"# Memory\r\nused_memory:{used}\r\nmaxmemory:{maximum}\r\n"

    assert fullest([info(500, 1000), info(900, 1000), info(1500, 0)]) == (900, 1000)
    assert fullest([info(10, 0), info(30, 0)]) == (30, 0)
    assert fullest([]) == (0, 0)
