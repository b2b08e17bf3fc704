"""Issue 11, stall: redis-server stopped (SIGSTOP) for longer than the call-control deadline
while a `callgate serve` worker is loaded, then resumed (SIGCONT). Requests that pass their
deadline are answered deny / service_unavailable (ends: 503) while their FCALLs wait in
Redis's socket; once it resumes, Redis must not hold any of them as allowed, and every end
retried after a 503 must land once, with the bill it answers.

Seeded: the seed is printed; CALLGATE_CHAOS_SEED replays it. CALLGATE_CHAOS_REPEATS runs
the stall that many times (1 in `make test`, 20 under `make chaos`).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.redis.server import RedisServer
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
from tests.support.serve import ServeProcess
from tests.support.truth import Report

pytestmark = [pytest.mark.chaos, pytest.mark.phantom]

# The production bound (config.py, redis_timeout_ms); CALLGATE_CHAOS_STALL_TIMEOUT_MS
# sets another (above the stall: no deadline passes, and the run must be clean).
REDIS_TIMEOUT_MS = int(os.environ.get("CALLGATE_CHAOS_STALL_TIMEOUT_MS", "100"))
CONNECTIONS = 64
CALLS_MAX = 20_000  # per stall; the load stops on time long before
LOAD_BEFORE_SECONDS = 0.5
LOAD_AFTER_SECONDS = 0.7
STALL_SECONDS = (0.3, 1.0)  # drawn per run: 3 to 10 deadlines


@pytest.fixture
def stall_gateway(tmp_path: Path) -> Iterator[tuple[ServeProcess, RedisServer]]:
    with RedisServer(tmp_path / "redis", name="stall-redis") as server, \
            ServeProcess(tmp_path / "serve", server.url,
                         {"CALLGATE_REDIS_TIMEOUT_MS": str(REDIS_TIMEOUT_MS)}) as serve:
        try:
            yield serve, server
        finally:
            if server.pid is not None and server.is_running():
                os.kill(server.pid, signal.SIGCONT)


async def stalled(server: RedisServer, seconds: float) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(server.pid, signal.SIGCONT)


async def test_redis_stall_under_load_leaves_no_phantom(
    stall_gateway: tuple[ServeProcess, RedisServer],
) -> None:
    serve, server = stall_gateway
    rng = random.Random(chaos_seed())
    reports: list[Report] = []
    async with hang_guard(120 + 60 * repeats()):
        for run in range(repeats()):
            tenant = new_tenant_id("stall")
            balance = await setup_tenant(serve.port, tenant)
            caller = Caller(serve.port, tenant, random.Random(rng.random()))
            stop = asyncio.Event()
            load = asyncio.create_task(closed_loop(caller, stop, CONNECTIONS, CALLS_MAX))
            stall_s = rng.uniform(*STALL_SECONDS)
            try:
                await asyncio.sleep(LOAD_BEFORE_SECONDS)
                await stalled(server, stall_s)
                await asyncio.sleep(LOAD_AFTER_SECONDS)
            finally:
                stop.set()
                await load
            await caller.retry_ends()
            report = await settle_and_check(server.url, caller, balance)
            unavailable = len(caller.answers.unavailable_times())
            print(f"stall {run + 1}/{repeats()}: Redis stopped {stall_s:.2f} s, "
                  f"{unavailable} service_unavailable answers\n{report.summary()}")
            reports.append(report)
    phantoms = [len(r.phantoms) for r in reports]
    print(voids_line(serve.port))
    print(f"stall phantoms per run: {phantoms} (total {sum(phantoms)})")
    bad = [r.summary() for r in reports if not r.ok]
    assert not bad, f"{len(bad)} of {len(reports)} stalls departed from the answers:\n" + \
        "\n".join(bad)
