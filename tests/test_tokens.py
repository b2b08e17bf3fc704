"""Tokens made at run time (api.md "Tokens"), in process on the suite's redis-server.

The lifecycle through the API (create, use, list, revoke) on one gateway and its pickup by
a second gateway on the same Redis; expiry against the injected clock; what a tenant's
admin may and may not do; the secret never shown again nor logged; the coarse last use.
The same through `callgate serve` processes and the CLI: test_tokens_serve.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import redis as redis_py

from gateway.config import TokenEntry
from gateway.http.api_tokens import TOKENS_TABLE
from gateway.http.app import CHANGES, create_app
from gateway.http.auth import Authenticator, Principal, token_sha256
from gateway.http.tokens import TOKEN_RECHECK_SECONDS
from gateway.http.web import AUTH as AUTH_KEY
from gateway.http.web import STORE
from gateway.polling import POLLER
from gateway.redis.changes import LISTEN_BACKOFF_MAX_SECONDS
from gateway.redis.client import Address
from gateway.redis.keys import TOKENS, TOKENS_USED
from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock, rfc3339
from tests.support.gateway import T0, make_settings, start_gateway
from tests.support.gwclient import AUTH, Gateway

ADMIN_TOKEN = "cg_admin_" + secrets.token_urlsafe(32)
TWO_ADMIN_TOKEN = "cg_admin2_" + secrets.token_urlsafe(32)
# The contract is 1 s: a change is pushed to every worker, and the figure is printed by
# `pytest -s tests/test_tokens_serve.py`. The tests poll with a looser deadline: they check
# that every worker picks the change up, not how fast a loaded machine does; those about
# the push give the other worker a recheck of an hour, so that only a push can deliver.
PICKUP_DEADLINE_S = 5.0
TOKEN_RE = re.compile(r"cg_[A-Za-z0-9_-]{43}")
ID_RE = re.compile(r"tok_[0-9a-f]{16}")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class World:
    gw: Gateway
    own: str
    second: str
    other: str


async def _tenants(gw: Gateway, *tenants: str) -> None:
    for t in tenants:
        await gw.req("PUT", f"/v1/tenants/{t}", {"name": t}, status=201)
        await gw.req("PUT", f"/v1/tenants/{t}/users/alice",
                     {"country": "US", "plan": "domestic"}, status=201)


@pytest.fixture
async def world(redis_server: RedisServer, aiohttp_client: Any,
                clock: ManualClock) -> World:
    suffix = secrets.token_hex(4)
    own, second, other = f"own-{suffix}", f"second-{suffix}", f"other-{suffix}"
    gw = await start_gateway(aiohttp_client, clock, redis_server.url, tokens=(
        TokenEntry("adm-own", token_sha256(ADMIN_TOKEN), "admin", (own,)),
        TokenEntry("adm-two", token_sha256(TWO_ADMIN_TOKEN), "admin", (own, second)),
    ))
    await _tenants(gw, own, second, other)
    return World(gw, own, second, other)


async def status_of(gw: Gateway, token: str, tenant: str, call_id: str | None = None) -> int:
    """An authorize on the call path (the fast path) with `token`: its HTTP status."""
    body = {"call_id": call_id or "c-" + secrets.token_hex(6), "user_id": "alice",
            "to": "+12125550123"}
    resp = await gw.client.post(f"/v1/tenants/{tenant}/calls", json=body,
                                headers=bearer(token))
    await resp.read()
    return int(resp.status)


async def wait_status(gws: list[Gateway], token: str, tenant: str, want: int) -> None:
    """Poll every gateway until it answers `want` for `token`, within the deadline."""
    deadline = time.monotonic() + PICKUP_DEADLINE_S
    pending = list(gws)
    while pending:
        pending = [g for g in pending if await status_of(g, token, tenant) != want]
        if pending:
            assert time.monotonic() < deadline, f"still not {want} after {PICKUP_DEADLINE_S} s"
            await asyncio.sleep(0.02)


async def create(gw: Gateway, body: dict[str, Any], *, path: str = "/v1/tokens",
                 headers: dict[str, str] | None = None, status: int = 201) -> Any:
    return await gw.req("POST", path, body, headers=headers, status=status)


def errors_of(problem: Any) -> dict[str, str]:
    return {e["field"]: e["message"] for e in problem.get("errors", [])}


# -- the lifecycle -----------------------------------------------------------------------------


async def test_lifecycle_through_the_api(world: World, redis_server: RedisServer,
                                         aiohttp_client: Any, clock: ManualClock) -> None:
    gw = world.gw
    # A second gateway on the same Redis: another worker.
    gw2 = await start_gateway(aiohttp_client, clock, redis_server.url)
    made = await create(gw, {"role": "switch", "tenants": [world.own], "description": "sbc-1",
                             "expires_at": None})
    assert set(made) == {"id", "token", "role", "tenants", "description", "created_at",
                         "expires_at"}
    assert ID_RE.fullmatch(made["id"]) and TOKEN_RE.fullmatch(made["token"]), made
    assert (made["role"], made["tenants"], made["description"], made["created_at"],
            made["expires_at"]) == ("switch", [world.own], "sbc-1", rfc3339(T0), None)
    token = made["token"]
    # Usable at once on the worker that made it, and on the other within the pickup period.
    assert await status_of(gw, token, world.own) == 200
    await wait_status([gw2], token, world.own, 200)
    # Only its SHA-256 is in Redis.
    with redis_py.Redis.from_url(redis_server.url) as r:
        raw = r.hget(TOKENS, made["id"])
        dump = b"".join(v for v in r.hgetall(TOKENS).values())
    assert raw is not None and token_sha256(token).encode() in raw
    assert token.encode() not in dump
    # Listed without its secret (nor its hash).
    listing = await gw.req("GET", "/v1/tokens")
    mine = [t for t in listing["tokens"] if t["id"] == made["id"]]
    assert mine == [{"id": made["id"], "role": "switch", "tenants": [world.own],
                     "description": "sbc-1", "created_at": rfc3339(T0), "expires_at": None,
                     "last_used_at": None}]
    # Revoked on the first worker: 401 there at once, and on the other within the period.
    assert await gw.req("DELETE", f"/v1/tokens/{made['id']}", status=204) is None
    assert await status_of(gw, token, world.own) == 401
    await wait_status([gw, gw2], token, world.own, 401)
    assert made["id"] not in {t["id"] for t in (await gw.req("GET", "/v1/tokens"))["tokens"]}
    # Revoking it again: it is gone.
    gone = await gw.req("DELETE", f"/v1/tokens/{made['id']}", status=404)
    assert gone["type"].endswith("token-not-found")
    await gw.req("DELETE", "/v1/tokens/bad%20id", status=400)


async def test_every_role_made_at_run_time_acts_as_its_role(world: World) -> None:
    gw = world.gw
    op = (await create(gw, {"role": "operator"}))["token"]
    adm = (await create(gw, {"role": "admin", "tenants": [world.own]}))["token"]
    sw = (await create(gw, {"role": "switch", "tenants": [world.own, world.second]}))["token"]
    # operator: everything, every tenant, tokens included.
    await gw.req("GET", f"/v1/tenants/{world.other}", headers=bearer(op))
    await gw.req("GET", "/v1/tokens", headers=bearer(op))
    # admin of own: its tenant, 404 elsewhere, 403 for call control and operator routes.
    await gw.req("GET", f"/v1/tenants/{world.own}", headers=bearer(adm))
    await gw.req("GET", f"/v1/tenants/{world.other}", headers=bearer(adm), status=404)
    assert await status_of(gw, adm, world.own) == 403
    await gw.req("GET", "/v1/tokens", headers=bearer(adm), status=403)
    # A switch token listing two tenants calls for both, 404 for a third, 403 on admin.
    assert await status_of(gw, sw, world.own) == 200
    assert await status_of(gw, sw, world.second) == 200
    assert await status_of(gw, sw, world.other) == 404
    await gw.req("GET", f"/v1/tenants/{world.own}", headers=bearer(sw), status=403)
    # A wrong token: 401; the right one with a character changed: 401.
    assert await status_of(gw, "cg_" + secrets.token_urlsafe(32), world.own) == 401
    assert await status_of(gw, sw[:-1] + ("A" if sw[-1] != "A" else "B"), world.own) == 401
    # The actor recorded for a change is the token's id, never the token.
    body = await gw.req("PUT", f"/v1/tenants/{world.own}/users/bob",
                        {"country": "US", "plan": "domestic"}, headers=bearer(adm), status=201)
    assert body["user_id"] == "bob"
    audit = await gw.req("GET", f"/v1/tenants/{world.own}/audit", headers=bearer(adm))
    actors = {e["actor"] for e in audit["entries"]}
    assert any(ID_RE.fullmatch(a) for a in actors) and adm not in str(audit)


async def test_expiry_follows_the_clock(world: World, clock: ManualClock) -> None:
    gw = world.gw
    made = await create(gw, {"role": "switch", "tenants": [world.own],
                             "expires_at": rfc3339(T0 + 60)})
    assert made["expires_at"] == rfc3339(T0 + 60)
    assert await status_of(gw, made["token"], world.own) == 200
    clock.advance(59)
    assert await status_of(gw, made["token"], world.own) == 200
    clock.advance(1)  # at expires_at: no longer valid
    assert await status_of(gw, made["token"], world.own) == 401
    await gw.req("GET", f"/v1/tenants/{world.own}/calls/x", headers=bearer(made["token"]),
                 status=401)
    # Still listed (with its expiry) until revoked.
    listed = [t for t in (await gw.req("GET", "/v1/tokens"))["tokens"] if t["id"] == made["id"]]
    assert listed[0]["expires_at"] == rfc3339(T0 + 60)
    # An offset is accepted and normalised to UTC.
    other = await create(gw, {"role": "admin", "tenants": [world.own],
                              "expires_at": "2027-01-01T01:00:00+01:00"})
    assert other["expires_at"] == "2027-01-01T00:00:00Z"


@pytest.mark.parametrize("body,field", [
    ({"role": "switch", "tenants": ["a"], "expires_at": rfc3339(T0 - 1)}, "expires_at"),
    ({"role": "switch", "tenants": ["a"], "expires_at": rfc3339(T0)}, "expires_at"),
    ({"role": "switch", "tenants": ["a"], "expires_at": "tomorrow"}, "expires_at"),
    ({"role": "switch", "tenants": ["a"], "expires_at": "2027-02-30T00:00:00Z"}, "expires_at"),
    ({"role": "switch", "tenants": ["a"], "expires_at": "2027-01-01"}, "expires_at"),
    ({"role": "switch", "tenants": ["a"], "expires_at": 1900000000}, "expires_at"),
    ({"role": "switch", "tenants": ["a"], "expires_at": "9999-12-31T23:59:59Z"}, "expires_at"),
    ({"tenants": ["a"]}, "role"),
    ({"role": "root", "tenants": ["a"]}, "role"),
    ({"role": "switch"}, "tenants"),
    ({"role": "switch", "tenants": []}, "tenants"),
    ({"role": "switch", "tenants": "a"}, "tenants"),
    ({"role": "switch", "tenants": ["a b"]}, "tenants[0]"),
    ({"role": "switch", "tenants": ["a", "a"]}, "tenants[1]"),
    ({"role": "operator", "tenants": ["a"]}, "tenants"),
    ({"role": "switch", "tenants": ["a"], "description": ""}, "description"),
    ({"role": "switch", "tenants": ["a"], "description": "x" * 201}, "description"),
    ({"role": "switch", "tenants": ["a"], "description": "a\nb"}, "description"),
    ({"role": "switch", "tenants": ["a"], "token": "cg_mine"}, "token"),
])
async def test_bad_create_requests_name_the_field(world: World, body: dict[str, Any],
                                                  field: str) -> None:
    problem = await create(world.gw, body, status=400)
    assert field in errors_of(problem), problem


# -- a tenant's admin --------------------------------------------------------------------------


async def test_tenant_admin_manages_its_switch_tokens_only(world: World) -> None:
    gw, own, other = world.gw, world.own, world.other
    admin = bearer(ADMIN_TOKEN)
    path = f"/v1/tenants/{own}/tokens"
    # Defaults: a switch token of this tenant.
    made = await create(gw, {"description": "pbx"}, path=path, headers=admin)
    assert (made["role"], made["tenants"]) == ("switch", [own])
    assert await status_of(gw, made["token"], own) == 200
    explicit = await create(gw, {"role": "switch", "tenants": [own]}, path=path, headers=admin)
    # Another role: 403; another tenant list: 400 naming tenants.
    for role in ("admin", "operator"):
        await create(gw, {"role": role}, path=path, headers=admin, status=403)
    for tenants in ([other], [own, other], [own, world.second]):
        p = await create(gw, {"tenants": tenants}, path=path, headers=admin, status=400)
        assert "tenants" in errors_of(p)
    # The operator routes are not the admin's.
    await create(gw, {"role": "switch", "tenants": [own]}, headers=admin, status=403)
    await gw.req("GET", "/v1/tokens", headers=admin, status=403)
    await gw.req("DELETE", f"/v1/tokens/{made['id']}", headers=admin, status=403)
    # Another tenant's routes: 404 like a missing tenant.
    for method, p in (("GET", f"/v1/tenants/{other}/tokens"),
                      ("POST", f"/v1/tenants/{other}/tokens"),
                      ("DELETE", f"/v1/tenants/{other}/tokens/{made['id']}")):
        nf = await gw.req(method, p, {} if method == "POST" else None, headers=admin,
                          status=404)
        assert nf["type"].endswith("tenant-not-found")
    # Tokens the operator made: another tenant's switch token, an admin token of this
    # tenant, a switch token shared with another tenant. The admin sees none of them and
    # revoking any is 404, exactly as for a token that does not exist.
    theirs = await create(gw, {"role": "switch", "tenants": [other]})
    own_admin = await create(gw, {"role": "admin", "tenants": [own]})
    shared = await create(gw, {"role": "switch", "tenants": [own, world.second]})
    listed = (await gw.req("GET", path, headers=admin))["tokens"]
    assert {t["id"] for t in listed} == {made["id"], explicit["id"]}
    assert all(t["role"] == "switch" and t["tenants"] == [own] for t in listed)
    missing = await gw.req("DELETE", f"{path}/tok_0000000000000000", headers=admin, status=404)
    for tok in (theirs, own_admin, shared):
        nf = await gw.req("DELETE", f"{path}/{tok['id']}", headers=admin, status=404)
        assert nf == missing
        assert await status_of(gw, tok["token"], own if tok is not theirs else other) \
            in (200, 403)  # still valid
    # Its own switch token: revoked, 401 at once.
    await gw.req("DELETE", f"{path}/{made['id']}", headers=admin, status=204)
    assert await status_of(gw, made["token"], own) == 401
    # An admin of two tenants manages each tenant's tokens on that tenant's route only.
    two = bearer(TWO_ADMIN_TOKEN)
    sec = await create(gw, {}, path=f"/v1/tenants/{world.second}/tokens", headers=two)
    assert sec["tenants"] == [world.second]
    await gw.req("DELETE", f"{path}/{sec['id']}", headers=two, status=404)
    await gw.req("DELETE", f"/v1/tenants/{world.second}/tokens/{sec['id']}", headers=two,
                 status=204)


async def test_tenant_routes_of_a_missing_tenant_are_404(world: World) -> None:
    missing = "missing-" + secrets.token_hex(4)
    for method in ("GET", "POST"):
        nf = await world.gw.req(method, f"/v1/tenants/{missing}/tokens",
                                {} if method == "POST" else None, status=404)
        assert nf["type"].endswith("tenant-not-found")


async def test_a_switch_token_cannot_manage_tokens(world: World) -> None:
    sw = (await create(world.gw, {"role": "switch", "tenants": [world.own]}))["token"]
    for method, path in (("GET", "/v1/tokens"), ("GET", f"/v1/tenants/{world.own}/tokens"),
                         ("POST", f"/v1/tenants/{world.own}/tokens")):
        await world.gw.req(method, path, {} if method == "POST" else None, headers=bearer(sw),
                           status=403)


# -- secrets stay secret; last use -------------------------------------------------------------


async def test_the_secret_is_shown_once_and_never_logged(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gw = world.gw
    made = await create(gw, {"role": "switch", "tenants": [world.own]})
    by_admin = await create(gw, {}, path=f"/v1/tenants/{world.own}/tokens",
                            headers=bearer(ADMIN_TOKEN))
    secrets_made = [made["token"], by_admin["token"]]
    for token in secrets_made:
        assert await status_of(gw, token, world.own) == 200
    await gw.client.app[TOKENS_TABLE].flush_seen(gw.client.app[STORE], gw.clock)
    answers = [await (await gw.client.get(p, headers=h)).text() for p, h in (
        ("/v1/tokens", AUTH), (f"/v1/tenants/{world.own}/tokens", bearer(ADMIN_TOKEN)))]
    await gw.req("DELETE", f"/v1/tokens/{made['id']}", status=204)
    assert await status_of(gw, made["token"], world.own) == 401
    # A malformed request carrying a token, too.
    resp = await gw.client.post(f"/v1/tenants/{world.own}/calls", data=b"{not json",
                                headers=bearer(by_admin["token"]))
    assert resp.status == 400
    for token in secrets_made:
        for text in answers:
            assert made["id"] in text or by_admin["id"] in text
            assert token not in text and token_sha256(token) not in text
        assert token not in caplog.text and token_sha256(token) not in caplog.text
    assert f"token {made['id']} created" in caplog.text  # the id is logged, not the token
    assert f"token {made['id']} revoked" in caplog.text


async def test_last_used_is_recorded_off_the_call_path(world: World, redis_server: RedisServer,
                                                       clock: ManualClock) -> None:
    gw = world.gw
    app = gw.client.app
    table = app[TOKENS_TABLE]
    made = await create(gw, {"role": "switch", "tenants": [world.own]})
    unused = await create(gw, {"role": "switch", "tenants": [world.own]})

    async def used_of(token_id: str) -> Any:
        tokens = (await gw.req("GET", "/v1/tokens"))["tokens"]
        return next(t["last_used_at"] for t in tokens if t["id"] == token_id)

    with redis_py.Redis.from_url(redis_server.url) as r:
        assert await status_of(gw, made["token"], world.own) == 200
        # Using a token writes nothing to Redis by itself.
        assert r.hget(TOKENS_USED, made["id"]) is None
        assert made["id"] in app[AUTH_KEY].seen
        await table.flush_seen(app[STORE], clock)
        assert not app[AUTH_KEY].seen
        assert await used_of(made["id"]) == rfc3339(T0)
        assert await used_of(unused["id"]) is None
        # Newer only: a worker whose clock is behind never moves it back.
        clock.advance(-30)
        assert await status_of(gw, made["token"], world.own) == 200
        await table.flush_seen(app[STORE], clock)
        assert await used_of(made["id"]) == rfc3339(T0)
        clock.advance(120)
        assert await status_of(gw, made["token"], world.own) == 200
        await table.flush_seen(app[STORE], clock)
        assert await used_of(made["id"]) == rfc3339(T0 + 90)
        # A revoked token gets no entry back from a late flush.
        assert await status_of(gw, made["token"], world.own) == 200
        await gw.req("DELETE", f"/v1/tokens/{made['id']}", status=204)
        await table.flush_seen(app[STORE], clock)
        assert r.hget(TOKENS_USED, made["id"]) is None


# -- the authenticator -------------------------------------------------------------------------


def test_runtime_tokens_never_replace_the_bootstrap() -> None:
    clock = ManualClock(T0)
    boot = "cg_" + secrets.token_urlsafe(32)
    auth = Authenticator(boot, [], clock=clock)
    run = "cg_" + secrets.token_urlsafe(32)
    # A run-time record with the bootstrap's hash keeps the bootstrap's meaning.
    auth.load_runtime([(token_sha256(boot), Principal("tok_x", "switch", frozenset({"t"})),
                        T0 + 1),
                       (token_sha256(run).upper(), Principal("tok_y", "admin",
                                                             frozenset({"t"})), None)])
    clock.advance(10)
    p = auth.authenticate(f"Bearer {boot}")
    assert p is not None and (p.token_id, p.role) == ("bootstrap", "operator")
    q = auth.authenticate(f"Bearer {run}")
    assert q is not None and q.token_id == "tok_y"
    assert auth.seen == {"tok_y"} and auth.runtime_count() == 1
    auth.load_runtime([])
    assert auth.authenticate(f"Bearer {run}") is None
    assert auth.authenticate(f"Bearer {boot}") is not None


def test_the_push_leaves_room_within_the_pickup_contract() -> None:
    # A listener back after an outage re-reads the versions within its backoff cap, well
    # within the 1 s of api.md; the recheck is the safety net, not the path of a revocation.
    assert LISTEN_BACKOFF_MAX_SECONDS * 2 <= 1.0
    assert TOKEN_RECHECK_SECONDS <= 10.0



# -- the push --------------------------------------------------------------------------------

PUSH_ONLY_RECHECK_SECONDS = 3600.0


async def deaf_to_rechecks(aiohttp_client: Any, clock: ManualClock, redis_url: str) -> Gateway:
    """A second worker whose safety-net recheck never comes within a test: what it learns,
    it learns from the push (or from its listener's re-read on reconnect)."""
    settings = make_settings(redis_url, tokens=(
        TokenEntry("adm-own", token_sha256(ADMIN_TOKEN), "admin", ()),))
    app = create_app(settings, clock=clock)
    app[POLLER].interval_s = PUSH_ONLY_RECHECK_SECONDS
    gw = Gateway(await aiohttp_client(app), clock, settings)
    await until_listening(gw)
    return gw


async def until_listening(gw: Gateway, connects: int = 1) -> None:
    listener = gw.client.app[CHANGES]
    deadline = time.monotonic() + PICKUP_DEADLINE_S
    while not (listener.connected and listener.connects >= connects):
        assert time.monotonic() < deadline, "the change listener did not subscribe"
        await asyncio.sleep(0.01)


async def test_a_revocation_is_pushed_to_every_worker(
        world: World, redis_server: RedisServer, aiohttp_client: Any,
        clock: ManualClock) -> None:
    other = await deaf_to_rechecks(aiohttp_client, clock, redis_server.url)
    made = await create(world.gw, {"role": "switch", "tenants": [world.own]})
    await wait_status([world.gw, other], made["token"], world.own, 200)
    await world.gw.req("DELETE", f"/v1/tokens/{made['id']}", status=204)
    await wait_status([world.gw, other], made["token"], world.own, 401)


async def test_a_change_missed_by_a_listener_is_read_when_it_reconnects(
        world: World, redis_server: RedisServer, aiohttp_client: Any, clock: ManualClock,
        caplog: pytest.LogCaptureFixture) -> None:
    other = await deaf_to_rechecks(aiohttp_client, clock, redis_server.url)
    listener = other.client.app[CHANGES]
    made = await create(world.gw, {"role": "switch", "tenants": [world.own]})
    await wait_status([other], made["token"], world.own, 200)
    # The listener's connection breaks and its Redis is out of reach for a while: it
    # retries quietly, and a revocation published meanwhile is lost to it.
    real = listener.addresses
    with socket_nobody_listens_on() as port:
        listener.addresses = lambda: [Address("127.0.0.1", port)]
        with redis_py.Redis.from_url(redis_server.url) as r:
            r.client_kill_filter(_type="pubsub")
        failures = listener.failures
        deadline = time.monotonic() + PICKUP_DEADLINE_S
        while listener.connected or listener.failures < failures + 3:
            assert time.monotonic() < deadline, "the listener did not notice"
            await asyncio.sleep(0.01)
        await world.gw.req("DELETE", f"/v1/tokens/{made['id']}", status=204)
        assert await status_of(other, made["token"], world.own) == 200  # deaf for now
    lost = [r for r in caplog.records if "change listener lost Redis" in r.getMessage()
            and r.name == "gateway.redis.changes"]
    # Once per outage and listener (both gateways' were killed), however many retries.
    assert len(lost) == 2, lost
    # Back: the re-read on reconnect finds the revocation.
    listener.addresses = real
    await wait_status([other], made["token"], world.own, 401)
    assert listener.connected


@contextlib.contextmanager
def socket_nobody_listens_on() -> Iterator[int]:
    """A port bound but not listening: a connect there is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.cluster
async def test_a_revocation_is_pushed_on_every_topology(
        store_url: str, aiohttp_client: Any, clock: ManualClock) -> None:
    # On a cluster the function PUBLISHes on the node of {tokens}; the listeners may be
    # subscribed on any node: a cluster PUBLISH reaches them all.
    one = await start_gateway(aiohttp_client, clock, store_url)
    other = await deaf_to_rechecks(aiohttp_client, clock, store_url)
    made = await create(one, {"role": "operator"})

    async def refused_everywhere(want: int) -> None:
        deadline = time.monotonic() + PICKUP_DEADLINE_S
        pending = [one, other]
        while pending:
            pending = [g for g in pending if (await g.client.get(
                "/v1/tokens", headers=bearer(made["token"]))).status != want]
            if pending:
                assert time.monotonic() < deadline, f"still not {want}"
                await asyncio.sleep(0.02)

    await refused_everywhere(200)
    await one.req("DELETE", f"/v1/tokens/{made['id']}", status=204)
    await refused_everywhere(401)


async def test_an_acl_user_without_the_channels_still_changes_tokens(
        tmp_path: Path, aiohttp_client: Any, clock: ManualClock,
        caplog: pytest.LogCaptureFixture) -> None:
    # Redis 7 gives a new ACL user no pub/sub channel unless told: the functions' PUBLISH
    # fails quietly (the change is made; the workers' recheck finds it) and the listener
    # says why it cannot listen, once (and asks again only every 10 s).
    password = secrets.token_hex(16)
    with RedisServer(tmp_path / "acl", name="acl-redis") as server:
        with redis_py.Redis.from_url(server.url) as admin:
            admin.acl_setuser("gateway", enabled=True, passwords=[f"+{password}"],
                              keys=["*"], commands=["+@all"], reset_channels=True)
            admin.acl_setuser("default", enabled=False)
        url = f"redis://gateway:{password}@127.0.0.1:{server.port}/0"
        gw = await start_gateway(aiohttp_client, clock, url)
        listener = gw.client.app[CHANGES]
        deadline = time.monotonic() + PICKUP_DEADLINE_S
        while listener.failures < 1:
            assert time.monotonic() < deadline, "the listener did not try"
            await asyncio.sleep(0.01)
        made = await create(gw, {"role": "operator"})
        ok = await gw.client.get("/v1/tokens", headers=bearer(made["token"]))
        assert ok.status == 200
        await gw.req("DELETE", f"/v1/tokens/{made['id']}", status=204)
        refused = await gw.client.get("/v1/tokens", headers=bearer(made["token"]))
        assert refused.status == 401
        lost = [r.getMessage() for r in caplog.records if r.name == "gateway.redis.changes"]
        assert len(lost) == 1 and "NOPERM" in lost[0], lost


def get_calls(r: redis_py.Redis) -> int:
    stats = cast(dict[str, Any], r.info("commandstats"))
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def test_an_idle_worker_reads_the_versions_only_at_its_recheck(
        own_redis: RedisServer, aiohttp_client: Any, clock: ManualClock) -> None:
    # The gate of the push against a return of the poll: over an idle period, the versions
    # are read at most at one recheck (two GETs) — a poll every 0.25 s would read them 16
    # times in the same 2 s.
    gw = await start_gateway(aiohttp_client, clock, own_redis.url)
    await until_listening(gw)
    with redis_py.Redis.from_url(own_redis.url) as r:
        before = get_calls(r)
        await asyncio.sleep(2.0)  # the idle period measured, not a synchronisation
        assert get_calls(r) - before <= 2 * (1 + int(2.0 // TOKEN_RECHECK_SECONDS))
