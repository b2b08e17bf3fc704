"""The client side of the fault scenarios: a tenant to call for, a burst of connections, a
closed-loop load, the end retries a switch makes, and the settle-and-check step.

Every loop is bounded in count and in time; randomness comes from a seeded
``random.Random`` the scenario prints the seed of.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.rawhttp import HttpConn, HttpError
from tests.support.serve import AUTH, PARTITIONS
from tests.support.truth import Answers, Report, check, redis_client, settle, snapshot

HOST = "127.0.0.1"
# Users of the scenario tenant: three on the domestic plan (US pool minutes, then credits
# when the pool is spent), one paying everything from credits (calls to London).
POOL_USERS = ("dom1", "dom2", "dom3")
CREDIT_USERS = ("payg",)
DESTINATIONS = {"dom1": "+12125550123", "dom2": "+13125550199", "dom3": "+14155550123",
                "payg": "+442071838750"}
TOPUP = "5000.00"
TOPUP_MICRO = 5_000_000_000
# A switch gives up on one request after this (far above any answer the gateway owes).
REQUEST_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 15.0


def repeats() -> int:
    """How many times each scenario runs: 1 in `make test`, 20 under `make chaos`."""
    return max(1, int(os.environ.get("CALLGATE_CHAOS_REPEATS", "1")))


def chaos_seed() -> int:
    seed = int(os.environ.get("CALLGATE_CHAOS_SEED", str(random.randrange(2**32))))
    print(f"\nchaos seed: {seed} (replay with CALLGATE_CHAOS_SEED={seed})")
    return seed


def new_tenant_id(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


async def _admin(port: int, method: str, path: str, body: Any, ok: tuple[int, ...]) -> Any:
    conn = await HttpConn.open(HOST, port, AUTH, CONNECT_TIMEOUT_SECONDS)
    try:
        status, answer = await asyncio.wait_for(conn.request(method, path, body),
                                                REQUEST_TIMEOUT_SECONDS)
    finally:
        conn.close()
    assert status in ok, (method, path, status, answer)
    return answer


async def setup_tenant(port: int, tenant_id: str) -> int:
    """Create the tenant and its users, top it up; returns its balance (micro-units)."""
    t = f"/v1/tenants/{tenant_id}"
    await _admin(port, "PUT", t, {"name": tenant_id}, (200, 201))
    for uid in POOL_USERS:
        await _admin(port, "PUT", f"{t}/users/{uid}", {"country": "US", "plan": "domestic"},
                     (200, 201))
    for uid in CREDIT_USERS:
        await _admin(port, "PUT", f"{t}/users/{uid}",
                     {"country": "US", "plan": "pay_as_you_go"}, (200, 201))
    await _admin(port, "POST", f"{t}/credits/topups",
                 {"amount": TOPUP, "idempotency_key": "chaos-seed"}, (200,))
    return TOPUP_MICRO


def call_body(call_id: str, user_id: str) -> dict[str, Any]:
    return {"call_id": call_id, "direction": "outbound", "user_id": user_id,
            "to": DESTINATIONS[user_id]}


@dataclass
class Caller:
    """Sends authorize and end for one tenant and records every answer."""

    port: int
    tenant_id: str
    rng: random.Random
    answers: Answers = field(default_factory=Answers)
    durations: dict[str, int] = field(default_factory=dict)  # a retried end repeats its own

    def new_call(self) -> tuple[str, str]:
        return uuid.uuid4().hex[:16], self.rng.choice(POOL_USERS + CREDIT_USERS)

    async def authorize_on(self, conn: HttpConn, call_id: str, user_id: str) -> str:
        self.answers.sent(call_id, user_id)
        try:
            status, body = await asyncio.wait_for(
                conn.request("POST", f"/v1/tenants/{self.tenant_id}/calls",
                             call_body(call_id, user_id)),
                REQUEST_TIMEOUT_SECONDS)
        except (OSError, HttpError, TimeoutError) as error:
            return self.answers.authorized(call_id, user_id, None, None, error)
        return self.answers.authorized(call_id, user_id, status, body)

    async def end_on(self, conn: HttpConn, call_id: str) -> bool:
        duration = self.durations.setdefault(call_id, self.rng.randrange(0, 400))
        try:
            status, body = await asyncio.wait_for(
                conn.request("POST", f"/v1/tenants/{self.tenant_id}/calls/{call_id}/end",
                             {"duration_seconds": duration}),
                REQUEST_TIMEOUT_SECONDS)
        except (OSError, HttpError, TimeoutError) as error:
            self.answers.ended(call_id, None, None, error)
            return False
        return self.answers.ended(call_id, status, body)

    async def retry_ends(self, deadline_s: float = 60.0) -> None:
        """End again, as a switch does, every allowed call whose end was not acknowledged
        (end is idempotent: a retry of an end that ran replays its bill), until each is
        answered 200 or 404, or ``deadline_s`` passes."""
        end = time.monotonic() + deadline_s
        conn: HttpConn | None = None
        try:
            while (todo := self.answers.ends_to_retry()) and time.monotonic() < end:
                for call in todo:
                    if conn is None:
                        try:
                            conn = await HttpConn.open(HOST, self.port, AUTH,
                                                       CONNECT_TIMEOUT_SECONDS)
                        except (OSError, TimeoutError):
                            await asyncio.sleep(0.1)
                            break
                    if not await self.end_on(conn, call.call_id) and \
                            call.end_status[-1].startswith("none:"):
                        conn.close()
                        conn = None
                else:
                    await asyncio.sleep(0.05)
        finally:
            if conn is not None:
                conn.close()


async def burst(caller: Caller, connections: int, deadline_s: float = 60.0) -> int:
    """``connections`` connections opened at once; on each, one authorize written as soon as
    all are open, then an end for each call allowed. Returns how many connections opened
    (a connection that could not open sends nothing and is not counted)."""
    opened = await asyncio.gather(
        *(HttpConn.open(HOST, caller.port, AUTH, CONNECT_TIMEOUT_SECONDS)
          for _ in range(connections)),
        return_exceptions=True)
    conns = [c for c in opened if isinstance(c, HttpConn)]

    async def one(conn: HttpConn) -> None:
        call_id, user_id = caller.new_call()
        try:
            if await caller.authorize_on(conn, call_id, user_id) == "allow":
                await caller.end_on(conn, call_id)
        finally:
            conn.close()

    try:
        await asyncio.wait_for(asyncio.gather(*(one(c) for c in conns)), deadline_s)
    finally:
        for c in conns:
            c.close()
    return len(conns)


async def closed_loop(caller: Caller, stop: asyncio.Event, connections: int,
                      calls_max: int, pause_s: float = 0.0) -> None:
    """``connections`` keep-alive connections, each authorize -> end (if allowed) in a loop
    until ``stop`` or ``calls_max`` calls in all; a connection that breaks is reopened."""
    budget = [calls_max]

    async def worker() -> None:
        conn: HttpConn | None = None
        try:
            while not stop.is_set() and budget[0] > 0:
                budget[0] -= 1
                if conn is None:
                    try:
                        conn = await HttpConn.open(HOST, caller.port, AUTH,
                                                   CONNECT_TIMEOUT_SECONDS)
                    except (OSError, TimeoutError):
                        await asyncio.sleep(0.05)
                        continue
                call_id, user_id = caller.new_call()
                outcome = await caller.authorize_on(conn, call_id, user_id)
                if outcome.startswith("none:"):
                    conn.close()
                    conn = None
                    continue
                if outcome == "allow" and not await caller.end_on(conn, call_id) and \
                        caller.answers.calls[call_id].end_status[-1].startswith("none:"):
                    conn.close()
                    conn = None
                if pause_s:
                    await asyncio.sleep(pause_s)
        finally:
            if conn is not None:
                conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


def metric_samples(port: int, name: str) -> dict[str, float]:
    """The samples of metric ``name`` on the worker's /metrics, by their label values
    ("" for none); empty when the worker has no such metric."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                key = ",".join(v for k, v in sorted(sample.labels.items()) if k != "pid")
                out[key] = out.get(key, 0.0) + sample.value
    return out


