"""Webhooks CRUD (api.md, Notifications): secrets never shown again nor recorded; private
destinations refused unless the operator allows them."""

from __future__ import annotations

from typing import Any, cast

import pytest
import redis

from gateway.notify.webhooks import address_refusal, signature, verify
from gateway.redis.keys import tenant_keys
from gateway.redis.server import RedisServer
from gateway.vocab import ALERT_EVENTS
from tests.support.gateway import start_gateway
from tests.support.gwclient import Gateway

SECRET = "s3cr3t-" + "x" * 30


@pytest.fixture
async def gw_private(redis_server: RedisServer, aiohttp_client: Any, clock: Any) -> Gateway:
    return await start_gateway(aiohttp_client, clock, redis_server.url,
                               webhook_allow_private=True)


def hook(url: str = "http://127.0.0.1:9/hook", **fields: Any) -> dict[str, Any]:
    return {"url": url, "secret": SECRET, **fields}


async def test_crud_never_shows_the_secret(gw_private: Gateway, tenant_id: str,
                                           redis_sync: redis.Redis) -> None:
    gw, t = gw_private, tenant_id
    await gw.tenant(t)
    w = f"/v1/tenants/{t}/webhooks/billing"
    created = await gw.req("PUT", w, hook(events=["credits.low_balance"]), status=201)
    assert created["webhook_id"] == "billing"
    assert created["events"] == ["credits.low_balance"] and created["enabled"] is True
    assert "secret" not in created
    assert await gw.req("GET", w) == created
    # An update may leave the secret out: the current one is kept.
    updated = await gw.req("PUT", w, {"url": "http://127.0.0.1:9/other", "enabled": False})
    assert updated["url"] == "http://127.0.0.1:9/other" and updated["enabled"] is False
    assert updated["events"] == list(ALERT_EVENTS)  # all, by default
    k = tenant_keys(t, gw.settings.partitions)
    assert SECRET.encode() in cast(bytes, redis_sync.hget(k.webhooks, "billing"))
    # Nowhere else: not in the audit trail, not on the stream for the ledger.
    for raw in cast(list[bytes], redis_sync.lrange(k.audit, 0, -1)):
        assert SECRET.encode() not in raw
    for _id, f in cast(list[Any], redis_sync.xrange(k.partition.events)):
        assert SECRET.encode() not in f[b"data"]
    audit = await gw.req("GET", f"/v1/tenants/{t}/audit")
    assert [e["action"] for e in audit["entries"][:2]] == ["webhook.updated", "webhook.created"]
    assert await gw.req("GET", f"{w}/deliveries") == {"deliveries": []}
    await gw.req("DELETE", w, status=204)
    await gw.req("GET", w, status=404)
    await gw.req("DELETE", w, status=404)
    await gw.req("GET", f"{w}/deliveries", status=404)


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "http://127.0.0.1:9/"}, "secret"),  # required when creating
    (hook(secret="short"), "secret"),
    (hook(events=[]), "events"),
    (hook(events=["call.allowed"]), "events[0]"),
    (hook(url="ftp://127.0.0.1/"), "url"),
    (hook(url="http://user:pw@127.0.0.1/"), "url"),
    (hook(enabled="yes"), "enabled"),
    (hook(colour="red"), "colour"),
])
async def test_bad_webhooks_name_the_field(gw_private: Gateway, tenant_id: str,
                                           body: dict[str, Any], field: str) -> None:
    await gw_private.tenant(tenant_id)
    problem = await gw_private.req("PUT", f"/v1/tenants/{tenant_id}/webhooks/w", body,
                                   status=400)
    assert field in [e["field"] for e in problem["errors"]]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/",
    "https://192.168.0.10/", "http://172.16.5.4/", "http://169.254.169.254/latest/",
    "http://[::1]/", "http://[fd00::1]/", "http://0.0.0.0/", "http://100.64.0.1/",
    "http://[::ffff:127.0.0.1]/",
])
async def test_private_destinations_refused_unless_allowed(
        gw: Gateway, gw_private: Gateway, tenant_id: str, url: str) -> None:
    await gw.tenant(tenant_id)
    problem = await gw.req("PUT", f"/v1/tenants/{tenant_id}/webhooks/w", hook(url),
                           status=400)
    assert problem["errors"][0]["field"] == "url"
    await gw_private.req("PUT", f"/v1/tenants/{tenant_id}/webhooks/w", hook(url), status=201)


def test_address_rules() -> None:
    assert address_refusal("8.8.8.8") is None
    assert address_refusal("2001:4860:4860::8888") is None
    assert address_refusal("127.0.0.2") is not None
    assert address_refusal("::ffff:10.0.0.1") is not None


def test_signature_verifies_and_detects_tampering() -> None:
    body = b'{"id":"evt_1"}'
    header = signature(SECRET, 1_795_773_600, body)
    assert header.startswith("t=1795773600,v1=")
    assert verify(SECRET, header, body)
    assert not verify(SECRET, header, body + b" ")
    assert not verify("another-secret-of-32-characters!!", header, body)
    assert not verify(SECRET, header.replace("t=1795773600", "t=1795773601"), body)
