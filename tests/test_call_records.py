"""The call record that call.allowed and call.extended events carry (the ledger's
`calls.record`, what `callgate rebuild` restores) is the call hash itself. authorize and
extend build it from the values they write instead of reading the hash back (HGETALL costs
as much as the rest of the event), so this checks the two agree, field for field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import orjson
import redis

from gateway.http.web import CALLS, STORE
from gateway.ledger import open_ledger
from gateway.ledger.persister import Persister
from gateway.ledger.project import (
    CALL_INSERT,
    CALL_RESERVED_CHANGES,
    CALL_RESERVED_RECORD,
    _record,
    call_record_of,
    statements,
)
from gateway.redis.keys import CALL_PACKED_FIELDS, call_fields, open_call_hash, tenant_keys
from gateway.redis.server import RedisServer
from gateway.rules.calls import AuthorizeRequest
from gateway.rules.clock import ManualClock, rfc3339
from tests.support.gateway import T0, start_gateway
from tests.support.gwclient import Gateway
from tests.support.persist_helpers import drain

LONDON = "+442071838750"
NEW_YORK = "+12125550123"


def last_event(redis_sync: redis.Redis, stream: str, call_id: str,
               etype: str | None = None) -> tuple[str, dict[str, Any]]:
    """The call's last event (of type etype, if given)."""
    # The sync client's stubs type every reply as maybe-awaitable.
    for _, fields in reversed(cast(list[Any], redis_sync.xrange(stream))):
        data = orjson.loads(fields[b"data"])
        if data.get("call_id") == call_id and etype in (None, data["type"]):
            return data["type"], data
    raise AssertionError(f"no event of call {call_id}")


def call_hash(redis_sync: redis.Redis, key: str) -> dict[str, str]:
    flat = cast(dict[bytes, bytes], redis_sync.hgetall(key))
    return {f.decode(): v.decode() for f, v in flat.items()}


async def pool_and_credit_users(gw: Gateway, t: str) -> None:
    """Tenant t with us0 (domestic pool) and payg (credits, a monthly limit), and credit."""
    await gw.tenant(t)
    await gw.user(t, "us0", "US", "domestic")
    await gw.user(t, "payg", "US", "pay_as_you_go", monthly_spend_limit="50.00")
    await gw.topup(t, "20.00", "k1")


def assert_record_is_hash(redis_sync: redis.Redis, gw: Gateway, t: str, call_id: str,
                          etype: str, written_out: bool = True) -> None:
    """The ledger's record of the call after its last event (call.allowed's record, and
    the fields call.extended wrote laid over it) is the call hash: the hash `callgate
    rebuild` writes from it (keys.open_call_hash) is the one Redis holds."""
    k = tenant_keys(t, gw.settings.partitions)
    got_type, data = last_event(redis_sync, k.partition.events, call_id)
    assert got_type == etype
    stored = call_hash(redis_sync, k.call(call_id))
    if etype == "call.allowed":
        want = open_call_hash(orjson.loads(_record(data)))
        flat = data["call"]
    else:
        _, allowed = last_event(redis_sync, k.partition.events, call_id, "call.allowed")
        want = open_call_hash(call_record_of(_record(allowed), _record(data, "set")))
    # Text that is not plain takes the older layout in authorize: the same fields.
    assert call_fields(want) == call_fields(stored)
    if written_out:
        assert want == stored
    if etype != "call.allowed":
        # An extension writes its fields only: the record's fixed part stays in the ledger.
        assert "call" not in data and "i" not in data
        flat = data["set"]
        assert {flat[i] for i in range(0, len(flat), 2)} | {"grants"} == {
            "h", "ps", "cs", "pr", "cr", "gexp", "ext", "grants"} | (
            {"cn"} if "cn" in call_fields(stored) else set())
    beside = [f for f in ("i", "grants") if f in data]
    if written_out:
        # Written out by concatenation: the record's JSON fields beside it, as JSON.
        assert beside == (["i", "grants"] if etype == "call.allowed" else ["grants"])
        assert all(isinstance(data[f], list) for f in beside)
    else:
        assert beside == []
    flat_fields = [flat[i] for i in range(0, len(flat), 2)]
    assert len(set(flat_fields) | set(beside)) == len(flat_fields) + len(beside)  # no field twice


