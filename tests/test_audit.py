"""Audit trail: every admin or operator change says who (token id), what and when.

GET /v1/tenants/{t}/audit answers the tenant's changes newest first, paginated; tokens never
appear in it, nor in the events and the audit list in Redis.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis

from gateway.config import TokenEntry
from gateway.http.auth import token_sha256
from gateway.redis.keys import AUDIT_MAX_ENTRIES, tenant_keys
from gateway.redis.server import RedisServer
from gateway.rules.clock import rfc3339
from tests.support.gateway import T0, start_gateway
from tests.support.gwclient import OPERATOR_TOKEN, Gateway

ADMIN_TOKEN = "cg_audit_admin_" + secrets.token_urlsafe(16)
SWITCH_TOKEN = "cg_audit_switch_" + secrets.token_urlsafe(16)


@pytest.fixture
async def gw(redis_server: RedisServer, aiohttp_client: Any, clock: Any,
             tenant_id: str) -> AsyncIterator[Gateway]:
    tokens = (TokenEntry("acme-admin", token_sha256(ADMIN_TOKEN), "admin", (tenant_id,)),
              TokenEntry("acme-pbx", token_sha256(SWITCH_TOKEN), "switch", (tenant_id,)))
    yield await start_gateway(aiohttp_client, clock, redis_server.url, tokens=tokens)


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def audit(gw: Gateway, t: str, query: str = "", headers: dict[str, str] | None = None,
                status: int = 200) -> Any:
    return await gw.req("GET", f"/v1/tenants/{t}/audit{query}", headers=headers, status=status)


async def test_every_admin_change_is_recorded_with_who_what_when(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis, redis_server: RedisServer
) -> None:
    t = tenant_id
    await gw.tenant(t)  # bootstrap operator
    gw.clock.advance(10)
    await gw.req("PUT", f"/v1/tenants/{t}/users/alice", {"country": "US", "plan": "domestic",
                 "numbers": ["+12125550111"]}, headers=ADMIN, status=201)
    await gw.req("PUT", f"/v1/tenants/{t}/users/alice", {"country": "US", "plan": "none"},
                 headers=ADMIN)
    await gw.req("POST", f"/v1/tenants/{t}/credits/topups",
                 {"amount": "12.50", "idempotency_key": "k1"}, headers=ADMIN)
    # A replayed top-up changes nothing, so it records nothing.
    await gw.req("POST", f"/v1/tenants/{t}/credits/topups",
                 {"amount": "12.50", "idempotency_key": "k1"}, headers=ADMIN)
    await gw.req("PUT", f"/v1/tenants/{t}/toll-free-numbers/+18005550199", headers=ADMIN,
                 status=201)
    await gw.req("DELETE", f"/v1/tenants/{t}/toll-free-numbers/+18005550199", headers=ADMIN,
                 status=204)
    await gw.req("DELETE", f"/v1/tenants/{t}/users/alice", headers=ADMIN, status=204)
    await gw.req("PUT", f"/v1/tenants/{t}", {"name": "Acme Ltd"})
    # Call control is not an admin change: not in the audit trail.
    await gw.req("POST", f"/v1/tenants/{t}/calls", {"call_id": "c1", "user_id": "nobody",
                 "to": "+12125550123"}, headers={"Authorization": f"Bearer {SWITCH_TOKEN}"})

    body = await audit(gw, t, headers=ADMIN)
    entries = body["entries"]
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("tenant.updated", "bootstrap"),
        ("user.deleted", "acme-admin"),
        ("tollfree.removed", "acme-admin"),
        ("tollfree.added", "acme-admin"),
        ("credits.topped_up", "acme-admin"),
        ("user.updated", "acme-admin"),
        ("user.created", "acme-admin"),
        ("tenant.created", "bootstrap"),
    ]
    assert body["next_cursor"] is None
    assert entries[-1]["at"] == rfc3339(T0) and entries[0]["at"] == rfc3339(T0 + 10)
    assert entries[-1]["details"]["name"] == t and entries[0]["details"]["name"] == "Acme Ltd"
    assert entries[4]["details"]["amount_micro"] == 12_500_000
    assert entries[6]["details"]["record"]["numbers"] == ["+12125550111"]
    assert entries[2]["details"]["number"] == "+18005550199"
    ids = [e["id"] for e in entries]
    assert len(set(ids)) == len(ids) and all("-" in i for i in ids)

    # No token anywhere: not in the answer, not in the events, not in the audit list.
    k = tenant_keys(t, gw.settings.partitions)
    stored = [str(x) for x in cast(list[Any], redis_sync.lrange(k.audit, 0, -1))]
    stored += [str(e) for e in cast(list[Any], redis_sync.xrange(k.partition.events))]
    for token in (ADMIN_TOKEN, SWITCH_TOKEN, OPERATOR_TOKEN):
        for text in (str(body), *stored):
            assert token not in text and token_sha256(token) not in text


async def test_pages_newest_first_without_repeats(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    for i in range(7):
        await gw.topup(t, "1.00", f"k{i}")
    seen: list[str] = []
    cursor = ""
    while True:
        page = await audit(gw, t, f"?limit=3{cursor}")
        assert len(page["entries"]) <= 3
        seen += [e["id"] for e in page["entries"]]
        if page["next_cursor"] is None:
            break
        # A change between pages neither repeats nor hides an older entry.
        await gw.topup(t, "1.00", f"late{len(seen)}")
        cursor = f"&cursor={page['next_cursor']}"
    assert len(seen) == 8 and len(set(seen)) == 8
    assert seen == sorted(seen, key=lambda i: tuple(map(int, i.split("-"))), reverse=True)


async def test_audit_roles_and_bad_queries(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await audit(gw, t, headers={"Authorization": f"Bearer {SWITCH_TOKEN}"}, status=403)
    await audit(gw, t, headers={}, status=401)
    for query, field in [("?limit=0", "limit"), ("?limit=201", "limit"), ("?limit=x", "limit"),
                         ("?cursor=abc", "cursor"), ("?cursor=1-", "cursor")]:
        doc = await audit(gw, t, query, status=400)
        assert doc["errors"][0]["field"] == field
    doc = await audit(gw, "no-such-tenant-" + secrets.token_hex(4), status=404)
    assert doc["type"].endswith("tenant-not-found")


async def test_audit_list_is_capped(gw: Gateway, tenant_id: str, redis_sync: redis.Redis) -> None:
    t = tenant_id
    await gw.tenant(t)
    k = tenant_keys(t, gw.settings.partitions)
    # Fill the list directly up to the cap, then one real change: the oldest goes.
    redis_sync.rpush(k.audit, *['{"id":"1-0","type":"old","ts":0,"actor":"x"}'] *
                     AUDIT_MAX_ENTRIES)
    await gw.topup(t, "1.00", "k")
    assert redis_sync.llen(k.audit) == AUDIT_MAX_ENTRIES
    first = (await audit(gw, t, "?limit=1"))["entries"][0]
    assert first["action"] == "credits.topped_up"
