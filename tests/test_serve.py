"""``callgate serve --workers 2``: both workers share the port, /metrics sums them, and
SIGTERM lets in-flight requests finish before the processes exit. (The persist child
process: test_serve_persist.py.)"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.proctree import wait_notify_child, wait_persist_child

TOKEN = "serve-test-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp_path: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "CALLGATE_DATA_DIR": str(tmp_path / "var"),
           "CALLGATE_OPERATOR_TOKEN": TOKEN, "CALLGATE_LOG_LEVEL": "WARNING"}
    for k in ("PROMETHEUS_MULTIPROC_DIR", "CALLGATE_REDIS_URL"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--workers",
                             str(workers), "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve exited"
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve not ready")


async def setup_tenant(s: aiohttp.ClientSession) -> None:
    async with s.put("/v1/tenants/sv", json={"name": "sv"}) as r:
        assert r.status in (200, 201), await r.text()
    async with s.put("/v1/tenants/sv/users/u", json={"country": "US", "plan": "domestic"}) as r:
        assert r.status in (200, 201), await r.text()


async def authorize(s: aiohttp.ClientSession, i: int) -> int:
    body = {"call_id": f"sv-{i}", "user_id": "u", "to": "+12125550123"}
    async with s.post("/v1/tenants/sv/calls", json=body) as r:
        await r.read()
        return r.status


def test_two_workers_share_port_and_metrics(tmp_path: Path) -> None:
    proc, base = start(tmp_path, workers=2)
    try:
        async def scenario() -> dict[str, float]:
            conn = aiohttp.TCPConnector(limit=0, force_close=True)  # new connection each:
            async with aiohttp.ClientSession(base, headers=AUTH, connector=conn) as s:
                await setup_tenant(s)
                statuses = await asyncio.gather(*(authorize(s, i) for i in range(200)))
                assert statuses == [200] * 200
            await asyncio.sleep(1.5)  # each worker flushes its counts once a second
            async with aiohttp.ClientSession(base) as s, s.get("/metrics") as r:
                text = await r.text()
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            return {s.labels.get("operation", ""): s.value
                    for s in fams["callgate_request_duration_seconds"].samples
                    if s.name.endswith("_count")}

        counts = asyncio.run(scenario())
        assert counts["authorize"] == 200  # summed over both workers
        files = os.listdir(tmp_path / "var" / "metrics")
        pids = {int(f.rsplit("_", 1)[1].split(".")[0]) for f in files}
        pids.discard(wait_persist_child(proc.pid))  # it writes its own metrics there too
        pids.discard(wait_notify_child(proc.pid))  # and so does the notifier
        assert len(pids) == 2, files  # both workers served requests
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_sigterm_finishes_in_flight_requests(tmp_path: Path) -> None:
    proc, base = start(tmp_path, workers=1)

    async def scenario() -> list[int]:
        async with aiohttp.ClientSession(base, headers=AUTH) as s:
            await setup_tenant(s)
            tasks = [asyncio.create_task(authorize(s, 1000 + i)) for i in range(300)]
            # The signal once the first answer is in: the others are on the wire or queued.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r if isinstance(r, int) else -1 for r in results]

    statuses = asyncio.run(scenario())
    assert proc.wait(15) == 0
    # Requests accepted before the signal complete (200); none is cut off with a 5xx.
    assert 200 in statuses
    assert not [s for s in statuses if s >= 500], statuses
