"""Stateful property test: the gateway, through its HTTP API, against tests/support/refmodel.py.

A hypothesis RuleBasedStateMachine plays one tenant's life: users and licences come and go,
the wallet is topped up (idempotency keys reused), calls are authorized, extended, ended and
repeated, whole calls run as a switch drives them, the reaper closes lost calls (D33), and
the clock moves (seconds to days, across month boundaries of the tenant's zone, UTC and
America/New_York). After every step the gateway's answer must equal the reference model's,
and so must GET /credits and GET /pools of every month touched; the gateway's own figures
must never be negative (D6, D19), and a pool grant must keep used + reserved within the
capacity of that moment.

The machine runs synchronously on an event loop of its own (the gateway is an aiohttp test
server on that loop, over a Redis of this module's own), so ``run_state_machine_as_test``
drives it step by step and shrinks a failure to a short program, printed as the steps to
replay. Runs are derandomized: the same code explores the same programs on every run.
``CALLGATE_MODEL_EXAMPLES=2000`` explores deeper (default 75 per time zone, ~15 s in all).
"""

from __future__ import annotations

import asyncio
import calendar
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.config import Plan, load_settings
from gateway.http.app import create_app
from gateway.ledger.reaper import Reaper
from gateway.redis.client import backend_from_url
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock
from gateway.rules.money import parse_money
from gateway.vocab import DialOut
from tests.support.gwclient import AUTH, OPERATOR_TOKEN
from tests.support.refmodel import NUMBERS, Model, User

T0 = 1_795_773_600  # 2026-11-27T10:00:00Z, a few days before a month boundary
USER_IDS = ("u0", "u1", "u2")
UNKNOWN_USER = "ghost"
USER_NUMBERS = {"u0": "+12025550100", "u1": "+12025550101", "u2": "+12025550102"}
UNASSIGNED_NUMBER = "+12025550199"
TENANT_TOLL_FREE = "+18885550100"
CALLER_ORIGINS = ("+442071838750", "+12125550123", "+33142685300", "+525512345678")
COUNTRIES = ("US", "CA", "PR", "GB", "FR")
# A plan small enough to run dry within a few calls, so exhaustion, the move to credits
# during a call (D18) and D17's reasons are reached; it goes beside the configured plans.
TINY = Plan("tiny", "international", {"*": 2}, {"*": 1})
AMOUNTS = ("0.0001", "0.01", "0.05", "0.2", "1", "2.50", "10.00")
SPEND_LIMITS = (None, "0.00", "0.05", "0.30", "2.00")
USER_SPECS = st.fixed_dictionaries({
    "country": st.sampled_from(COUNTRIES),
    "plan": st.sampled_from(("none", "domestic", "domestic_120", "international",
                             "pay_as_you_go", "tiny", "tiny", "tiny")),
    "dial_out": st.sampled_from((*[DialOut.INTERNATIONAL_AND_DOMESTIC.value] * 3,
                                 DialOut.DOMESTIC_ONLY.value, DialOut.NONE.value)),
    "credits_allowed": st.sampled_from((True, True, False)),
    "monthly_spend_limit": st.sampled_from(SPEND_LIMITS),
    "max_concurrent_calls": st.sampled_from((None, None, 1, 2)),
})
# Ordinary numbers more often than the special ones.
DESTINATIONS = (*sorted(NUMBERS), "+12125550123", "+14165550100", "+442071838750",
                "+525512345678", "+33612345678")
# started_at relative to now (api.md: within clock_skew_seconds, 300), or none sent.
STARTED_AT = st.sampled_from((None, None, None, -300, -2, 0, 1, 300))
# Seconds used / answered, relative to the call's horizon: a switch mostly asks for more
# just before the grant ends.
MODES = st.sampled_from(("zero", "part", "near_end", "near_end", "all", "all", "over"))
# A switch reports an end (or the D33 reaper closes the call) long before this: no call
# stays active longer in these programs.
MAX_CALL_AGE = 27 * 86400

EXAMPLES = int(os.environ.get("CALLGATE_MODEL_EXAMPLES", "75"))  # per time zone
STEPS = 40


