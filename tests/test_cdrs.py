"""CDRs: GET /v1/tenants/{t}/cdrs (filters, cursor pagination) and `callgate export-cdrs`,
on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import csv
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from gateway.ledger import open_ledger
from gateway.ledger.persister import Persister
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock, rfc3339
from tests.support.gateway import T0, start_gateway
from tests.support.gwclient import Gateway
from tests.support.persist_helpers import drain

LONDON = "+442071838750"
PARTITIONS = 2
CALLS = 7


@pytest.fixture
async def cgw(own_redis: RedisServer, ledger_url: str, clock: ManualClock,
              aiohttp_client: Any) -> AsyncIterator[Gateway]:
    yield await start_gateway(aiohttp_client, clock, own_redis.url, partitions=PARTITIONS,
                              database_url=ledger_url)


async def persist_all(gw: Gateway) -> None:
    assert gw.settings.redis_url and gw.settings.database_url
    store = Store.from_url(gw.settings.redis_url, PARTITIONS)
    ledger = await open_ledger(gw.settings.database_url)
    try:
        await drain(Persister(store, ledger, consumer="t"))
    finally:
        await ledger.close()
        await store.close()


async def make_calls(gw: Gateway, t: str) -> None:
    await gw.tenant(t)
    await gw.user(t, "payg", "US", "pay_as_you_go")
    await gw.topup(t, "100.00", "k1")
    for i in range(CALLS):
        d = await gw.call(t, f"c{i}", LONDON, user="payg", **{"from": "+12125550000"})
        assert d["decision"] == "allow", d
        gw.clock.advance(60)
        await gw.end(t, f"c{i}", 30 + i)


async def test_cdrs_newest_first_paginated_and_filtered(cgw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await make_calls(cgw, t)
    await persist_all(cgw)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = f"?limit=3&cursor={cursor}" if cursor else "?limit=3"
        page = await cgw.req("GET", f"/v1/tenants/{t}/cdrs{q}")
        seen += page["cdrs"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [c["call_id"] for c in seen] == [f"c{i}" for i in reversed(range(CALLS))]
    c0 = seen[-1]
    assert (c0["direction"], c0["from"], c0["to"], c0["destination_class"]) == (
        "outbound", "+12125550000", LONDON, "international")
    assert (c0["duration_seconds"], c0["state"], c0["user_id"]) == (30, "ended", "payg")
    assert c0["started_at"] == rfc3339(T0) and c0["ended_at"] == rfc3339(T0 + 60)
    credits = await cgw.credits(t)
    charged = sum(int(c["credits_charged"].replace(".", "")) for c in seen)
    assert charged * 100 == 100_000_000 - int(credits["balance"].replace(".", "")) * 100

    q = f"?from={rfc3339(T0 + 120)}&to={rfc3339(T0 + 240)}"
    page = await cgw.req("GET", f"/v1/tenants/{t}/cdrs{q}".replace("+", "%2B"))
    assert [c["call_id"] for c in page["cdrs"]] == ["c2", "c1"]
    await cgw.req("GET", f"/v1/tenants/{t}/cdrs?cursor=zz", status=400)
    await cgw.req("GET", f"/v1/tenants/{t}/cdrs?from=yesterday", status=400)
    await cgw.req("GET", f"/v1/tenants/{t}/cdrs?limit=0", status=400)
    await cgw.req("GET", f"/v1/tenants/{t}/cdrs", headers={}, status=401)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Cursors that decode but that no page ever returned. The first is the report's: its
# integer raised OverflowError inside SQLite (a 500); NUL is text PostgreSQL refuses.
BAD_CURSORS = [b64(b"99999999999999999999999/x"), b64(b"9223372036854775808/x"),
               b64(b"-1/x"), b64(b"12/x\x00y"), b64(b"12/"), b64(b"12/a b"),
               b64("12/\u00e9".encode()), b64(b"\xff\xfe/x"), b64(b"1e3/x"),
               b64(b"\xd9\xa3/x"), "%", "a" * 5000, ""]


async def test_bad_cdr_cursors_answer_400_naming_cursor(cgw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await make_calls(cgw, t)
    await persist_all(cgw)
    for cursor in BAD_CURSORS:
        doc = await cgw.req("GET", f"/v1/tenants/{t}/cdrs?cursor={quote(cursor)}", status=400)
        assert [e["field"] for e in doc["errors"]] == ["cursor"], (cursor, doc)
    # Past Python's 4,300-digit cap int() raised a ValueError: a 500 too.
    doc = await cgw.req("GET", f"/v1/tenants/{t}/cdrs?limit={'9' * 4400}", status=400)
    assert [e["field"] for e in doc["errors"]] == ["limit"]
    # The largest ended_at a cursor may carry still reaches the database and pages.
    page = await cgw.req("GET", f"/v1/tenants/{t}/cdrs?cursor={b64(b'1000000000000/zz')}")
    assert len(page["cdrs"]) == CALLS


async def test_export_cdrs_csv(cgw: Gateway, tenant_id: str, tmp_path: Path) -> None:
    t = tenant_id
    await make_calls(cgw, t)
    await persist_all(cgw)
    assert cgw.settings.database_url
    out = tmp_path / "cdrs.csv"
    env = {**os.environ, "CALLGATE_DATABASE_URL": cgw.settings.database_url}
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "export-cdrs", "--tenant", t, "--month", "2026-11",
         "--format", "csv", "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"{CALLS}/{CALLS}" in proc.stderr  # the progress bar's last state
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["call_id"] for r in rows] == [f"c{i}" for i in range(CALLS)]
    assert rows[0]["to"] == LONDON and rows[0]["credits_charged"].count(".") == 1
