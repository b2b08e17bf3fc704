"""Every answer is the truth under overload and faults (architecture.md, "Answers that stay
true under stress"): an authorize not answered allow holds nothing in Redis once things
settle, whether Redis ran it late (LATE: refused), ran it in time but answered too late
(voided), or never saw it (shed).

Real redis-servers throughout; stalls are SIGSTOP / SIGCONT of a server of the test's own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
import redis

from gateway.http.web import CALLS, STORE
from gateway.redis.keys import tenant_keys
from gateway.redis.server import RedisServer
from gateway.redis.store import Status, Store, StoreError
from gateway.rules.calls import CallService
from gateway.rules.clock import ManualClock, candidate_months
from tests.support.gateway import T0, start_gateway
from tests.support.gwclient import Gateway

NEW_YORK = "+12125550123"
LONDON = "+442079460000"


def calls_of(gw: Gateway) -> CallService:
    return gw.client.server.app[CALLS]  # type: ignore[no-any-return]


def store_of(gw: Gateway) -> Store:
    return gw.client.server.app[STORE]  # type: ignore[no-any-return]


async def until(check: Callable[[], Awaitable[bool] | bool], what: str,
                deadline_s: float = 15.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` past the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {deadline_s} s: {what}")
        await asyncio.sleep(0.02)


async def setup_tenant(gw: Gateway, t: str) -> None:
    """A pool user (120 minutes) and a credit user (10.00 of credits), concurrency counted."""
    await gw.tenant(t, max_concurrent_calls=50)
    await gw.user(t, "p", "US", "domestic_120")
    await gw.user(t, "c", "US", "pay_as_you_go")
    await gw.topup(t, "10.00", "k")


async def assert_holds_nothing(gw: Gateway, t: str, r: redis.Redis) -> None:
    """No reservation, no concurrency slot, nothing for the reaper."""
    pool = await gw.pool(t, "US", "domestic_120", "domestic")
    assert (pool["used_minutes"], pool["reserved_minutes"]) == (0, 0), pool
    credits = await gw.credits(t)
    assert (credits["balance"], credits["reserved"]) == ("10.0000", "0.0000"), credits
    k = tenant_keys(t, gw.settings.partitions)
    assert int(cast(bytes | None, r.hget(k.tenant, "act")) or 0) == 0
    # A user's count stays at 0 once its last call ended (lua/00_lib.lua USER_ACTIVE).
    assert set(cast(dict[bytes, bytes], r.hgetall(k.user_active)).values()) <= {b"0"}
    members = [m.decode() for m in cast(list[bytes], r.zrange(k.partition.active, 0, -1))]
    assert not [m for m in members if m.startswith(t + "/")], members


@pytest.fixture
async def stalled(own_redis: RedisServer, aiohttp_client: Any,
                  tenant_id: str) -> AsyncIterator[tuple[Gateway, RedisServer, redis.Redis]]:
    """A gateway with the production deadline (100 ms) on a Redis the test may stop."""
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url,
                             redis_timeout_ms=100)
    await setup_tenant(gw, tenant_id)
    r = redis.Redis.from_url(own_redis.url)
    yield gw, own_redis, r
    r.close()


def stop(server: RedisServer) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)


def resume(server: RedisServer) -> None:
    assert server.pid is not None
    os.kill(server.pid, signal.SIGCONT)


async def test_an_authorize_redis_starts_after_its_deadline_changes_nothing(
        stalled: tuple[Gateway, RedisServer, redis.Redis], tenant_id: str) -> None:
    """Redis stalled past the deadline: the switch is told service_unavailable, and when
    Redis runs the queued functions they refuse (LATE): nothing reserved, nothing to void."""
    gw, server, r = stalled
    t = tenant_id
    stop(server)
    try:
        answers = await asyncio.gather(*(
            gw.call(t, f"late-{i}", NEW_YORK, user="p" if i % 2 else "c") for i in range(20)))
    finally:
        resume(server)
    assert {(a["decision"], a["reason"], a["sip_code"]) for a in answers} == {
        ("deny", "service_unavailable", 503)}
    calls = calls_of(gw)
    await until(lambda: calls.voider.pending == 0, "the voids of the stalled calls landed")
    assert calls.voider.voided == 0  # every function refused its late work itself
    for i in range(20):
        assert r.exists(tenant_keys(t, 64).call(f"late-{i}")) == 0
    await assert_holds_nothing(gw, t, r)
    # Served again, and a retry of a refused call id is a new question.
    again = await gw.call(t, "late-0", NEW_YORK, user="c")
    assert again["decision"] == "allow"


async def test_an_authorize_that_ran_but_answered_too_late_is_voided(
        stalled: tuple[Gateway, RedisServer, redis.Redis], tenant_id: str) -> None:
    """The function ran within Redis's idea of the deadline (here: Redis's clock far
    behind ours) but its reply came after the gateway answered: the worker voids the call,
    which then holds nothing and replays the answer the switch got."""
    gw, server, r = stalled
    t = tenant_id
    calls = calls_of(gw)
    calls._redis_budget_ms = 3_600_000  # as if Redis's clock ran an hour behind ours
    stop(server)
    try:
        pool_call = await gw.call(t, "v-pool", NEW_YORK, user="p")
        credit_call = await gw.call(t, "v-credit", LONDON, user="c")
        assert calls.voider.pending == 2
    finally:
        resume(server)
    for a in (pool_call, credit_call):
        assert (a["decision"], a["reason"]) == ("deny", "service_unavailable")
    await until(lambda: calls.voider.pending == 0, "the voids landed")
    assert calls.voider.voided == 2
    await assert_holds_nothing(gw, t, r)
    for cid in ("v-pool", "v-credit"):
        rec = await gw.req("GET", f"/v1/tenants/{t}/calls/{cid}")
        assert (rec["decision"], rec["reason"], rec["state"]) == (
            "deny", "service_unavailable", "ended")
        replay = await gw.call(t, cid, NEW_YORK, user="p")  # D32: the answer given
        assert (replay["decision"], replay["reason"]) == ("deny", "service_unavailable")
        await gw.end(t, cid, 0)  # the switch may still report it: nothing billed
    await assert_holds_nothing(gw, t, r)


async def _authorize(gw: Gateway, t: str, call_id: str, attempt: str) -> str:
    """One authorize FCALL as a worker sends it, with a chosen attempt id: the decision."""
    from gateway.rules.calls import AuthorizeRequest
    from gateway.rules.numbers import classify

    calls = calls_of(gw)
    req = AuthorizeRequest(call_id, "outbound", "p", NEW_YORK, None, None)
    args = calls._args(t, req, classify(NEW_YORK), int(gw.clock.now()), "USD", "UTC", attempt)
    return (await store_of(gw).authorize(args)).decision


async def _void(gw: Gateway, t: str, call_id: str, attempt: str) -> bool:
    now = int(gw.clock.now())
    return await store_of(gw).void_call(t, call_id, now, attempt,
                                        candidate_months(now, 300), 3600)


@pytest.mark.cluster
async def test_only_the_attempt_that_last_answered_allow_may_void_the_call(
        gw: Gateway, tenant_id: str, store_url: str) -> None:
    t = tenant_id
    await setup_tenant(gw, t)
    assert await _authorize(gw, t, "x", "a1") == "allow"
    assert not await _void(gw, t, "x", "someone-else")
    # A retry answered allow (the replay) takes the call over: if the switch got that
    # answer, the first attempt's void must not undo it.
    assert await _authorize(gw, t, "x", "a2") == "allow"
    assert not await _void(gw, t, "x", "a1")
    pool = await gw.pool(t, "US", "domestic_120", "domestic")
    assert pool["reserved_minutes"] == 5
    # If that answer was lost too, its own void undoes the call, once.
    assert await _void(gw, t, "x", "a2")
    assert not await _void(gw, t, "x", "a2")
    pool = await gw.pool(t, "US", "domestic_120", "domestic")
    assert pool["reserved_minutes"] == 0
    replay = await gw.call(t, "x", NEW_YORK, user="p")
    assert (replay["decision"], replay["reason"], replay["sip_code"]) == (
        "deny", "service_unavailable", 503)


@pytest.mark.cluster
async def test_a_call_the_switch_extended_or_ended_is_never_voided(
        gw: Gateway, tenant_id: str, store_url: str) -> None:
    t = tenant_id
    await setup_tenant(gw, t)
    assert await _authorize(gw, t, "ext", "a1") == "allow"
    await gw.extend(t, "ext", 200)
    assert not await _void(gw, t, "ext", "a1")
    assert await _authorize(gw, t, "end", "b1") == "allow"
    await gw.end(t, "end", 61)
    assert not await _void(gw, t, "end", "b1")
    assert not await _void(gw, t, "never-seen", "c1")  # nothing to undo: nothing written
    assert (await gw.req("GET", f"/v1/tenants/{t}/calls/ext"))["state"] == "active"
    pool = await gw.pool(t, "US", "domestic_120", "domestic")
    assert (pool["used_minutes"], pool["reserved_minutes"]) == (2, 9)  # 200 + 300 s held


async def test_a_late_extension_is_refused_and_keeps_the_current_grant(
        gw: Gateway, tenant_id: str, redis_sync: redis.Redis) -> None:
    """extend checks the deadline too: work Redis starts after it changes nothing, and the
    switch, told service_unavailable, keeps (and must cut at) its current grant."""
    t = tenant_id
    await setup_tenant(gw, t)
    assert (await gw.call(t, "e", NEW_YORK, user="p"))["decision"] == "allow"
    before = redis_sync.hgetall(tenant_keys(t, 64).call("e"))
    calls = calls_of(gw)
    calls._redis_budget_ms = -60_000  # the deadline is already past when Redis starts it
    x = await gw.extend(t, "e", 290)
    assert (x["decision"], x["reason"]) == ("deny", "service_unavailable")
    assert redis_sync.hgetall(tenant_keys(t, 64).call("e")) == before


async def test_a_deadline_in_milliseconds_from_the_previous_version_still_holds(
        gw: Gateway, tenant_id: str, redis_sync: redis.Redis) -> None:
    """During an upgrade a gateway of the previous version sends its deadline in
    milliseconds since the epoch: a past one is refused (LATE) and changes nothing, a
    future one is not."""
    t = tenant_id
    await setup_tenant(gw, t)
    assert (await gw.call(t, "ms", NEW_YORK, user="p"))["decision"] == "allow"
    key = tenant_keys(t, 64).call("ms")
    before = redis_sync.hgetall(key)
    now, store = int(gw.clock.now()), store_of(gw)
    months = candidate_months(now, 300)
    past_ms = int(time.time() * 1000) - 60_000
    with pytest.raises(StoreError) as late:
        await store.extend(t, "ms", now, 30, months, 300, None, past_ms)
    assert late.value.status is Status.LATE
    assert redis_sync.hgetall(key) == before
    decision = await store.extend(t, "ms", now, 30, months, 300, None, past_ms + 3_600_000)
    assert decision.decision == "allow"


async def test_past_the_in_flight_bound_requests_are_shed_without_redis(
        own_redis: RedisServer, aiohttp_client: Any, tenant_id: str) -> None:
    """Overload is shed at once (deny / service_unavailable, SIP 503), before Redis, while
    emergency calls still go through; what was shed leaves nothing in Redis."""
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url,
                             redis_timeout_ms=3000, max_inflight_calls=2)
    t = tenant_id
    await setup_tenant(gw, t)
    calls = calls_of(gw)
    r = redis.Redis.from_url(own_redis.url)
    stop(own_redis)
    try:
        held = [asyncio.ensure_future(gw.call(t, f"held-{i}", NEW_YORK, user="p"))
                for i in range(2)]
        await until(lambda: calls.inflight == 2, "two requests wait for Redis")
        shed = await gw.call(t, "shed", NEW_YORK, user="p")
        emergency = await gw.call(t, "sos", "911", user="p")
        end = await gw.end(t, "held-0", 10, status=503)
        assert not any(h.done() for h in held)  # answered while the others still wait
    finally:
        resume(own_redis)
    assert (shed["decision"], shed["reason"], shed["sip_code"]) == (
        "deny", "service_unavailable", 503)
    assert (emergency["decision"], emergency["reason"]) == ("allow", "emergency")
    assert end["status"] == 503
    await asyncio.gather(*held)
    assert r.exists(tenant_keys(t, 64).call("shed")) == 0
    metrics_text = await gw.client.get("/metrics")
    body = await metrics_text.text()
    assert 'callgate_shed_requests_total{operation="authorize"} 2.0' in body
    assert 'callgate_shed_requests_total{operation="end"} 1.0' in body
    r.close()


async def test_redis_out_of_memory_denies_calls_and_refuses_admin_writes(
        own_redis: RedisServer, aiohttp_client: Any, tenant_id: str) -> None:
    """maxmemory reached with noeviction: call control answers deny / service_unavailable
    (emergency still allowed), admin writes a 503 problem document; no 500, nothing
    half-written; served again once memory is freed."""
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url,
                             redis_timeout_ms=1000)
    t = tenant_id
    await setup_tenant(gw, t)
    r = redis.Redis.from_url(own_redis.url)
    policy = cast(dict[str, str], r.config_get("maxmemory-policy"))
    assert policy["maxmemory-policy"] == "noeviction"
    r.config_set("maxmemory", 1)
    try:
        d = await gw.call(t, "oom", NEW_YORK, user="p")
        assert (d["decision"], d["reason"], d["sip_code"]) == (
            "deny", "service_unavailable", 503)
        e = await gw.call(t, "oom-sos", "911", user="p")
        assert (e["decision"], e["reason"]) == ("allow", "emergency")
        put = await gw.req("PUT", f"/v1/tenants/{t}/users/x",
                           {"country": "US", "plan": "domestic"}, status=503)
        assert put["type"].endswith("service-unavailable")
        top = await gw.req("POST", f"/v1/tenants/{t}/credits/topups",
                           {"amount": "1.00", "idempotency_key": "oom"}, status=503)
        assert top["status"] == 503
    finally:
        r.config_set("maxmemory", 0)
    assert r.exists(tenant_keys(t, 64).call("oom")) == 0
    await assert_holds_nothing(gw, t, r)
    assert (await gw.call(t, "after", NEW_YORK, user="p"))["decision"] == "allow"
    r.close()


async def test_void_call_reports_month_needed_like_end(
        gw: Gateway, tenant_id: str, redis_sync: redis.Redis) -> None:
    """A void far from the call's start month (it cannot happen on the call path, but the
    store handles it as end does): the call's own month is used."""
    t = tenant_id
    await setup_tenant(gw, t)
    assert await _authorize(gw, t, "m", "a1") == "allow"
    store = store_of(gw)
    later = int(gw.clock.now()) + 70 * 86_400
    with pytest.raises(StoreError) as exc:
        await store._void(t, "m", later, "a1", candidate_months(later, 300), 3600)
    assert exc.value.status is Status.MONTH_NEEDED
    assert await store.void_call(t, "m", later, "a1", candidate_months(later, 300), 3600)
    pool = await gw.pool(t, "US", "domestic_120", "domestic")
    assert pool["reserved_minutes"] == 0


