"""Tokens and roles (api.md "Conventions"): the whole endpoint x credential matrix.

Credentials: no header, malformed headers, an unknown token (401); tokens from the
configuration (SHA-256 only) with their role and tenant list; the bootstrap operator token
of the environment. For every route of the app and every credential the answer is:

* 401 without a valid token, whatever the route;
* 403 for a valid token whose role the route does not admit;
* for a tenant-scoped route, 404 on another tenant's path, byte for byte the answer for a
  tenant that does not exist; never 401/403/404-tenant on the token's own tenant.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.config import TokenEntry
from gateway.http.app import ROUTES, create_app
from gateway.http.auth import Authenticator, token_sha256
from gateway.redis.server import RedisServer
from tests.support.gateway import make_settings, start_gateway
from tests.support.gwclient import AUTH, OPERATOR_TOKEN, Gateway

ALL_ROUTES = ROUTES

SWITCH_TOKEN = "cg_switch_" + secrets.token_urlsafe(16)
ADMIN_TOKEN = "cg_admin_" + secrets.token_urlsafe(16)
OPERATOR_CFG_TOKEN = "cg_operator_" + secrets.token_urlsafe(16)
MULTI_ADMIN_TOKEN = "cg_multi_" + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class Cred:
    name: str
    header: str | None  # the Authorization header; None: no header at all
    role: str | None  # None: not a valid credential
    tenants: tuple[str, ...] | None = None  # None: every tenant


def creds(own: str, second: str) -> list[Cred]:
    return [
        Cred("none", None, None),
        Cred("empty", "", None),
        Cred("bearer-no-token", "Bearer", None),
        Cred("bearer-blank", "Bearer   ", None),
        Cred("basic-scheme", f"Basic {OPERATOR_TOKEN}", None),
        Cred("token-no-scheme", OPERATOR_TOKEN, None),
        Cred("unknown-token", "Bearer cg_" + secrets.token_urlsafe(32), None),
        Cred("hash-as-token", f"Bearer {token_sha256(ADMIN_TOKEN)}", None),
        Cred("token-prefix", f"Bearer {ADMIN_TOKEN[:-1]}", None),
        Cred("switch", f"Bearer {SWITCH_TOKEN}", "switch", (own,)),
        Cred("admin", f"Bearer {ADMIN_TOKEN}", "admin", (own,)),
        Cred("admin-lowercase-scheme", f"bearer {ADMIN_TOKEN}", "admin", (own,)),
        Cred("admin-two-tenants", f"Bearer {MULTI_ADMIN_TOKEN}", "admin", (own, second)),
        Cred("operator-config", f"Bearer {OPERATOR_CFG_TOKEN}", "operator"),
        Cred("operator-bootstrap", f"Bearer {OPERATOR_TOKEN}", "operator"),
    ]


def token_entries(own: str, second: str) -> tuple[TokenEntry, ...]:
    return (
        TokenEntry("sw-1", token_sha256(SWITCH_TOKEN), "switch", (own,)),
        TokenEntry("adm-1", token_sha256(ADMIN_TOKEN).upper(), "admin", (own,)),  # any case
        TokenEntry("adm-2", token_sha256(MULTI_ADMIN_TOKEN), "admin", (own, second)),
        TokenEntry("op-1", token_sha256(OPERATOR_CFG_TOKEN), "operator", ()),
    )


@dataclass
class World:
    gw: Gateway
    own: str  # the scoped tokens' tenant
    second: str  # also the two-tenant admin's
    other: str  # exists, belongs to no scoped token
    missing: str  # does not exist


@pytest.fixture
async def world(redis_server: RedisServer, aiohttp_client: Any, clock: Any) -> AsyncIterator[World]:
    suffix = secrets.token_hex(4)
    own, second, other = f"own-{suffix}", f"second-{suffix}", f"other-{suffix}"
    gw = await start_gateway(aiohttp_client, clock, redis_server.url,
                             tokens=token_entries(own, second))
    for t in (own, second, other):
        await gw.req("PUT", f"/v1/tenants/{t}", {"name": t}, status=201)
        await gw.req("PUT", f"/v1/tenants/{t}/users/alice", {"country": "US", "plan": "domestic"},
                     status=201)
    yield World(gw, own, second, other, f"missing-{suffix}")


BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/tenants/{tenant_id}/calls"): {"call_id": "c1", "user_id": "alice",
                                                  "to": "+12125550123"},
    ("POST", "/v1/tenants/{tenant_id}/calls/{call_id}/extend"): {"used_seconds": 10},
    ("POST", "/v1/tenants/{tenant_id}/calls/{call_id}/end"): {"duration_seconds": 10},
    ("PUT", "/v1/tenants/{tenant_id}"): {"name": "x"},
    ("PUT", "/v1/tenants/{tenant_id}/users/{user_id}"): {"country": "US", "plan": "domestic"},
    ("POST", "/v1/tenants/{tenant_id}/credits/topups"): {"amount": "1.00",
                                                         "idempotency_key": "k1"},
    ("POST", "/v1/tokens"): {"role": "switch", "tenants": ["matrix"]},
    ("POST", "/v1/tenants/{tenant_id}/tokens"): {"description": "matrix"},
    ("PUT", "/v1/tenants/{tenant_id}/alerts"): {"low_balance": "1.00"},
    # A public address literal: valid without DNS (nothing is sent at registration).
    ("PUT", "/v1/tenants/{tenant_id}/webhooks/{webhook_id}"): {
        "url": "https://93.184.216.34/hook", "secret": "x" * 32},
}
DECK_CSV = (b"prefix,description,kind,rate_per_minute,connection_fee,initial_increment,"
            b"subsequent_increment\n1,North America,outbound,0.01,,60,60\n")


def fill(path: str, tenant: str) -> str:
    return (path.replace("{tenant_id}", tenant).replace("{call_id}", "c1")
            .replace("{user_id}", "alice").replace("{e164}", "+18005550199")
            .replace("{currency}", "XTA").replace("{token_id}", "tok_0000000000000000")
            .replace("{webhook_id}", "w1"))


async def send(gw: Gateway, method: str, route: str, tenant: str,
               header: str | None) -> tuple[int, str, bytes]:
    headers = {} if header is None else {"Authorization": header}
    kwargs: dict[str, Any] = {"headers": headers}
    if route.startswith("/v1/rate-decks"):
        kwargs["data"] = DECK_CSV
        headers["Content-Type"] = "text/csv"
    elif (method, route) in BODIES:
        kwargs["json"] = BODIES[(method, route)]
    path = fill(route, tenant)
    if route.endswith("/lookup"):
        path += "?number=%2B12125550123"
    resp = await gw.client.request(method, path, **kwargs)
    return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


def _allowed(cred: Cred, roles: Sequence[str]) -> bool:
    return cred.role == "operator" or cred.role in roles


def test_matrix_covers_every_route_of_the_app(redis_server: RedisServer) -> None:
    app = create_app(make_settings(redis_server.url))
    registered = {(r.method, r.resource.canonical) for r in app.router.routes()
                  if r.resource is not None and r.resource.canonical.startswith("/v1/")}
    assert registered == {(m, p) for m, p, _h, _r in ALL_ROUTES}


@pytest.mark.parametrize("cred_name", [c.name for c in creds("a", "b")])
async def test_role_matrix(world: World, cred_name: str) -> None:
    cred = next(c for c in creds(world.own, world.second) if c.name == cred_name)
    for method, route, _handler, roles in ALL_ROUTES:
        scoped = "{tenant_id}" in route
        tenants = [world.own, world.second, world.other] if scoped else ["-"]
        for tenant in tenants:
            status, ctype, body = await send(world.gw, method, route, tenant, cred.header)
            where = f"{cred.name} {method} {fill(route, tenant)}: {status} {body[:200]!r}"
            if cred.role is None:
                assert status == 401, where
                assert ctype == "application/problem+json", where
                continue
            if not _allowed(cred, roles):
                assert status == 403, where
                assert ctype == "application/problem+json", where
                continue
            assert status not in (401, 403), where
            mine = not scoped or cred.tenants is None or tenant in cred.tenants
            if mine:
                assert b"tenant-not-found" not in body, where
                continue
            # Another tenant's path: exactly what a missing tenant answers (to an operator).
            missing = await send(world.gw, method, route, world.missing,
                                 f"Bearer {OPERATOR_TOKEN}")
            assert (status, ctype, body) == missing, f"{where} vs missing {missing}"
            assert status == 404, where


async def test_other_tenant_is_indistinguishable_from_missing_tenant(world: World) -> None:
    """The same answer for the scoped admin on another tenant, and on a missing one."""
    admin = f"Bearer {ADMIN_TOKEN}"
    for path in ("/v1/tenants/{t}", "/v1/tenants/{t}/users/alice", "/v1/tenants/{t}/credits",
                 "/v1/tenants/{t}/audit"):
        other = await send(world.gw, "GET", path.format(t=world.other), world.other, admin)
        gone = await send(world.gw, "GET", path.format(t=world.missing), world.missing, admin)
        op_gone = await send(world.gw, "GET", path.format(t=world.missing), world.missing,
                             f"Bearer {OPERATOR_TOKEN}")
        assert other[0] == 404 and other == gone == op_gone, (other, gone, op_gone)


async def test_tokens_are_compared_by_sha256_only() -> None:
    entry = TokenEntry("adm", token_sha256(ADMIN_TOKEN), "admin", ("t1",))
    auth = Authenticator(None, [entry])
    principal = auth.authenticate(f"Bearer {ADMIN_TOKEN}")
    assert principal is not None and principal.token_id == "adm"
    assert principal.tenants == frozenset({"t1"})
    assert auth.authenticate(f"Bearer {token_sha256(ADMIN_TOKEN)}") is None
    assert auth.authenticate(f"Bearer {OPERATOR_TOKEN}") is None  # no bootstrap configured
    # Nothing in the authenticator holds the clear token.
    assert ADMIN_TOKEN not in repr(vars(auth)) if hasattr(auth, "__dict__") else True


async def test_bootstrap_token_is_an_operator(world: World) -> None:
    body = await world.gw.req("GET", f"/v1/tenants/{world.other}", headers=AUTH)
    assert body["name"] == world.other


# -- `callgate token create` -------------------------------------------------------------------


def _config_copy(tmp_path: Any) -> Any:
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parent.parent / "config"
    dst = tmp_path / "config"
    shutil.copytree(src, dst)
    return dst / "callgate.toml"


def test_token_create_writes_a_valid_entry(tmp_path: Any, capsys: Any) -> None:
    from gateway.cli.main import main
    from gateway.config import load_settings

    config = _config_copy(tmp_path)
    before = config.read_text()
    assert main(["token", "create", "--role", "switch", "--tenant", "t1", "--tenant", "t2",
                 "--id", "pbx-1", "--write", str(config)]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("cg_") and len(token) > 40
    text = config.read_text()
    assert text.startswith(before) and token not in text  # only its SHA-256 is stored
    settings = load_settings(env={}, path=config)
    entry = next(t for t in settings.tokens if t.id == "pbx-1")
    assert (entry.role, entry.tenants, entry.sha256) == ("switch", ("t1", "t2"),
                                                         token_sha256(token))
    principal = Authenticator(None, settings.tokens).authenticate(f"Bearer {token}")
    assert principal is not None and principal.tenants == frozenset({"t1", "t2"})
    # The same id again is refused and leaves the file as it was.
    assert main(["token", "create", "--role", "admin", "--tenant", "t1", "--id", "pbx-1",
                 "--write", str(config)]) == 2
    assert config.read_text() == text


def test_token_create_prints_the_entry_without_write(capsys: Any) -> None:
    from gateway.cli.main import main

    assert main(["token", "create", "--role", "operator", "--id", "ops"]) == 0
    out, err = capsys.readouterr()
    token = err.split("store it now): ")[1].strip()
    assert f'sha256 = "{token_sha256(token)}"' in out and token not in out
    assert 'role = "operator"' in out


@pytest.mark.parametrize("argv", [
    ["--role", "switch"],  # a scoped token needs tenants
    ["--role", "operator", "--tenant", "t1"],  # operators act for all
    ["--role", "admin", "--tenant", "bad id"],
])
def test_token_create_refuses_bad_arguments(argv: list[str], capsys: Any) -> None:
    from gateway.cli.main import main

    assert main(["token", "create", *argv]) == 2
    assert "callgate token create:" in capsys.readouterr().err
