"""Issue 11, failover: kill -9 of the primary serving a loaded tenant's slot, on a Redis
Cluster of three primaries with a replica each (cluster-node-timeout 3 s), under load
through a `callgate serve` worker. Checks:

* the tenant is served again without a restart of the gateway, at most 2 s after Redis has
  promoted the replica (the gateway's share of the outage; the outage itself, the span of
  service_unavailable answers, is printed beside issue 11's bound of cluster-node-timeout
  + 2 s, which Redis's own failover does not always meet: docs/faults.md);
* the function library is on the promoted replica (FUNCTION LIST, as soon as it serves);
* no acknowledged end is lost and no phantom allow: every answer against what the
  promoted node holds (tests/support/truth.py).

The killed node is started again after each run and rejoins as a replica, so the next run
kills the primary of another (random) tenant's slot. Seeded: the seed is printed;
CALLGATE_CHAOS_SEED replays it; CALLGATE_CHAOS_REPEATS runs that many kills (1 in
`make test`, 20 under `make chaos`).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.redis.keys import tenant_keys
from gateway.redis.server import RedisServer, _probe_client
from gateway.redis.store import LIBRARY_NAME
from tests.support.cluster import RedisCluster
from tests.support.hangguard import hang_guard
from tests.support.scenario import (
    Caller,
    chaos_seed,
    closed_loop,
    new_tenant_id,
    repeats,
    settle_and_check,
    setup_tenant,
    voids_line,
)
from tests.support.serve import PARTITIONS, ServeProcess
from tests.support.truth import ALLOW, Report

pytestmark = [pytest.mark.chaos, pytest.mark.phantom]

NODE_TIMEOUT_MS = int(os.environ.get("CALLGATE_CHAOS_NODE_TIMEOUT_MS", "3000"))
OUTAGE_TARGET_SECONDS = NODE_TIMEOUT_MS / 1000 + 2  # issue 11's bound, printed
GATEWAY_LAG_MAX_SECONDS = 2.0  # from the promotion to the last service_unavailable answer
# CALLGATE_CHAOS_OUTAGE_STRICT=1 also gates the outage on issue 11's bound.
OUTAGE_STRICT = os.environ.get("CALLGATE_CHAOS_OUTAGE_STRICT", "") == "1"
CONNECTIONS = 16
PAUSE_SECONDS = 0.01  # between one connection's calls: a denied call costs nothing to wait
CALLS_MAX = 50_000  # per kill; the load stops on time long before
LOAD_BEFORE_SECONDS = 1.0
SERVED_AGAIN_SECONDS = 1.0  # load kept on once allows come back after the kill
# Bounds of waiting, far above what a failover takes: past them the run fails.
PROMOTION_DEADLINE_SECONDS = NODE_TIMEOUT_MS / 1000 * 5 + 10
RECOVERY_DEADLINE_SECONDS = PROMOTION_DEADLINE_SECONDS + 10


@pytest.fixture
def failover_gateway(tmp_path: Path) -> Iterator[tuple[ServeProcess, RedisCluster]]:
    with RedisCluster(tmp_path / "cluster", replicas=1,
                      node_timeout_ms=NODE_TIMEOUT_MS) as cluster, \
            ServeProcess(tmp_path / "serve", cluster.url) as serve:
        yield serve, cluster


def library_loaded(node: RedisServer) -> bool:
    with _probe_client(node.port) as client:
        return bool(client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME))


async def promoted(cluster: RedisCluster, key: str, killed: RedisServer) -> RedisServer:
    """The node that serves ``key`` once a node other than ``killed`` does."""
    end = time.monotonic() + PROMOTION_DEADLINE_SECONDS
    while True:
        try:
            node = await asyncio.to_thread(cluster.primary_for, key)
        except RuntimeError:
            node = killed
        if node is not killed:
            return node
        assert time.monotonic() < end, f"no replica promoted for {key}"
        await asyncio.sleep(0.05)


async def served_again(caller: Caller, since: float) -> None:
    """Until the tenant has had allows for SERVED_AGAIN_SECONDS after its last
    service_unavailable answer later than ``since``."""
    end = time.monotonic() + RECOVERY_DEADLINE_SECONDS
    while time.monotonic() < end:
        calls = list(caller.answers.calls.values())
        down = [t for t in caller.answers.unavailable_times() if t >= since]
        back = [c.authorize_at for c in calls if c.authorize == ALLOW
                and down and c.authorize_at > down[-1]]
        if back and time.monotonic() - min(back) >= SERVED_AGAIN_SECONDS:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the tenant was not served again within {RECOVERY_DEADLINE_SECONDS} s")


async def test_primary_killed_under_load_fails_over_cleanly(
    failover_gateway: tuple[ServeProcess, RedisCluster],
) -> None:
    serve, cluster = failover_gateway
    rng = random.Random(chaos_seed())
    reports: list[Report] = []
    outages: list[float] = []
    lags: list[float] = []
    async with hang_guard(120 + 90 * repeats()):
        for run in range(repeats()):
            tenant = new_tenant_id("failover")
            balance = await setup_tenant(serve.port, tenant)
            slot_key = tenant_keys(tenant, PARTITIONS).tenant
            victim = await asyncio.to_thread(cluster.primary_for, slot_key)
            caller = Caller(serve.port, tenant, random.Random(rng.random()))
            stop = asyncio.Event()
            load = asyncio.create_task(
                closed_loop(caller, stop, CONNECTIONS, CALLS_MAX, PAUSE_SECONDS))
            try:
                await asyncio.sleep(LOAD_BEFORE_SECONDS)
                killed_at = time.monotonic()
                victim.kill()
                successor = await promoted(cluster, slot_key, victim)
                promoted_at = time.monotonic()
                promoted_s = promoted_at - killed_at
                assert await asyncio.to_thread(library_loaded, successor), \
                    f"no {LIBRARY_NAME} library on the promoted node {successor}"
                await served_again(caller, killed_at)
            finally:
                stop.set()
                await load
            await caller.retry_ends()
            report = await settle_and_check(cluster.url, caller, balance, stable_s=2.0)
            down = caller.answers.unavailable_times()
            outage = caller.answers.unavailable_span_s()
            lag = down[-1] - promoted_at if down else 0.0
            print(f"failover {run + 1}/{repeats()}: killed {victim.name}, {successor.name} "
                  f"promoted after {promoted_s:.2f} s, outage {outage:.2f} s (target "
                  f"{OUTAGE_TARGET_SECONDS:.1f} s), last service_unavailable {lag:+.2f} s "
                  f"after the promotion ({len(down)} such answers)\n{report.summary()}")
            reports.append(report)
            outages.append(outage)
            lags.append(lag)
            if run + 1 < repeats():
                # The killed node rejoins as a replica of its successor; the next run
                # starts on a whole cluster again.
                await asyncio.to_thread(victim.start)
                await asyncio.to_thread(cluster.wait_ready, 60.0)
    phantoms = [len(r.phantoms) for r in reports]
    print(voids_line(serve.port))
    print(f"failover outages (s): {[round(o, 2) for o in outages]}, over the target "
          f"{OUTAGE_TARGET_SECONDS:.1f} s: {sum(o > OUTAGE_TARGET_SECONDS for o in outages)}; "
          f"gateway lag (s): {[round(g, 2) for g in lags]}; "
          f"phantoms per run: {phantoms} (total {sum(phantoms)})")
    assert all(o > 0 for o in outages), "a kill of the tenant's primary went unnoticed"
    bad = [r.summary() for r in reports if not r.ok]
    assert not bad, f"{len(bad)} of {len(reports)} failovers departed from the answers:\n" + \
        "\n".join(bad)
    assert max(lags) <= GATEWAY_LAG_MAX_SECONDS, \
        f"service_unavailable answers up to {max(lags):.2f} s after the promotion"
    if OUTAGE_STRICT:
        assert max(outages) <= OUTAGE_TARGET_SECONDS, \
            f"outages {outages} s, bound {OUTAGE_TARGET_SECONDS} s (node timeout + 2 s)"
