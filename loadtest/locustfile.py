"""Locust: switches driving realistic call lifecycles against callgate.

The set-up (once, on test start) creates TENANTS tenants with USERS users each through the
API with the operator token (CALLGATE_OPERATOR_TOKEN), a credit top-up and a toll-free
number per tenant. Each simulated switch then runs a weighted mix of lifecycles:

    authorize -> end                      most calls
    authorize -> extend -> end            long calls
    international (credits) -> end
    denied (premium rate, blocked range)  answered 200 with a deny: not a failure
    emergency (911) -> end
    inbound to the tenant's toll-free number -> end
    retried call id (the switch resends the authorize) -> end

    CALLGATE_OPERATOR_TOKEN=... locust -f loadtest/locustfile.py --host http://127.0.0.1:8080
"""

from __future__ import annotations

import os
import random
import uuid
from typing import Any

import requests
from locust import FastHttpUser, between, events, task

TENANTS = int(os.environ.get("LOCUST_TENANTS", "20"))
USERS = int(os.environ.get("LOCUST_USERS", "25"))
PREFIX = os.environ.get("LOCUST_TENANT_PREFIX", "lt")
TOKEN = os.environ.get("CALLGATE_OPERATOR_TOKEN", "")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AREAS = (212, 415, 312, 617, 202, 305, 713, 206, 404, 416, 514)
INTERNATIONAL = ("+442071838750", "+33142685300", "+4930901820", "+61292501111")
DENIED = ("+19005550100", "+881612345678", "+979123456789")


def tenant(i: int) -> str:
    return f"{PREFIX}{i}"


def tollfree(i: int) -> str:
    return f"+1800555{i:04d}"


@events.test_start.add_listener
def create_tenants(environment: Any, **_kwargs: Any) -> None:
    """Tenants, users, credits and toll-free numbers, idempotently (PUTs)."""
    host = environment.host
    with requests.Session() as s:
        s.headers.update(AUTH)
        for i in range(TENANTS):
            t = tenant(i)
            _ok(s.put(f"{host}/v1/tenants/{t}", json={"name": t}))
            for u in range(USERS):
                plan = "international" if u % 5 == 0 else "domestic"
                _ok(s.put(f"{host}/v1/tenants/{t}/users/u{u}",
                          json={"country": "US", "plan": plan,
                                "numbers": [f"+1646555{i % 100:02d}{u % 100:02d}"]}))
            _ok(s.post(f"{host}/v1/tenants/{t}/credits/topups",
                       json={"amount": "1000.00", "idempotency_key": f"locust-{t}"}))
            _ok(s.put(f"{host}/v1/tenants/{t}/toll-free-numbers/{tollfree(i)}"))


def _ok(r: requests.Response) -> None:
    if r.status_code >= 300:
        raise RuntimeError(f"set-up {r.request.method} {r.url}: {r.status_code} {r.text}")


def us_number() -> str:
    return f"+1{random.choice(AREAS)}{random.randint(2, 9)}{random.randint(0, 999999):06d}"


class Switch(FastHttpUser):
    """One switch: short think times between call events."""

    wait_time = between(0.05, 0.3)

    def on_start(self) -> None:
        self.headers = {**AUTH, "Content-Type": "application/json"}

    def _pick(self) -> tuple[int, str, str]:
        i = random.randrange(TENANTS)
        return i, tenant(i), f"u{random.randrange(USERS)}"

    def _authorize(self, t: str, body: dict[str, Any], name: str,
                   expect: str | None = None) -> dict[str, Any] | None:
        with self.client.post(f"/v1/tenants/{t}/calls", json=body, headers=self.headers,
                              name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text}")
                return None
            d: dict[str, Any] = r.json()
            if expect is not None and d["decision"] != expect:
                r.failure(f"expected {expect}: {d}")
            return d

    def _extend(self, t: str, call_id: str, used: int) -> None:
        self.client.post(f"/v1/tenants/{t}/calls/{call_id}/extend", json={"used_seconds": used},
                         headers=self.headers, name="extend")

    def _end(self, t: str, call_id: str, duration: int) -> None:
        self.client.post(f"/v1/tenants/{t}/calls/{call_id}/end",
                         json={"duration_seconds": duration}, headers=self.headers, name="end")

    def _outbound(self, user: str, to: str) -> dict[str, Any]:
        return {"call_id": f"lc-{uuid.uuid4().hex}", "direction": "outbound", "user_id": user,
                "to": to}

    @task(10)
    def short_call(self) -> None:
        _, t, u = self._pick()
        body = self._outbound(u, us_number())
        d = self._authorize(t, body, "authorize")
        if d and d["decision"] == "allow":
            self._end(t, body["call_id"], random.randint(5, 280))

    @task(4)
    def long_call(self) -> None:
        _, t, u = self._pick()
        body = self._outbound(u, us_number())
        d = self._authorize(t, body, "authorize")
        if d and d["decision"] == "allow":
            self._extend(t, body["call_id"], 290)
            self._end(t, body["call_id"], random.randint(300, 580))

    @task(2)
    def international_call(self) -> None:
        _, t, u = self._pick()
        body = self._outbound(u, random.choice(INTERNATIONAL))
        d = self._authorize(t, body, "authorize international")
        if d and d["decision"] == "allow":
            self._end(t, body["call_id"], random.randint(10, 200))

    @task(2)
    def denied_call(self) -> None:
        _, t, u = self._pick()
        self._authorize(t, self._outbound(u, random.choice(DENIED)), "authorize denied",
                        expect="deny")

    @task(1)
    def emergency_call(self) -> None:
        _, t, u = self._pick()
        body = self._outbound(u, "911")
        d = self._authorize(t, body, "authorize emergency", expect="allow")
        if d and d["decision"] == "allow":
            self._end(t, body["call_id"], random.randint(30, 240))

    @task(2)
    def inbound_toll_free(self) -> None:
        i, t, _ = self._pick()
        body = {"call_id": f"li-{uuid.uuid4().hex}", "direction": "inbound",
                "to": tollfree(i), "from": us_number()}
        d = self._authorize(t, body, "authorize inbound toll-free", expect="allow")
        if d and d["decision"] == "allow":
            self._end(t, body["call_id"], random.randint(20, 280))

    @task(1)
    def retried_call_id(self) -> None:
        _, t, u = self._pick()
        body = self._outbound(u, us_number())
        first = self._authorize(t, body, "authorize")
        again = self._authorize(t, body, "authorize retry")
        if first and again and (first["decision"], first["reason"]) != (
                again["decision"], again["reason"]):
            events.request.fire(request_type="CHECK", name="retry same answer", response_time=0,
                                response_length=0, exception=AssertionError(f"{first} {again}"))
        if first and first["decision"] == "allow":
            self._end(t, body["call_id"], random.randint(5, 120))