async def test_a_voided_call_reaches_the_ledger_as_denied(
        own_redis: RedisServer, aiohttp_client: Any, tenant_id: str, ledger_url: str) -> None:
    """call.voided is on the stream like every change: the ledger's call is denied, with
    nothing reserved, and no CDR bills it."""
    from gateway.ledger import open_ledger
    from gateway.ledger.persister import Persister
    from tests.support.persist_helpers import drain

    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url, partitions=4)
    t = tenant_id
    await setup_tenant(gw, t)
    assert await _authorize(gw, t, "gone", "a1") == "allow"
    assert await _void(gw, t, "gone", "a1")
    store = Store.from_url(own_redis.url, 4)
    ledger = await open_ledger(ledger_url)
    try:
        await drain(Persister(store, ledger))
        rows = await ledger.query(
            "SELECT state, reason, pool_reserved_minutes, credits_reserved_micro FROM calls "
            "WHERE tenant = ? AND call_id = ?", t, "gone")
        assert [tuple(r) for r in rows] == [("denied", "service_unavailable", 0, 0)]
        cdrs = await ledger.query("SELECT COUNT(*) FROM cdrs WHERE tenant = ?", t)
        assert cdrs[0][0] == 0
    finally:
        await ledger.close()
        await store.close()


async def test_an_allow_whose_client_is_gone_is_voided(
        own_redis: RedisServer, aiohttp_client: Any, tenant_id: str) -> None:
    """No answer at all is not an allow: a client whose connection the worker has seen
    close before the answer is ready leaves nothing reserved (the allow is voided), while a
    client that stays gets its call."""
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url,
                             redis_timeout_ms=3000)
    t = tenant_id
    await setup_tenant(gw, t)
    calls = calls_of(gw)
    r = redis.Redis.from_url(own_redis.url)
    port = gw.client.port
    body = (b'{"call_id":"gone","direction":"outbound","user_id":"p","to":"'
            + NEW_YORK.encode() + b'"}')
    request = (f"POST /v1/tenants/{t}/calls HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {gw.settings.operator_token}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    stop(own_redis)  # the answer cannot come before the client has gone
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        await until(lambda: calls.inflight == 1, "the authorize waits for Redis")
        fast = gw.client.server.runner.server.fast_connections
        open_before = len(fast)
        writer.transport.abort()  # the switch gives up: no answer will reach it
        # The worker learns it before Redis answers (a close it has not read yet is
        # indistinguishable from a slow client: the answer would go to the gone socket).
        await until(lambda: len(fast) == open_before - 1, "the worker saw the close")
    finally:
        resume(own_redis)
    await until(lambda: calls.voider.voided == 1, "the unheard allow was voided")
    await assert_holds_nothing(gw, t, r)
    replay = await gw.call(t, "gone", NEW_YORK, user="p")
    assert (replay["decision"], replay["reason"]) == ("deny", "service_unavailable")
    # A client that stays is answered allow and keeps its call.
    assert (await gw.call(t, "stays", NEW_YORK, user="p"))["decision"] == "allow"
    assert calls.voider.voided == 1
    r.close()
