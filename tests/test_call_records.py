"""The call record that call.allowed and call.extended events carry (the ledger's
`calls.record`, what `callgate rebuild` restores) is the call hash itself. authorize and
extend build it from the values they write instead of reading the hash back (HGETALL costs
as much as the rest of the event), so this checks the two agree, field for field."""

from __future__ import annotations

from typing import Any, cast

import orjson
import redis

from gateway.clock import rfc3339
from gateway.keys import tenant_keys
from gateway.ledger.project import CALL_INSERT, _record, statements
from tests.gwclient import Gateway

LONDON = "+442071838750"
NEW_YORK = "+12125550123"


def last_event(redis_sync: redis.Redis, stream: str, call_id: str) -> tuple[str, dict[str, Any]]:
    # The sync client's stubs type every reply as maybe-awaitable.
    for _, fields in reversed(cast(list[Any], redis_sync.xrange(stream))):
        data = orjson.loads(fields[b"data"])
        if data.get("call_id") == call_id:
            return fields[b"type"].decode(), data
    raise AssertionError(f"no event of call {call_id}")


def assert_record_is_hash(redis_sync: redis.Redis, gw: Gateway, t: str, call_id: str,
                          etype: str) -> None:
    k = tenant_keys(t, gw.settings.partitions)
    got_type, data = last_event(redis_sync, k.partition.events, call_id)
    assert got_type == etype
    flat = cast(dict[bytes, bytes], redis_sync.hgetall(k.call(call_id)))
    stored = {f.decode(): v.decode() for f, v in flat.items()}
    assert orjson.loads(_record(data)) == stored
    assert len(data["call"]) == 2 * len(stored)  # no field twice


async def test_records_of_authorize_and_extend_are_the_call_hash(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "us0", "US", "domestic")
    await gw.user(t, "payg", "US", "pay_as_you_go", monthly_spend_limit="50.00")
    await gw.topup(t, "20.00", "k1")

    assert (await gw.call(t, "pool", NEW_YORK, user="us0"))["source"] == "domestic_pool"
    assert_record_is_hash(redis_sync, gw, t, "pool", "call.allowed")
    assert (await gw.call(t, "paid", LONDON, user="payg"))["source"] == "credits"
    assert_record_is_hash(redis_sync, gw, t, "paid", "call.allowed")

    for used in (30, 200):
        gw.clock.advance(30)
        await gw.extend(t, "pool", used)
        assert_record_is_hash(redis_sync, gw, t, "pool", "call.extended")
        await gw.extend(t, "paid", used)
        assert_record_is_hash(redis_sync, gw, t, "paid", "call.extended")

    # A denied call's event carries no record.
    assert (await gw.call(t, "denied", "+99912345", user="us0"))["decision"] == "deny"
    _, data = last_event(redis_sync, tenant_keys(t, gw.settings.partitions).partition.events,
                         "denied")
    assert "call" not in data


async def test_ledger_row_of_an_allowed_call_read_from_its_record(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    """call.allowed carries only the call id and the record; the ledger's calls row takes
    every column from the record, exactly as it did from the fields events used to repeat
    (which an event of the old shape, still in a stream at an upgrade, projects the same)."""
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "payg", "US", "pay_as_you_go")
    await gw.topup(t, "20.00", "k1")
    started = int(gw.clock.now()) - 5
    body = await gw.req("POST", f"/v1/tenants/{t}/calls", {
        "call_id": "row", "user_id": "payg", "to": LONDON, "from": NEW_YORK,
        "started_at": rfc3339(started)})
    assert body["source"] == "credits"
    k = tenant_keys(t, gw.settings.partitions)
    etype, data = last_event(redis_sync, k.partition.events, "row")
    assert etype == "call.allowed" and set(data) == {"call_id", "call", "type", "tenant", "ts"}
    h = {f.decode(): v.decode()
         for f, v in cast(dict[bytes, bytes], redis_sync.hgetall(k.call("row"))).items()}
    [(sql, params)] = statements("1-0", etype, t, data, {})
    assert sql == CALL_INSERT
    assert params[:17] == (
        t, "row", "active", "outbound", "payg", NEW_YORK, LONDON, "GB", "international",
        h["mon"], "US:pay_as_you_go:international", "44", "credits", started,
        int(gw.clock.now()), 0, int(h["cr"]))
    assert int(h["cr"]) > 0 and params[18] == 1  # credits reserved; a counted call
    # The old shape: the same fields spelt out beside the record.
    old = {**data, "direction": "outbound", "user": "payg", "to": LONDON, "from": NEW_YORK,
           "reason": "credits", "source": "credits", "granted_seconds": int(h["g"]),
           "class": "international", "country": "GB", "number_type": h["dt"],
           "month": h["mon"], "started_at": started, "pool": h["pool"], "pool_reserved_minutes": 0,
           "credits_reserved_micro": int(h["cr"]), "rate_prefix": "44", "counted": True}
    assert statements("1-0", etype, t, old, {}) == [(sql, params)]