def rfc3339(ts: int | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def micro(amount: str) -> int:
    """A signed 4-decimal money string of the API as micro-units."""
    sign = -1 if amount.startswith("-") else 1
    return sign * parse_money(amount.lstrip("-"), "amount", allow_zero=True)


class Harness:
    """The gateway on a private event loop, called synchronously."""

    def __init__(self, redis_url: str) -> None:
        base = load_settings(env={"CALLGATE_OPERATOR_TOKEN": OPERATOR_TOKEN})
        # The 100 ms bound on a Redis round trip is for production switches; on a loaded CI
        # machine it would turn a slow answer into service_unavailable, a false alarm here.
        self.settings = replace(base, redis_url=redis_url, redis_timeout_ms=10_000,
                                plans={**base.plans, "tiny": TINY})
        self.clock = ManualClock(T0)
        self.loop = asyncio.new_event_loop()
        self.client: TestClient[Any, Any] = self.loop.run_until_complete(self._start())

    async def _start(self) -> TestClient[Any, Any]:
        # Same for administration (its own bound is 2 s).
        self.store = Store(backend_from_url(self.settings.redis_url or "", 5.0),
                           self.settings.partitions, admin_timeout_s=30.0)
        app = create_app(self.settings, clock=self.clock, store=self.store)
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.run_until_complete(self.store.close())
        self.loop.close()

    def req(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            kwargs: dict[str, Any] = {"headers": AUTH}
            if body is not None:
                kwargs["json"] = body
            resp = await self.client.request(method, path, **kwargs)
            text = await resp.text()
            return resp.status, (await resp.json(content_type=None)) if text else None

        return self.loop.run_until_complete(go())


class GatewayVsModel(RuleBasedStateMachine):
    harness: ClassVar[Harness]
    timezone: ClassVar[str]

    calls = Bundle("calls")

    def __init__(self) -> None:
        super().__init__()
        h = self.harness
        h.clock.set(T0)
        self.t = "m-" + uuid.uuid4().hex[:12]
        self.base = f"/v1/tenants/{self.t}"
        self.model = Model(h.settings, timezone=self.timezone,
                           toll_free_numbers=frozenset({TENANT_TOLL_FREE}))
        status, _ = h.req("PUT", self.base, {"name": self.t, "timezone": self.timezone})
        assert status == 201
        status, _ = h.req("PUT", f"{self.base}/toll-free-numbers/{TENANT_TOLL_FREE}")
        assert status == 201
        self.months = {self.model.month_of(T0)}
        self.first_answers: dict[str, Any] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.last_extend: dict[str, int] = {}
        self.started_at: dict[str, int] = {}
        self.seq = 0

    @property
    def now(self) -> int:
        return int(self.harness.clock.now())

    def req(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.harness.req(method, self.base + path, body)

    # -- administration ----------------------------------------------------------------------

    def _put_user(self, uid: str, spec: dict[str, Any]) -> None:
        body = {k: v for k, v in spec.items() if v is not None}
        body["numbers"] = [USER_NUMBERS[uid]]
        status, answer = self.req("PUT", f"/users/{uid}", body)
        assert status in (200, 201), answer
        limit = spec["monthly_spend_limit"]
        self.model.put_user(uid, User(
            spec["country"], spec["plan"], spec["dial_out"], spec["credits_allowed"],
            None if limit is None else parse_money(limit, "limit", allow_zero=True),
            spec["max_concurrent_calls"], USER_NUMBERS[uid]))

    @initialize(specs=st.lists(USER_SPECS, min_size=1, max_size=len(USER_IDS)),
                amount=st.sampled_from((None, *AMOUNTS)),
                tenant_cap=st.sampled_from((None, None, None, 1, 3)),
                charge_inbound=st.sampled_from((False, False, True)))
    def start(self, specs: list[dict[str, Any]], amount: str | None, tenant_cap: int | None,
              charge_inbound: bool) -> None:
        if tenant_cap is not None or charge_inbound:  # D25, D27
            status, got = self.req("PUT", "", {
                "name": self.t, "timezone": self.timezone, "max_concurrent_calls": tenant_cap,
                "charge_inbound_calls": charge_inbound})
            assert status == 200, got
            self.model.max_calls, self.model.charge_inbound = tenant_cap, charge_inbound
        for uid, spec in zip(USER_IDS, specs, strict=False):
            self._put_user(uid, spec)
        if amount is not None:
            self.topup(amount, 0)

    @rule(uid=st.sampled_from(USER_IDS), spec=USER_SPECS)
    def put_user(self, uid: str, spec: dict[str, Any]) -> None:
        self._put_user(uid, spec)

    @rule(uid=st.sampled_from((*USER_IDS, UNKNOWN_USER)))
    def delete_user(self, uid: str) -> None:
        status, _ = self.req("DELETE", f"/users/{uid}")
        assert status == (204 if self.model.delete_user(uid) else 404)

    @rule(amount=st.sampled_from(AMOUNTS), key=st.integers(0, 5))
    def topup(self, amount: str, key: int) -> None:
        # Keys are per amount: reusing one repeats the same top-up (api.md).
        idem = f"k{key}-{amount}"
        status, answer = self.req("POST", "/credits/topups",
                                  {"amount": amount, "idempotency_key": idem})
        m_status, m_balance = self.model.topup(idem, parse_money(amount, "amount"))
        assert status == m_status, answer
        assert answer["balance"] == m_balance, (answer, m_balance)

    # -- call control ------------------------------------------------------------------------

    def _check_answer(self, what: str, got: dict[str, Any], want: dict[str, Any]) -> None:
        got_cut = {k: got.get(k) for k in want}
        want = {**want, "grant_expires_at": rfc3339(want["grant_expires_at"])}
        assert got_cut == want, f"{what}: gateway {got_cut} != model {want}"

    def _authorize(self, body: dict[str, Any]) -> str:
        cid: str = body["call_id"]
        status, got = self.req("POST", "/calls", body)
        assert status == 200, got
        started = self.started_at.get(cid, self.now)
        want = self.model.authorize(cid, self.now, body["direction"], body.get("user_id"),
                                    body["to"], body.get("from"), started)
        self._check_answer(f"authorize {body}", got, want)
        if cid in self.first_answers:  # D32: the very same body again
            assert got == self.first_answers[cid], (got, self.first_answers[cid])
        else:
            self.first_answers[cid] = got
            self.requests[cid] = body
            self.started_at[cid] = started
            self._check_pool_grant(cid, 0)
        self.months.add(self.model.calls[cid].month)
        return cid

    def _check_pool_grant(self, cid: str, held_before: int) -> None:
        """Conservation: a grant that reserved more pool minutes kept used + reserved
        within the capacity of that moment (D4-D8)."""
        call = self.model.calls[cid]
        if call.pool is None or call.pool_r <= held_before:
            return
        month = f"{call.month[:4]}-{call.month[4:]}"
        status, got = self.req("GET", f"/pools?month={month}")
        assert status == 200, got
        row = next(r for r in got["pools"] if (r["country"], r["plan"], r["kind"]) == call.pool)
        assert row["used_minutes"] + row["reserved_minutes"] <= row["capacity_minutes"], (
            f"pool over-committed by the grant to {cid}: {row}")

    def _new_call_id(self) -> str:
        self.seq += 1
        return f"c{self.seq}"

    @rule(target=calls, uid=st.sampled_from((*USER_IDS, *USER_IDS, UNKNOWN_USER)),
          to=st.sampled_from(DESTINATIONS), started=STARTED_AT)
    def authorize_outbound(self, uid: str, to: str, started: int | None) -> str:
        body: dict[str, Any] = {"call_id": self._new_call_id(), "direction": "outbound",
                                "user_id": uid, "to": to}
        if started is not None:  # the switch's start time picks the month (D7)
            body["started_at"] = rfc3339(self.now + started)
            self.started_at[body["call_id"]] = self.now + started
        return self._authorize(body)

    @rule(target=calls, uid=st.sampled_from(USER_IDS), to=st.sampled_from(DESTINATIONS),
          extensions=st.integers(1, 6), early=st.sampled_from((0, 0, 5, 20)), mode=MODES,
          amount=st.integers(1, 400))
    def switch_call(self, uid: str, to: str, extensions: int, early: int, mode: str,
                    amount: int) -> str:
        """A whole call as a switch drives it: authorize, then ask for more ``early``
        seconds before each grant ends (the clock moving on), then end (D18, D29-D31)."""
        cid = self._authorize({"call_id": self._new_call_id(), "direction": "outbound",
                               "user_id": uid, "to": to})
        for _ in range(extensions):
            call = self.model.calls[cid]
            if call.state != "active" or call.expires is None:
                break
            # At least a second later, at most at the end of the grant.
            self._move_clock(min(call.expires, max(self.now + 1, call.expires - early)))
            self._extend(cid, call.horizon - max(0, call.expires - self.now))
            self.credits_match()
            self.pools_match()
        call = self.model.calls[cid]
        self._end(cid, self._seconds(mode, amount, call.horizon))
        return cid

    @rule(target=calls, to=st.sampled_from((*USER_NUMBERS.values(), UNASSIGNED_NUMBER,
                                            TENANT_TOLL_FREE, TENANT_TOLL_FREE)),
          origin=st.sampled_from(CALLER_ORIGINS))
    def authorize_inbound(self, to: str, origin: str) -> str:
        return self._authorize({"call_id": self._new_call_id(), "direction": "inbound",
                                "to": to, "from": origin})

    @rule(cid=calls, uid=st.sampled_from((*USER_IDS, UNKNOWN_USER)),
          to=st.sampled_from(sorted(NUMBERS)), same=st.booleans())
    def authorize_again(self, cid: str, uid: str, to: str, same: bool) -> None:
        """D32: the same call id, with the same or another request: the first answer."""
        if same:  # started_at may have left the skew window since: still a replay
            self._authorize(dict(self.requests[cid]))
        else:
            self._authorize({"call_id": cid, "direction": "outbound", "user_id": uid,
                             "to": to})

    @staticmethod
    def _seconds(mode: str, amount: int, horizon: int) -> int:
        return {"zero": 0, "part": min(amount, horizon),
                "near_end": max(0, horizon - amount % 30), "all": horizon,
                "over": horizon + amount}[mode]

    def _extend(self, cid: str, used: int) -> None:
        status, got = self.req("POST", f"/calls/{cid}/extend", {"used_seconds": used})
        call = self.model.calls.get(cid)
        held_before = call.pool_r if call else 0
        m_status, want = self.model.extend(cid, self.now, used)
        assert status == m_status, (status, got)
        if want is not None:
            self._check_answer(f"extend {cid} used={used}", got, want)
            self._check_pool_grant(cid, held_before)
            self.last_extend[cid] = used

    def _active(self) -> list[str]:
        return sorted((c for c, call in self.model.calls.items() if call.state == "active"),
                      key=lambda c: int(c[1:]))

    @rule(cid=st.one_of(calls, calls, calls, st.just("no-such-call")), mode=MODES,
          amount=st.integers(1, 400))
    def extend(self, cid: str, mode: str, amount: int) -> None:
        call = self.model.calls.get(cid)
        self._extend(cid, self._seconds(mode, amount, call.horizon if call else 0))

    @precondition(lambda self: bool(self._active()))
    @rule(data=st.data(), mode=MODES, amount=st.integers(1, 400))
    def extend_active(self, data: st.DataObject, mode: str, amount: int) -> None:
        cid = data.draw(st.sampled_from(self._active()), label="cid")
        self._extend(cid, self._seconds(mode, amount, self.model.calls[cid].horizon))

    @precondition(lambda self: bool(self.last_extend))
    @rule(data=st.data())
    def extend_again(self, data: st.DataObject) -> None:
        """A retried extend, same used seconds: nothing more reserved."""
        cid = data.draw(st.sampled_from(sorted(self.last_extend)), label="cid")
        self._extend(cid, self.last_extend[cid])

    def _end(self, cid: str, duration: int) -> None:
        status, got = self.req("POST", f"/calls/{cid}/end", {"duration_seconds": duration})
        m_status, want = self.model.end(cid, duration)
        assert status == m_status, (status, got)
        if want is not None:
            got_cut = {k: got.get(k) for k in want}
            assert got_cut == want, f"end {cid} {duration}: gateway {got_cut} != model {want}"

    @rule(cid=st.one_of(calls, calls, calls, st.just("no-such-call")), mode=MODES,
          amount=st.integers(1, 400))
    def end(self, cid: str, mode: str, amount: int) -> None:
        call = self.model.calls.get(cid)
        self._end(cid, self._seconds(mode, amount, call.horizon if call else 0))

    @precondition(lambda self: bool(self._active()))
    @rule(data=st.data(), mode=MODES, amount=st.integers(1, 400))
    def end_active(self, data: st.DataObject, mode: str, amount: int) -> None:
        cid = data.draw(st.sampled_from(self._active()), label="cid")
        self._end(cid, self._seconds(mode, amount, self.model.calls[cid].horizon))

    @rule(cid=calls)
    def get_call(self, cid: str) -> None:
        """GET /calls/{id}: its state and, once ended, its bill."""
        status, got = self.req("GET", f"/calls/{cid}")
        assert status == 200, got
        call = self.model.calls[cid]
        want = {"state": "ended" if call.state == "denied" else call.state,
                "decision": call.answer["decision"], "reason": call.answer["reason"]}
        if call.state in ("ended", "expired") and call.answer["decision"] == "allow":
            assert call.bill is not None
            want["billed"] = call.bill["billed"]
        got_cut = {k: got.get(k) for k in want}
        assert got_cut == want, f"GET call {cid}: gateway {got_cut} != model {want}"

    @rule(cid=calls, duration=st.integers(0, 900))
    def end_again(self, cid: str, duration: int) -> None:
        """An end of a call (perhaps already ended: D31, the first bill again)."""
        self._end(cid, duration)

    # -- time ---------------------------------------------------------------------------------

    def _move_clock(self, to: int) -> None:
        active = [c.started for c in self.model.calls.values() if c.state == "active"]
        if active:
            to = min(to, min(active) + MAX_CALL_AGE)
        self.harness.clock.set(max(to, self.now))
        self.months.add(self.model.month_of(self.now))

    @rule(seconds=st.one_of(st.integers(1, 600), st.integers(1, 48).map(lambda h: h * 3600),
                            st.integers(1, 9).map(lambda d: d * 86400)))
    def advance_clock(self, seconds: int) -> None:
        self._move_clock(self.now + seconds)

    @rule(offset=st.sampled_from((-1, 0, 1)))
    def to_next_month(self, offset: int) -> None:
        """To the next 1st, 00:00 in the tenant's zone (D7), give or take a second."""
        local = datetime.fromtimestamp(self.now, ZoneInfo(self.timezone))
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        start = datetime(year, month, 1, tzinfo=ZoneInfo(self.timezone))
        self._move_clock(calendar.timegm(start.astimezone(UTC).timetuple()) + offset)

    @rule()
    def reaper_pass(self) -> None:
        """D33: one pass of the reaper (it runs every second beside a real gateway)."""
        h = self.harness
        reaper = Reaper(h.store, h.clock, h.settings.reaper_grace_seconds,
                        h.settings.clock_skew_seconds, h.settings.call_retention_seconds)
        h.loop.run_until_complete(reaper.run_once())
        self.model.reap(self.now, h.settings.reaper_grace_seconds)

    def teardown(self) -> None:
        # Leave no active call behind: the reaper's queue is shared by every tenant.
        for cid in self._active():
            self.req("POST", f"/calls/{cid}/end", {"duration_seconds": 0})

    # -- after every step ---------------------------------------------------------------------

    @invariant()
    def credits_match(self) -> None:
        status, got = self.req("GET", "/credits")
        assert status == 200, got
        balance, reserved = micro(got["balance"]), micro(got["reserved"])
        assert 0 <= reserved <= balance, f"D19: the wallet {got}"
        assert (balance, reserved) == (self.model.balance, self.model.wallet_reserved), (
            f"credits: gateway {got} != model balance {self.model.balance} "
            f"reserved {self.model.wallet_reserved}")

    @invariant()
    def pools_match(self) -> None:
        for month in sorted(self.months):
            status, got = self.req("GET", f"/pools?month={month[:4]}-{month[4:]}")
            assert status == 200, got
            rows = {}
            for r in got["pools"]:
                assert all(r[k] >= 0 for k in (
                    "licenses", "capacity_minutes", "used_minutes", "reserved_minutes",
                    "remaining_minutes")), f"D6: a pool figure below 0: {r}"
                if (r["licenses"], r["used_minutes"], r["reserved_minutes"]) == (0, 0, 0):
                    continue
                rows[(r["country"], r["plan"], r["kind"])] = {
                    k: v for k, v in r.items() if k not in ("country", "plan", "kind")}
            want = self.model.pool_rows(month)
            assert rows == want, f"pools {month}: gateway {rows} != model {want}"


@pytest.fixture(scope="module")
def model_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of our own without persistence: an fsync stalled by a busy disk (parallel
    suites) must not turn into a timeout, and thousands of tenants need no AOF."""
    server = RedisServer(tmp_path_factory.mktemp("model-redis"), appendonly=False,
                         extra_args=["--save", ""], name="model-redis")
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("timezone", ["UTC", "America/New_York"])
def test_gateway_matches_reference_model(model_redis: RedisServer, timezone: str) -> None:
    harness = Harness(model_redis.url)
    machine = type("GatewayVsModel_" + timezone.replace("/", "_"), (GatewayVsModel,),
                   {"harness": harness, "timezone": timezone})
    try:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
            derandomize=True, database=None, print_blob=True, report_multiple_bugs=False,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ))
    finally:
        harness.close()


# -- regressions: discrepancies the machine found (fixed in 52c969b), as short programs ----


@pytest.fixture
def harness(model_redis: RedisServer) -> Iterator[Harness]:
    h = Harness(model_redis.url)
    yield h
    h.close()


def _tenant(h: Harness) -> str:
    base = "/v1/tenants/r-" + uuid.uuid4().hex[:12]
    assert h.req("PUT", base, {"name": "repro"})[0] == 201
    return base


def test_end_of_denied_call_keeps_reported_time_as_overrun(harness: Harness) -> None:
    """D31: a reported duration beyond everything granted (0 s for a denied call) is billed
    as the total granted and the excess kept as overrun, for fraud and switch-fault
    analysis; and the end answers the duration reported."""
    base = _tenant(harness)
    call = {"call_id": "c1", "direction": "outbound", "user_id": "nobody",
            "to": "+12125550123"}
    assert harness.req("POST", f"{base}/calls", call)[1]["reason"] == "unknown_user"
    status, bill = harness.req("POST", f"{base}/calls/c1/end", {"duration_seconds": 61})
    assert status == 200
    assert bill["billed"] == {"domestic_pool_minutes": 0, "international_pool_minutes": 0,
                              "credits": "0.0000"}
    assert (bill["duration_seconds"], bill["overrun_seconds"]) == (61, 61), bill


def test_spend_limit_reached_is_the_reason_even_with_an_empty_wallet(harness: Harness) -> None:
    """D22: once his monthly limit is reached, a user's credit-paid calls are denied
    spend_limit_reached, whatever the wallet holds (the order this model follows)."""
    base = _tenant(harness)
    assert harness.req("PUT", f"{base}/users/u", {
        "country": "US", "plan": "pay_as_you_go", "monthly_spend_limit": "0.00"})[0] == 201
    call = {"call_id": "c1", "direction": "outbound", "user_id": "u", "to": "+12125550123"}
    status, answer = harness.req("POST", f"{base}/calls", call)
    assert status == 200
    assert (answer["decision"], answer["reason"]) == ("deny", "spend_limit_reached"), answer
