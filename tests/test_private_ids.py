"""Ids made only of dots ("." "..", "...") are refused with a 400 naming the id, on the raw
wire as a client or a proxy would send them, fast-path call routes included (issue 12 §9).

A tenant ``..`` could be created through ``PUT /v1/tenants/%2e%2e`` and then not be
addressed by clients and proxies, which rewrite dot segments. test_validation.py runs the
same ids (escaped and not) on every route through a client; these send the bytes
themselves, so that nothing between the test and the server rewrites the target.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from gateway.config import PACKAGE_CONFIG_DIR, load_settings
from gateway.errors import ConfigError
from gateway.redis.keys import tenant_keys
from gateway.validate import CALL_ID_RE, ID_RE
from tests.support.gwclient import AUTH, Gateway

AUTHORIZE = {"call_id": "c1", "user_id": "u", "to": "+12125550123"}


async def send_raw(port: int, method: str, target: bytes, body: Mapping[str, object]
                   ) -> tuple[int, dict[str, Any]]:
    """One request written byte for byte; (status, JSON body) of its answer."""
    data = orjson.dumps(body)
    head = (f"{method} ".encode() + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split(b" ")[1]), orjson.loads(payload)


def named(doc: Mapping[str, Any]) -> list[object]:
    errors = doc.get("errors")
    assert isinstance(errors, list), doc
    return [e["field"] for e in errors]


@pytest.mark.parametrize("tenant", [b"%2e%2e", b"..", b"%2e", b".", b"...", b"%2E%2E%2E"])
async def test_dot_tenant_on_the_call_routes_is_a_400(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis, tenant: bytes
) -> None:
    port = gw.client.server.port
    routes: list[tuple[str, bytes, Mapping[str, object]]] = [
        ("POST", b"/v1/tenants/" + tenant + b"/calls", AUTHORIZE),
        ("POST", b"/v1/tenants/" + tenant + b"/calls/c1/extend", {"used_seconds": 1}),
        ("POST", b"/v1/tenants/" + tenant + b"/calls/c1/end", {"duration_seconds": 1}),
        ("PUT", b"/v1/tenants/" + tenant, {"name": "dots"}),
    ]
    for method, target, body in routes:
        status, doc = await send_raw(port, method, target, body)
        assert (status, named(doc)) == (400, ["tenant_id"]), (target, doc)
    for dots in (".", "..", "..."):
        k = tenant_keys(dots, gw.settings.partitions)
        assert not redis_sync.exists(k.tenant), dots  # no tenant of dots was created


@pytest.mark.parametrize("call_id", [b"%2e%2e", b"...", b"%2e"])
async def test_dot_call_id_on_the_call_routes_is_a_400(
    gw: Gateway, tenant_id: str, call_id: bytes
) -> None:
    await gw.tenant(tenant_id)
    port = gw.client.server.port
    base = f"/v1/tenants/{tenant_id}/calls/".encode()
    for op, body in ((b"extend", {"used_seconds": 1}), (b"end", {"duration_seconds": 1})):
        status, doc = await send_raw(port, "POST", base + call_id + b"/" + op, body)
        assert (status, named(doc)) == (400, ["call_id"]), (op, doc)


async def test_dot_ids_in_bodies_are_a_400(gw: Gateway, tenant_id: str) -> None:
    """The same rule for the ids a body carries (authorize's call_id and user_id)."""
    await gw.tenant(tenant_id)
    port = gw.client.server.port
    target = f"/v1/tenants/{tenant_id}/calls".encode()
    for name in ("call_id", "user_id"):
        status, doc = await send_raw(port, "POST", target, {**AUTHORIZE, name: ".."})
        assert (status, named(doc)) == (400, [name]), doc


def test_the_id_patterns_refuse_only_dot_only_ids() -> None:
    for pattern in (ID_RE, CALL_ID_RE):
        for bad in (".", "..", "...", "." * 64):
            assert pattern.fullmatch(bad) is None, bad
        for good in ("a.", ".a", "..a", "a..b", "-", "_", "...-", "0"):
            assert pattern.fullmatch(good) is not None, good


def test_a_configured_tenant_of_dots_is_refused(tmp_path: Path) -> None:
    text = ('[rate_decks]\nUSD = "rates/USD.csv"\n[demo_tenant]\nid = ".."\nname = "d"\n'
            'currency = "USD"\ntimezone = "UTC"\n')
    (tmp_path / "rates").mkdir()
    (tmp_path / "rates" / "USD.csv").write_bytes(
        (PACKAGE_CONFIG_DIR / "rates" / "USD.csv").read_bytes())
    path = tmp_path / "callgate.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="only dots") as info:
        load_settings(env={}, path=path)
    assert info.value.key == "demo_tenant.id"
