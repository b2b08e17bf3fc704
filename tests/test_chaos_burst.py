"""Issue 11, burst: a thousand connections and more arriving at once on one `callgate serve`
worker, each authorize -> end. Whatever each authorize was answered (allow, any deny, an
HTTP error, no answer), Redis must hold exactly that once things settle: no phantom allow
(a call answered deny but recorded allowed and active, which the reaper would bill in
full), no lost end, reservations and the balance equal to the answers.

Seeded: the seed is printed; CALLGATE_CHAOS_SEED replays it. CALLGATE_CHAOS_REPEATS runs
the burst that many times (1 in `make test`, 20 under `make chaos`);
CALLGATE_CHAOS_BURST_CONNECTIONS sets its size (default 1200).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.redis.server import RedisServer
from tests.support.hangguard import hang_guard
from tests.support.scenario import (
    Caller,
    burst,
    chaos_seed,
    new_tenant_id,
    repeats,
    settle_and_check,
    setup_tenant,
    voids_line,
)
from tests.support.serve import ServeProcess
from tests.support.truth import Report

pytestmark = [pytest.mark.chaos, pytest.mark.phantom]

CONNECTIONS = int(os.environ.get("CALLGATE_CHAOS_BURST_CONNECTIONS", "1200"))
# The bound on one call-control round trip (config.py, redis_timeout_ms; 100 ms in
# production): short, so that a burst of this size runs some requests past it.
REDIS_TIMEOUT_MS = int(os.environ.get("CALLGATE_CHAOS_BURST_TIMEOUT_MS", "10"))


@pytest.fixture
def burst_gateway(tmp_path: Path) -> Iterator[tuple[ServeProcess, RedisServer]]:
    with RedisServer(tmp_path / "redis", name="burst-redis") as server, \
            ServeProcess(tmp_path / "serve", server.url,
                         {"CALLGATE_REDIS_TIMEOUT_MS": str(REDIS_TIMEOUT_MS)}) as serve:
        yield serve, server


async def test_burst_of_connections_leaves_no_phantom(
    burst_gateway: tuple[ServeProcess, RedisServer],
) -> None:
    serve, server = burst_gateway
    rng = random.Random(chaos_seed())
    reports: list[Report] = []
    async with hang_guard(120 + 60 * repeats()):
        for run in range(repeats()):
            tenant = new_tenant_id("burst")
            balance = await setup_tenant(serve.port, tenant)
            caller = Caller(serve.port, tenant, random.Random(rng.random()))
            opened = await burst(caller, CONNECTIONS)
            await caller.retry_ends()
            report = await settle_and_check(server.url, caller, balance)
            print(f"burst {run + 1}/{repeats()}: {opened} connections opened\n"
                  f"{report.summary()}")
            assert opened >= 1000, f"only {opened} of {CONNECTIONS} connections opened"
            reports.append(report)
    phantoms = [len(r.phantoms) for r in reports]
    print(voids_line(serve.port))
    print(f"burst phantoms per run: {phantoms} (total {sum(phantoms)})")
    bad = [r.summary() for r in reports if not r.ok]
    assert not bad, f"{len(bad)} of {len(reports)} bursts departed from the answers:\n" + \
        "\n".join(bad)
