"""`callgate serve` supervises the notifier as it does the persister: a child process
(`callgate notify`) that delivers the alerts, is restarted when killed, and whose metrics
reach /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.notify.webhooks import verify
from gateway.redis.server import RedisServer
from tests.support.gwclient import AUTH
from tests.support.proctree import notify_children, wait_notify_child
from tests.test_serve_persist import DEADLINE_SECONDS, metric_value, start_serve

SECRET = "whsec_" + "s" * 40
TENANT = "alerted"


@pytest.fixture
async def received() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", got
    await runner.cleanup()


async def wait_requests(got: list[tuple[dict[str, str], bytes]], n: int) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(got) < n:
        assert time.monotonic() < deadline, f"{len(got)} of {n} webhooks received"
        await asyncio.sleep(0.05)


async def test_serve_delivers_alerts_through_a_supervised_notifier(
        tmp_path: Path, own_redis: RedisServer,
        received: tuple[str, list[tuple[dict[str, str], bytes]]]) -> None:
    url, got = received
    served = await start_serve(tmp_path, own_redis.url, 1, CALLGATE_WEBHOOK_ALLOW_PRIVATE="1")
    try:
        first = wait_notify_child(served.proc.pid)
        async with aiohttp.ClientSession(served.base, headers=AUTH) as http:
            async def put(path: str, body: object) -> None:
                async with http.put(f"/v1/tenants/{TENANT}{path}", json=body) as r:
                    assert r.status in (200, 201), await r.text()

            await put("", {"name": "x"})
            await put("/users/u", {"country": "US", "plan": "pay_as_you_go"})
            await put("/alerts", {"low_balance": "0.50"})
            await put("/webhooks/w", {"url": url, "secret": SECRET})
            async with http.post(f"/v1/tenants/{TENANT}/credits/topups",
                                 json={"amount": "1.00", "idempotency_key": "k"}) as r:
                assert r.status == 200
            for i in range(8):  # the 8th takes the available credits below 0.50
                async with http.post(f"/v1/tenants/{TENANT}/calls", json={
                        "call_id": f"c{i}", "user_id": "u", "to": "+12125550123"}) as r:
                    assert (await r.json())["decision"] == "allow"
            await wait_requests(got, 1)
            assert verify(SECRET, got[0][0]["Callgate-Signature"], got[0][1])
            # Killed: restarted by serve, and the next alert is delivered by the new one.
            os.kill(first, signal.SIGKILL)
            wait_notify_child(served.proc.pid, other_than=first)
            await put("/alerts", {"low_balance": "0.30"})  # re-armed
            for i in range(8, 11):
                async with http.post(f"/v1/tenants/{TENANT}/calls", json={
                        "call_id": f"c{i}", "user_id": "u", "to": "+12125550123"}) as r:
                    assert (await r.json())["decision"] == "allow"
            await wait_requests(got, 2)
        # The child's metrics reach /metrics (the killed one's count stays in the sum).
        deadline = time.monotonic() + DEADLINE_SECONDS
        delivered = 'callgate_webhook_deliveries_total{result="delivered"}'
        while await metric_value(served.base, delivered) < 2:
            assert time.monotonic() < deadline, "deliveries not in /metrics"
            await asyncio.sleep(0.1)
    finally:
        assert served.stop() == 0, served.log_text()
    assert notify_children(served.proc.pid) == []
