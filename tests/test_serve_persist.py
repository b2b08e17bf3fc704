"""`callgate serve` runs persister and reaper as a supervised child process
(`callgate persist --reap`), never inside an HTTP worker: with 1 and with 2 workers it
persists into the default SQLite ledger of its data directory, restarts the child after a
crash, and on SIGTERM stops workers and child gracefully, losing no acknowledged event."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis

from gateway.ledger import open_ledger
from gateway.ledger.persister import GROUP, Persister, event_streams
from gateway.redis.server import RedisServer, free_port
from gateway.redis.store import Store
from loadtest.common import child_processes
from tests.support.gwclient import AUTH, OPERATOR_TOKEN
from tests.support.persist_helpers import drain
from tests.support.proctree import alive, wait_notify_child, wait_persist_child

REPO = Path(__file__).resolve().parent.parent
DEADLINE_SECONDS = 30.0
PARTITIONS = 4
TENANT = "served"


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    base: str
    data_dir: Path
    log: Path

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'ledger.db'}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


async def start_serve(tmp_path: Path, redis_url: str, workers: int,
                      **extra_env: str) -> Served:
    port = free_port()
    data_dir = tmp_path / "var"
    env = {**os.environ, "CALLGATE_REDIS_URL": redis_url, "CALLGATE_WORKERS": str(workers),
           "CALLGATE_DATA_DIR": str(data_dir), "CALLGATE_HTTP_PORT": str(port),
           "CALLGATE_OPERATOR_TOKEN": OPERATOR_TOKEN, "CALLGATE_PARTITIONS": str(PARTITIONS),
           "CALLGATE_LOG_LEVEL": "INFO"}
    for name in ("CALLGATE_DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR", "CALLGATE_PERSIST"):
        env.pop(name, None)
    env.update(extra_env)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    served = Served(proc, f"http://127.0.0.1:{port}", data_dir, log)
    deadline = time.monotonic() + DEADLINE_SECONDS
    async with aiohttp.ClientSession(served.base) as http:
        while True:
            assert proc.poll() is None, f"serve exited: {served.log_text()}"
            try:
                async with http.get("/readyz") as r:
                    if r.status == 200:
                        return served
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, f"serve not ready: {served.log_text()}"
            await asyncio.sleep(0.1)


async def setup_tenant(base: str) -> None:
    async with aiohttp.ClientSession(base, headers=AUTH) as http:
        async with http.put(f"/v1/tenants/{TENANT}", json={"name": "x"}) as r:
            assert r.status in (200, 201), await r.text()
        async with http.put(f"/v1/tenants/{TENANT}/users/u",
                            json={"country": "US", "plan": "domestic"}) as r:
            assert r.status in (200, 201), await r.text()


# Answers that record nothing in Redis, by design: shed, refused late, voided, or over the
# tenant's rate (docs/overload.md, docs/rate-limits.md).
UNRECORDED_REASONS = ("service_unavailable", "rate_limited")


async def authorize(http: aiohttp.ClientSession, call_id: str) -> bool:
    """True when the gateway answered a decision it recorded (the call and its event are
    acknowledged)."""
    body = {"call_id": call_id, "user_id": "u", "to": "+12125550123"}
    try:
        async with http.post(f"/v1/tenants/{TENANT}/calls", json=body) as r:
            answer = await r.json(content_type=None)
            return r.status == 200 and answer["reason"] not in UNRECORDED_REASONS
    except aiohttp.ClientError:
        return False


async def ledger_rows(ledger_url: str, sql: str) -> list[str]:
    db = Path(ledger_url.removeprefix("sqlite:///"))
    if not db.exists():
        return []
    ledger = await open_ledger(ledger_url)
    try:
        return [str(r[0]) for r in await ledger.query(sql, TENANT)]
    finally:
        await ledger.close()


async def wait_ledger(ledger_url: str, sql: str, expected: set[str]) -> None:
    """Poll until the ledger query returns (at least) ``expected``."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        rows = set(await ledger_rows(ledger_url, sql))
        if expected <= rows:
            return
        assert time.monotonic() < deadline, f"not in the ledger: {sorted(expected - rows)}"
        await asyncio.sleep(0.1)


CALL_IDS = "SELECT call_id FROM calls WHERE tenant = ?"


