"""Run-time tokens across two `callgate serve` processes sharing one redis-server: made on
one, used on both, revoked on one, refused (401) by both within the pickup period; the
same through `callgate token create|list|revoke`; a short expires_at; and no secret in any
log line of the gateways or of the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from gateway.http.auth import token_sha256
from gateway.redis.server import RedisServer
from gateway.rules.clock import rfc3339
from tests.test_serve import free_port
from tests.test_tokens import PICKUP_DEADLINE_S, TOKEN_RE

OPERATOR = "serve-tokens-operator-" + os.urandom(16).hex()
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
TENANT = "tk"


@dataclass
class Gw:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path


def _env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "CALLGATE_REDIS_URL": redis_url, "CALLGATE_OPERATOR_TOKEN": OPERATOR,
           "CALLGATE_DATA_DIR": str(tmp_path / "var"), "CALLGATE_LOG_LEVEL": "DEBUG",
           "CALLGATE_PERSIST": "0", "CALLGATE_WORKERS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def _start(env: dict[str, str], log: Path) -> Gw:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return Gw(proc, base, log)
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "serve did not start"
        time.sleep(0.05)


@pytest.fixture
def two(own_redis: RedisServer, tmp_path: Path) -> Iterator[tuple[Gw, Gw, dict[str, str]]]:
    env = _env(own_redis.url, tmp_path)
    gws: list[Gw] = []
    try:
        for name in ("a", "b"):
            gws.append(_start(env, tmp_path / f"gw-{name}.log"))
        yield gws[0], gws[1], env
    finally:
        for gw in gws:
            gw.proc.send_signal(signal.SIGTERM)
        for gw in gws:
            try:
                gw.proc.wait(15)
            except subprocess.TimeoutExpired:
                gw.proc.kill()
                gw.proc.wait()


def call_status(gw: Gw, token: str) -> int:
    body = {"call_id": "c-" + os.urandom(6).hex(), "user_id": "alice", "to": "+12125550123"}
    return requests.post(f"{gw.base}/v1/tenants/{TENANT}/calls", json=body, timeout=5,
                         headers={"Authorization": f"Bearer {token}"}).status_code


def wait_all(gws: tuple[Gw, ...], token: str, want: int, deadline_s: float) -> float:
    """Poll every gateway until each answers `want`; the seconds it took."""
    t0 = time.monotonic()
    pending = list(gws)
    while pending:
        pending = [g for g in pending if call_status(g, token) != want]
        if pending:
            assert time.monotonic() - t0 < deadline_s, \
                f"{[g.base for g in pending]} still not {want} after {deadline_s} s"
            time.sleep(0.01)
    return time.monotonic() - t0


def api(gw: Gw, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    resp = requests.request(method, gw.base + path, json=body, headers=AUTH, timeout=10)
    assert resp.status_code == status, (method, path, resp.status_code, resp.text)
    return resp.json() if resp.content else None


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "token", *argv], env=env,
                          capture_output=True, text=True, timeout=60)


def test_token_lifecycle_on_two_workers_api_and_cli(two: tuple[Gw, Gw, dict[str, str]]
                                                    ) -> None:
    a, b, env = two
    api(a, "PUT", f"/v1/tenants/{TENANT}", {"name": TENANT}, status=201)
    api(a, "PUT", f"/v1/tenants/{TENANT}/users/alice", {"country": "US", "plan": "domestic"},
        status=201)
    made_secrets: list[str] = []
    outputs: list[str] = []

    # Through the API: made on a, used on both, revoked on b, refused by both.
    made = api(a, "POST", "/v1/tokens", {"role": "switch", "tenants": [TENANT],
                                         "description": "sbc-1"}, status=201)
    token = made["token"]
    made_secrets.append(token)
    assert call_status(a, token) == 200
    wait_all((a, b), token, 200, PICKUP_DEADLINE_S)
    listed = requests.get(f"{b.base}/v1/tokens", headers=AUTH, timeout=5).text
    outputs.append(listed)
    assert made["id"] in listed
    api(b, "DELETE", f"/v1/tokens/{made['id']}", status=204)
    assert call_status(b, token) == 401
    api_pickup = wait_all((a, b), token, 401, PICKUP_DEADLINE_S)

    # Through the CLI, straight to Redis: both gateways pick the token up, then its end.
    created = cli(env, "create", "--role", "switch", "--tenant", TENANT,
                  "--description", "sbc-2")
    assert created.returncode == 0, created.stderr
    answer = orjson.loads(created.stdout)
    assert TOKEN_RE.fullmatch(answer["token"]) and answer["tenants"] == [TENANT]
    made_secrets.append(answer["token"])
    outputs.append(created.stderr)
    wait_all((a, b), answer["token"], 200, PICKUP_DEADLINE_S)
    listing = cli(env, "list", "--tenant", TENANT)
    assert listing.returncode == 0, listing.stderr
    outputs += [listing.stdout, listing.stderr]
    rows = {t["id"]: t for t in orjson.loads(listing.stdout)["tokens"]}
    assert set(rows) == {answer["id"]}  # the revoked one is gone
    assert rows[answer["id"]]["description"] == "sbc-2" and "token" not in rows[answer["id"]]
    revoked = cli(env, "revoke", answer["id"])
    assert revoked.returncode == 0, revoked.stderr
    outputs.append(revoked.stdout + revoked.stderr)
    cli_pickup = wait_all((a, b), answer["token"], 401, PICKUP_DEADLINE_S)
    again = cli(env, "revoke", answer["id"])
    assert again.returncode == 1 and "no token" in again.stderr

    # A short expires_at: valid at first, then refused by both workers on their own clocks.
    expires = int(time.time()) + 4
    short = api(a, "POST", "/v1/tokens", {"role": "switch", "tenants": [TENANT],
                                          "expires_at": rfc3339(expires)}, status=201)
    made_secrets.append(short["token"])
    assert call_status(a, short["token"]) == 200
    wait_all((a, b), short["token"], 401, expires - time.time() + PICKUP_DEADLINE_S)
    assert time.time() >= expires - 1  # refused because it expired, not before

    print(f"pickup of a revocation on both workers: API {api_pickup:.3f} s, "
          f"CLI {cli_pickup:.3f} s")
    # No secret (nor its hash) in any log line of either gateway or of the CLI's output
    # other than the create answer itself.
    for gw in (a, b):
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(15)
    logs = a.log.read_text() + b.log.read_text()
    assert "token tok_" in logs  # the gateways did log the changes, by id
    for secret in made_secrets:
        assert secret not in logs and token_sha256(secret) not in logs
        for text in outputs:
            assert secret not in text


def test_cli_refuses_bad_arguments_for_redis_tokens(own_redis: RedisServer,
                                                    tmp_path: Path) -> None:
    env = _env(own_redis.url, tmp_path)
    for argv, option in ((["--role", "switch"], "--tenant"),
                         (["--role", "switch", "--tenant", "t",
                           "--expires-at", "2001-01-01T00:00:00Z"], "--expires-at"),
                         (["--role", "switch", "--tenant", "t", "--id", "mine"], "--id"),
                         (["--role", "operator", "--tenant", "t"], "--tenant")):
        out = cli(env, "create", *argv)
        assert out.returncode == 2 and option in out.stderr, (argv, out.stderr)
        assert out.stdout == ""
    no_redis = {k: v for k, v in env.items() if k != "CALLGATE_REDIS_URL"}
    for argv in (["list"], ["revoke", "tok_0000000000000000"]):
        out = cli(no_redis, *argv)
        assert out.returncode != 0 and "CALLGATE_REDIS_URL" in out.stderr


def test_cli_on_a_redis_no_gateway_has_used(own_redis: RedisServer,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI loads the function library itself; the token is usable by the next gateway."""
    from gateway.cli.main import main
    from gateway.http.auth import Authenticator
    from gateway.http.tokens import TokenTable
    from gateway.redis.store import Store

    monkeypatch.setenv("CALLGATE_REDIS_URL", own_redis.url)
    assert main(["token", "create", "--role", "admin", "--tenant", "x", "--tenant", "y"]) == 0
    answer = orjson.loads(capsys.readouterr().out)
    assert (answer["role"], answer["tenants"]) == ("admin", ["x", "y"])

    async def principal_of(token: str) -> Any:
        auth = Authenticator(None, [])
        store = Store.from_url(own_redis.url, 64)
        try:
            await TokenTable(auth).refresh(store)
        finally:
            await store.close()
        return auth.authenticate(f"Bearer {token}")

    p = asyncio.run(principal_of(answer["token"]))
    assert p is not None and (p.token_id, p.tenants) == (answer["id"], frozenset({"x", "y"}))
    assert main(["token", "list"]) == 0
    listed = capsys.readouterr().out
    assert answer["id"] in listed and answer["token"] not in listed
    assert main(["token", "revoke", answer["id"]]) == 0
    assert main(["token", "list"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"tokens": []}
    assert asyncio.run(principal_of(answer["token"])) is None