async def test_records_of_authorize_and_extend_are_the_call_hash(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    t = tenant_id
    await pool_and_credit_users(gw, t)

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
    assert etype == "call.allowed" and set(data) == {"call_id", "call", "i", "grants", "type",
                                                     "tenant", "ts"}
    stored = call_hash(redis_sync, k.call("row"))
    h = call_fields(stored)
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
    # The shape cjson writes (the record's JSON fields inside it, as strings): the same row.
    inside = {**{k: v for k, v in data.items() if k not in ("i", "grants")},
              "call": [*data["call"], "i", orjson.dumps(data["i"]).decode(), "grants",
                       orjson.dumps(data["grants"]).decode()]}
    assert statements("1-0", etype, t, inside, {}) == [(sql, params)]


async def test_an_id_that_json_must_escape_takes_the_cjson_way(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    """The API lets no call id through that JSON would have to escape; a caller of the
    Redis function that sends one gets call.allowed written by cjson (the record's JSON
    fields inside it as strings), a valid event whose record is still the call hash."""
    t = tenant_id
    await pool_and_credit_users(gw, t)
    odd = 'odd"id\\x'
    calls = gw.client.server.app[CALLS]
    body = await calls.authorize(t, AuthorizeRequest(odd, "outbound", "us0", NEW_YORK, None,
                                                     None))
    assert body["decision"] == "allow"
    assert_record_is_hash(redis_sync, gw, t, odd, "call.allowed", written_out=False)
    gw.clock.advance(30)
    ext = await calls.extend(t, odd, 30)
    assert ext["decision"] == "allow"
    assert_record_is_hash(redis_sync, gw, t, odd, "call.extended", written_out=False)


async def test_an_extension_projects_its_fields_over_the_record(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    """call.extended carries the fields the extension wrote, which the ledger keeps beside
    the record (calls.record_changes); an event of the earlier shape, whole record in
    "call", still replaces the record."""
    t = tenant_id
    await pool_and_credit_users(gw, t)
    await gw.call(t, "x", NEW_YORK, user="us0")
    # A replay confirms the call by its attempt ('cn'): the extension carries it too.
    assert (await gw.call(t, "x", NEW_YORK, user="us0"))["decision"] == "allow"
    gw.clock.advance(30)
    await gw.extend(t, "x", 30)
    assert_record_is_hash(redis_sync, gw, t, "x", "call.extended")
    k = tenant_keys(t, gw.settings.partitions)
    etype, data = last_event(redis_sync, k.partition.events, "x")
    assert etype == "call.extended"
    packed = call_hash(redis_sync, k.call("x"))
    # The record by field name, as the ledger keeps it (the packed fields in 'i').
    fields = call_fields(packed)
    stored = {"i": orjson.dumps([fields[f] for f in CALL_PACKED_FIELDS]).decode(),
              **{f: v for f, v in fields.items() if f not in CALL_PACKED_FIELDS}}
    [(sql, params)] = statements("1-0", etype, t, data, {})
    assert sql == CALL_RESERVED_CHANGES
    assert params[:2] == (int(stored["pr"]), int(stored["cr"])) and params[3:] == (t, "x")
    assert "cn" in stored and orjson.loads(params[2]) == {f: stored[f] for f in (
        "h", "ps", "cs", "pr", "cr", "gexp", "ext", "grants", "cn")}
    old = {**{f: v for f, v in data.items() if f not in ("set", "grants")},
           "call": [x for kv in stored.items() for x in kv]}
    [(sql, params)] = statements("1-0", etype, t, old, {})
    assert sql == CALL_RESERVED_RECORD and orjson.loads(params[2]) == stored


async def test_an_open_call_is_two_fields(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "us0", "US", "domestic")
    k = tenant_keys(t, gw.settings.partitions)
    body = await gw.call(t, "pool", NEW_YORK, user="us0")
    stored = call_hash(redis_sync, k.call("pool"))
    # One field: every value (n, the attempt that created the call, and cn, the one a replay
    # confirmed it by, among them) and the grants.
    assert set(stored) == {"v"}
    fields = call_fields(stored)
    assert (fields["dir"], fields["uid"], fields["to"], fields["d"], fields["src"],
            fields["g"], fields["dc"], fields["pool"], fields["cnt"]) == (
        "outbound", "us0", NEW_YORK, "allow", body["source"], str(body["granted_seconds"]),
        "US", "US:domestic:domestic", "1")
    await gw.extend(t, "pool", 30)
    after = call_hash(redis_sync, k.call("pool"))
    assert {f: call_fields(after)[f] for f in CALL_PACKED_FIELDS} == {
        f: fields[f] for f in CALL_PACKED_FIELDS}  # extend changes only the counters
    assert not set(after) & set(CALL_PACKED_FIELDS)
    await gw.end(t, "pool", 40)
    # Closed: only what its repeats answer (D31, D32), the rest is in the ledger.
    closed = {"z": cast(bytes, redis_sync.get(k.call("pool"))).decode()}
    assert {f: call_fields(closed)[f] for f in ("st", "d", "src", "g", "mon", "pool", "dur")} == {
        "st": "ended", "d": "allow", "src": body["source"], "g": str(body["granted_seconds"]),
        "mon": fields["mon"], "pool": "US:domestic:domestic", "dur": "40"}


async def test_a_call_stored_field_by_field_reads_and_bills_the_same(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    """A call hash with every field its own (the layout before packing: such calls are in
    Redis when the new library is loaded, and `callgate rebuild` restores them from an
    older ledger's records), one with its counters their own fields beside 'i' (the layout
    before 'v', which authorize still writes for text that is not plain), and one of that
    layout whose 'i' spells every character as a JSON escape, answer retries, extends, ends
    and reads exactly as a packed twin does."""
    t = tenant_id
    await pool_and_credit_users(gw, t)
    k = tenant_keys(t, gw.settings.partitions)
    first: dict[str, Any] = {}
    for user, to in (("us0", NEW_YORK), ("payg", LONDON)):
        for twin in ("packed", "fields", "counters", "escaped"):
            first[f"{user}-{twin}"] = await gw.call(t, f"{user}-{twin}", to, user=user)
        for twin in ("counters", "escaped"):  # the layout before 'v'
            key = k.call(f"{user}-{twin}")
            fields = call_fields(call_hash(redis_sync, key))
            values = [fields[f] for f in CALL_PACKED_FIELDS]
            packed = orjson.dumps(values).decode()
            if twin == "escaped":
                packed = "[" + ",".join(
                    '"' + "".join(f"\\u{ord(ch):04x}" for ch in v) + '"' for v in values) + "]"
                assert orjson.loads(packed) == values and "\\u" in packed
            redis_sync.delete(key)
            redis_sync.hset(key, mapping={"i": packed, **{
                f: v for f, v in fields.items() if f not in CALL_PACKED_FIELDS}})
            assert "v" not in call_hash(redis_sync, key) and "h" in call_hash(redis_sync, key)
        key = k.call(f"{user}-fields")
        fields = call_fields(call_hash(redis_sync, key))
        redis_sync.delete(key)
        redis_sync.hset(key, mapping=fields)
        assert "i" not in call_hash(redis_sync, key)

    def same(a: dict[str, Any], b: dict[str, Any]) -> None:
        assert {**a, "call_id": ""} == {**b, "call_id": ""}

    for user, to in (("us0", NEW_YORK), ("payg", LONDON)):
        p = f"{user}-packed"
        for f in (f"{user}-fields", f"{user}-counters", f"{user}-escaped"):
            same(await gw.req("GET", f"/v1/tenants/{t}/calls/{p}"),
                 await gw.req("GET", f"/v1/tenants/{t}/calls/{f}"))
            retried = await gw.call(t, f, to, user=user)  # D32: the first answer again
            same(retried, first[f])
        ext = await gw.extend(t, p, 100)
        bill = await gw.end(t, p, 150)
        for f in (f"{user}-fields", f"{user}-counters", f"{user}-escaped"):
            same(await gw.extend(t, f, 100), ext)
            same(await gw.end(t, f, 150), bill)
            same(await gw.req("GET", f"/v1/tenants/{t}/calls/{p}"),
                 await gw.req("GET", f"/v1/tenants/{t}/calls/{f}"))


async def test_a_closed_record_with_a_bar_in_a_value_takes_the_cjson_way(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    """The closed record joins its values with '|'; a user id holding one (the API's id
    grammar lets none through, a caller of the Redis function might) is written as a JSON
    array instead, and replays, ends and reads answer the same."""
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "us0", "US", "domestic")
    k = tenant_keys(t, gw.settings.partitions)
    odd = "a|b"
    redis_sync.hset(k.users, odd, cast(bytes, redis_sync.hget(k.users, "us0")).decode())
    calls = gw.client.server.app[CALLS]
    allowed = await calls.authorize(t, AuthorizeRequest("bar-ok", "outbound", odd, NEW_YORK,
                                                        None, None))
    denied = await calls.authorize(t, AuthorizeRequest("bar-no", "outbound", odd, "+99912345",
                                                       None, None))
    assert (allowed["decision"], denied["decision"]) == ("allow", "deny")
    bill = await calls.end(t, "bar-ok", 40)
    for cid in ("bar-ok", "bar-no"):
        text = cast(bytes, redis_sync.get(k.call(cid))).decode()
        assert text.startswith("[") and call_fields({"z": text})["uid"] == odd
    again = await calls.authorize(t, AuthorizeRequest("bar-ok", "outbound", odd, NEW_YORK,
                                                      None, None))
    assert {**again, "replayed": False} == {**allowed, "replayed": False}
    assert await calls.end(t, "bar-ok", 99) == bill  # D31: the first bill again
    replay = await calls.authorize(t, AuthorizeRequest("bar-no", "outbound", odd, "+99912345",
                                                       None, None))
    assert {**replay, "replayed": False} == {**denied, "replayed": False}
    got = await gw.req("GET", f"/v1/tenants/{t}/calls/bar-ok")
    assert (got["state"], got["user_id"], got["billed"]) == ("ended", odd, bill["billed"])


async def test_get_of_a_closed_call_is_whole_while_the_ledger_catches_up(
    own_redis: RedisServer, aiohttp_client: Any, tmp_path: Path
) -> None:
    """Redis keeps of an ended call only its state, first answer and bill; GET takes the
    rest from the ledger. Ledger behind (it has the open call only): the ledger's row with
    Redis's state and bill over it; ledger caught up: the ledger's row; no row at all: what
    Redis has, the rest null."""
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url,
                             database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    t = "t-get-closed"
    await gw.tenant(t)
    await gw.user(t, "us0", "US", "domestic")
    store = gw.client.server.app[STORE]
    ledger = await open_ledger(gw.settings.database_url_effective)
    try:
        persister = Persister(store, ledger, consumer="test")
        # Never persisted: Redis's compact record alone.
        await gw.call(t, "lost", NEW_YORK, user="us0")
        await gw.end(t, "lost", 30)
        bare = await gw.req("GET", f"/v1/tenants/{t}/calls/lost")
        assert (bare["state"], bare["duration_seconds"], bare["to"], bare["direction"]) == (
            "ended", 30, None, None)
        # The ledger has the open call, not yet its end.
        allowed = await gw.call(t, "c1", NEW_YORK, user="us0")
        await drain(persister)
        await gw.end(t, "c1", 61)
        behind = await gw.req("GET", f"/v1/tenants/{t}/calls/c1")
        assert (behind["state"], behind["duration_seconds"], behind["to"],
                behind["direction"], behind["billed"]) == (
            "ended", 61, NEW_YORK, "outbound", {"domestic_pool_minutes": 2,
                                               "international_pool_minutes": 0,
                                               "credits": "0.0000"})
        assert behind["grants"][0]["seconds"] == allowed["granted_seconds"]
        # Caught up: the ledger's row, the same answer.
        await drain(persister)
        assert await gw.req("GET", f"/v1/tenants/{t}/calls/c1") == behind
    finally:
        await ledger.close()