def consumer_pids(redis_url: str) -> set[int]:
    """The pids in the persister consumer names (hostname-pid) of every stream."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        pids: set[int] = set()
        for stream in event_streams(PARTITIONS):
            for c in cast(list[dict[str, Any]], client.xinfo_consumers(stream, GROUP)):
                pids.add(int(str(c["name"]).rsplit("-", 1)[1]))
        return pids
    finally:
        client.close()


async def metric_value(base: str, name: str) -> float:
    async with aiohttp.ClientSession(base) as http, http.get("/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_persists_and_reaps_in_a_child_process(
    tmp_path: Path, own_redis: RedisServer, workers: int
) -> None:
    # 1-second grants and no grace: the reaper (D33) closes the calls within seconds.
    served = await start_serve(tmp_path, own_redis.url, workers,
                               CALLGATE_GRANT_SECONDS="1", CALLGATE_REAPER_GRACE_SECONDS="0")
    try:
        persist_pid = wait_persist_child(served.proc.pid)
        http_children = [p for p, argv in child_processes(served.proc.pid).items()
                         if "serve" in argv]
        # One worker: the HTTP loop is serve's main process; two: two forked workers.
        assert len(http_children) == (0 if workers == 1 else 2), child_processes(
            served.proc.pid)
        await setup_tenant(served.base)
        calls = {f"c{i}" for i in range(5)}
        async with aiohttp.ClientSession(served.base, headers=AUTH) as http:
            assert all(await asyncio.gather(*(authorize(http, c) for c in calls)))
        await wait_ledger(served.ledger_url, CALL_IDS, calls)
        # Reaped by the child, billed as fully used, and written to the ledger by it.
        await wait_ledger(served.ledger_url, "SELECT call_id FROM cdrs WHERE tenant = ?",
                          calls)
        assert consumer_pids(own_redis.url) == {persist_pid}  # no worker persists
        deadline = time.monotonic() + DEADLINE_SECONDS
        # The child's metrics reach /metrics (multi-process directory, flushed each second).
        while await metric_value(served.base, "callgate_grants_reaped_total") < len(calls):
            assert time.monotonic() < deadline, "reaps not in /metrics"
            await asyncio.sleep(0.1)
        files = os.listdir(served.data_dir / "metrics")
        assert any(f.endswith(f"_{persist_pid}.db") for f in files), files
    finally:
        assert served.stop() == 0, served.log_text()


async def test_killed_persist_child_is_restarted_and_persistence_resumes(
    tmp_path: Path, own_redis: RedisServer
) -> None:
    served = await start_serve(tmp_path, own_redis.url, 1,
                               CALLGATE_PERSIST_CLAIM_IDLE_MS="1000")
    try:
        first = wait_persist_child(served.proc.pid)
        await setup_tenant(served.base)
        async with aiohttp.ClientSession(served.base, headers=AUTH) as http:
            assert await authorize(http, "before")
            await wait_ledger(served.ledger_url, CALL_IDS, {"before"})
            os.kill(first, signal.SIGKILL)
            second = wait_persist_child(served.proc.pid, other_than=first)
            assert await authorize(http, "after")
        await wait_ledger(served.ledger_url, CALL_IDS, {"before", "after"})
        assert "exited with status -9; restarting it" in served.log_text()
        # The dead child's live gauges (backlog, lag) are dropped from /metrics.
        files = os.listdir(served.data_dir / "metrics")
        assert not [f for f in files if f.startswith("gauge_live") and f"_{first}." in f]
        assert alive(second)
    finally:
        assert served.stop() == 0, served.log_text()


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_stops_workers_and_persister_losing_no_acknowledged_event(
    tmp_path: Path, own_redis: RedisServer, workers: int
) -> None:
    served = await start_serve(tmp_path, own_redis.url, workers)
    persist_pid = wait_persist_child(served.proc.pid)
    tree = [persist_pid, *child_processes(served.proc.pid)]
    await setup_tenant(served.base)
    acked: list[str] = []
    signalled = asyncio.Event()

    async def load(worker: int) -> None:
        conn = aiohttp.TCPConnector(force_close=True)  # new connections reach every worker
        async with aiohttp.ClientSession(served.base, headers=AUTH, connector=conn) as http:
            for i in range(100_000):
                call_id = f"w{worker}-{i}"
                if await authorize(http, call_id):
                    acked.append(call_id)
                elif signalled.is_set():
                    return  # the gateway stopped accepting

    async def answered(n: int) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while len(acked) < n:
            assert time.monotonic() < deadline, f"only {len(acked)} calls answered"
            await asyncio.sleep(0.01)

    loads = [asyncio.create_task(load(w)) for w in range(8)]
    await answered(1)
    await wait_ledger(served.ledger_url, CALL_IDS, {acked[0]})  # the child is persisting
    await answered(len(acked) + 200)  # and stopped under load, with calls in flight
    served.proc.send_signal(signal.SIGTERM)
    signalled.set()
    code = await asyncio.to_thread(served.proc.wait, DEADLINE_SECONDS)
    await asyncio.gather(*loads)
    log = served.log_text()
    assert code == 0, log
    assert not [p for p in tree if alive(p)], "a process of serve outlived it"
    assert "exited with status" not in log and "stopped with status" not in log, log
    # The child finished its batch: nothing is left delivered but unacknowledged.
    client = redis.Redis.from_url(own_redis.url)
    try:
        assert all(cast(dict[str, Any], client.xpending(s, GROUP))["pending"] == 0
                   for s in event_streams(PARTITIONS))
    finally:
        client.close()
    # Whatever the child had not read yet is still in Redis: persist it, then every
    # acknowledged call is in the ledger.
    store = Store.from_url(own_redis.url, PARTITIONS)
    ledger = await open_ledger(served.ledger_url)
    try:
        await drain(Persister(store, ledger, consumer="after-stop"))
    finally:
        await ledger.close()
        await store.close()
    assert set(acked) <= set(await ledger_rows(served.ledger_url, CALL_IDS))


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status waits for whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("workers", [1, 2])
async def test_serve_killed_takes_its_workers_and_persister_along(
    tmp_path: Path, own_redis: RedisServer, workers: int
) -> None:
    """serve SIGKILLed (it can stop nothing): the kernel sends its HTTP workers and its
    persist child SIGTERM (PR_SET_PDEATHSIG), so none is left serving the port beside the
    next serve's workers or consuming the streams."""
    served = await start_serve(tmp_path, own_redis.url, workers)
    persist = wait_persist_child(served.proc.pid)
    notifier = wait_notify_child(served.proc.pid)
    kids = sorted(child_processes(served.proc.pid))
    assert {persist, notifier} <= set(kids), kids
    assert len(kids) == (workers + 2 if workers > 1 else 2), kids
    served.proc.kill()
    served.proc.wait(DEADLINE_SECONDS)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while [p for p in kids if running(p)]:
        assert time.monotonic() < deadline, f"left running: {[p for p in kids if running(p)]}"
        await asyncio.sleep(0.05)
