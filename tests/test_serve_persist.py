"""`callgate serve` runs the persister and the reaper itself (one process), writing the
SQLite ledger in its data directory by default."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from gateway.ledger import open_ledger
from gateway.redisproc import RedisServer, free_port
from tests.gwclient import AUTH, OPERATOR_TOKEN

REPO = Path(__file__).resolve().parent.parent
DEADLINE_SECONDS = 30.0


async def test_serve_persists_into_the_default_sqlite_ledger(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", name="serve-redis") as redis:
        port = free_port()
        env = {**os.environ, "CALLGATE_REDIS_URL": redis.url, "CALLGATE_WORKERS": "2",
               "CALLGATE_DATA_DIR": str(tmp_path / "var"), "CALLGATE_HTTP_PORT": str(port),
               "CALLGATE_OPERATOR_TOKEN": OPERATOR_TOKEN, "CALLGATE_PARTITIONS": "4"}
        env.pop("CALLGATE_DATABASE_URL", None)
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + DEADLINE_SECONDS
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
                while True:
                    try:
                        r = await http.put("/v1/tenants/served", json={"name": "x"},
                                           headers=AUTH)
                        if r.status in (200, 201):
                            break
                    except aiohttp.ClientConnectionError:
                        pass
                    assert time.monotonic() < deadline, "gateway did not start"
                    await asyncio.sleep(0.1)
            db = tmp_path / "var" / "ledger.db"
            while True:
                if db.exists():
                    ledger = await open_ledger(f"sqlite:///{db}")
                    try:
                        rows = await ledger.query(
                            "SELECT type FROM events WHERE tenant = 'served'")
                    finally:
                        await ledger.close()
                    if rows:
                        assert [r[0] for r in rows] == ["tenant.created"]
                        break
                assert time.monotonic() < deadline, "the event never reached the ledger"
                await asyncio.sleep(0.1)
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 15)