# The gateway's count of voids not yet landed (gateway/rules/voids.py): settling waits for it to
# be 0 as well. CALLGATE_CHAOS_PENDING_METRIC names another metric ("" for none).
PENDING_METRIC = os.environ.get("CALLGATE_CHAOS_PENDING_METRIC", "callgate_voids_pending")


def pending_metric(port: int) -> Callable[[], int] | None:
    """A reader of the pending metric summed over its samples (0 when the worker has no
    such metric), or None when none is named."""
    if not PENDING_METRIC:
        return None

    def read() -> int:
        return int(sum(metric_samples(port, PENDING_METRIC).values()))

    return read


def voids_line(port: int) -> str:
    """The worker's voids so far by result, for the scenarios' last line."""
    voids = metric_samples(port, "callgate_voids_total")
    return f"voids so far: {dict(sorted(voids.items())) or 'none (no such metric)'}"


async def settle_and_check(redis_url: str, caller: Caller, balance_before_micro: int,
                           deadline_s: float = 60.0, stable_s: float = 1.0) -> Report:
    """Wait until the tenant's state holds still for ``stable_s`` (and the pending metric, if
    one is named, is 0), then check it against the answers."""
    pending = pending_metric(caller.port)

    def run() -> Report:
        client = redis_client(redis_url)
        try:
            ids = list(caller.answers.calls)

            def read() -> Any:
                return snapshot(client, caller.tenant_id, PARTITIONS, ids)

            snap = settle(read, stable_s=stable_s, deadline_s=deadline_s, pending=pending)
            return check(snap, caller.answers, caller.tenant_id, balance_before_micro)
        finally:
            client.close()

    return await asyncio.to_thread(run)
