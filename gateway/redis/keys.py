"""The whole Redis keyspace of callgate, in one place.

Every key carries the partition hash tag ``{pNNN}`` where ``NNN = crc32(tenant_id) mod P``:
all keys of one tenant live in one Redis Cluster slot, so one function call can touch the
tenant's pools, wallet, call record and the partition's event stream atomically. The tag is
added here and nowhere else; Lua functions receive every key through ``KEYS``.

Layout (``T`` tenant id, ``U`` user id, ``C`` call id, ``YYYYMM`` month in the tenant's zone):

    {pNNN}:t:T               hash   settings (name, cur, tz, chg_in, maxc, ver), wallet
                                    (bal, res: micro-units), act (active PSTN calls)
    {pNNN}:t:T:users         hash   U -> JSON user record (country, plan, dial_out, limits, numbers)
    {pNNN}:t:T:numbers       hash   +E164 -> U (users' inbound numbers)
    {pNNN}:t:T:tollfree      hash   +E164 -> registered-at seconds (tenant toll-free numbers)
    {pNNN}:t:T:pools         hash   lic:CC:PLAN licences assigned; dmin:/imin:CC:PLAN
                                    minutes per user
    {pNNN}:t:T:m:YYYYMM      hash   u:/r:CC:PLAN:KIND used / reserved minutes; s:/sr:U
                                    spent / reserved credits (micro-units); expires 400
                                    days after its last write
    {pNNN}:t:T:uact          hash   U -> active PSTN calls of that user (kept at 0)
    {pNNN}:t:T:topups        hash   idempotency key -> "amount_micro|balance_after_micro"
    {pNNN}:t:T:c:C           hash   an open call: its answer, reservations and grants, all
                                    in the field 'v' (CALL_COUNTER_FIELDS, CALL_PACKED_FIELDS);
                                    once closed, a string: its compact record (CLOSED_FIELDS)
    {pNNN}:active            zset   "T/C" scored by current grant expiry (seconds), for the reaper
    {pNNN}:events            stream every change of state, for the persister
    {pNNN}:t:T:audit         list   newest-first JSON of the tenant's admin changes (who, what,
                                    when), capped at AUDIT_MAX_ENTRIES; the ledger keeps all
    {pNNN}:t:T:rl:S          string new calls the tenant asked to authorize in second S (its
                                    rate limit's bucket); expires 2 s after its first

Alerts and webhooks (lua/05_alerts.lua, gateway/notify/notifier.py); the alert settings are fields
of the hashes above (tenant: alb alf arb ara arr arn; pools: apct; month: aNN:POOL, sla:U):

    {pNNN}:notify            stream alert crossings (the same events as on {pNNN}:events),
                                    read by the notifier's consumer group only
    {pNNN}:t:T:webhooks      hash   W -> JSON webhook (url, secret, events, enabled)
    {pNNN}:wh:due            zset   delivery id -> next attempt (ms since the epoch): the
                                    deliveries pending, durable across a notifier crash
    {pNNN}:wh:pending        zset   delivery id -> when it was created (ms): pending count and
                                    the oldest pending delivery's age, for metrics
    {pNNN}:wh:d:T/W/E        hash   one delivery of event E to webhook W: state, attempts,
                                    last_status, next_attempt_at, body; expires
                                    DELIVERY_RETENTION_SECONDS after it is settled
    {pNNN}:t:T:wh:W:log      list   delivery ids of webhook W, newest first, capped at
                                    DELIVERY_LOG_MAX

Global keys (not per tenant) carry their own hash tag ``{decks}``, so the deck keys and their
stream share one cluster slot and one function call can replace a deck atomically:

    {decks}:deck:CUR         string the rate deck of currency CUR, CSV as uploaded
    {decks}:version          string counter, +1 on every deck upload; its new value is
                                    PUBLISHed on the channel of the same name, where the
                                    workers listen (gateway.redis.changes)
    {decks}:rows:CUR         string the same deck as JSON rows, already validated, which a
                                    worker loads several times faster than the CSV
    {decks}:versions         hash   CUR -> the global version of its last upload
    {decks}:events           stream deck.replaced events (actor, currency, rows, version)

API tokens made at run time are global too, under their own tag ``{tokens}`` (one slot: a
create or revoke changes the table and its version in one function call):

    {tokens}:all             hash   tok_… -> JSON record (sha256 of the token, role, tenants,
                                    description, created_at, expires_at, created_by); never
                                    the token itself
    {tokens}:version         string counter, +1 on every create and revoke, PUBLISHed on
                                    the channel of the same name as {decks}:version is
    {tokens}:used            hash   tok_… -> last_used_at (seconds, coarse: each worker
                                    writes the ids it saw at most once a minute)
    {tokens}:events          stream token.created / token.revoked, for the persister: the
                                    ledger keeps every change and `callgate rebuild`
                                    restores the table from it
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import orjson

from gateway.redis import contract


def partition_of(tenant_id: str, partitions: int) -> int:
    """The partition of a tenant: stable across processes and restarts (crc32, not hash())."""
    return zlib.crc32(tenant_id.encode()) % partitions


def partition_tag(partition: int) -> str:
    return f"{{p{partition:03d}}}"


@dataclass(frozen=True, slots=True)
class PartitionKeys:
    """Keys shared by every tenant of one partition."""

    tag: str

    @property
    def active(self) -> str:
        return f"{self.tag}:active"

    @property
    def events(self) -> str:
        return f"{self.tag}:events"

    @property
    def notify(self) -> str:
        return f"{self.tag}:notify"

    @property
    def deliveries_due(self) -> str:
        return f"{self.tag}:wh:due"

    @property
    def deliveries_pending(self) -> str:
        return f"{self.tag}:wh:pending"

    def delivery(self, delivery_id: str) -> str:
        return f"{self.tag}:wh:d:{delivery_id}"


@dataclass(frozen=True, slots=True)
class TenantKeys:
    """Keys of one tenant; construct with :func:`tenant_keys`."""

    tenant_id: str
    tag: str

    @property
    def partition(self) -> PartitionKeys:
        return PartitionKeys(self.tag)

    @property
    def tenant(self) -> str:
        return f"{self.tag}:t:{self.tenant_id}"

    @property
    def users(self) -> str:
        return f"{self.tenant}:users"

    @property
    def numbers(self) -> str:
        return f"{self.tenant}:numbers"

    @property
    def tollfree(self) -> str:
        return f"{self.tenant}:tollfree"

    @property
    def pools(self) -> str:
        return f"{self.tenant}:pools"

    @property
    def user_active(self) -> str:
        return self.tenant + USER_ACTIVE_SUFFIX

    @property
    def topups(self) -> str:
        return f"{self.tenant}:topups"

    @property
    def audit(self) -> str:
        return f"{self.tenant}:audit"

    @property
    def webhooks(self) -> str:
        return f"{self.tenant}:webhooks"

    def delivery_log(self, webhook_id: str) -> str:
        return f"{self.tenant}:wh:{webhook_id}:log"

    def month(self, yyyymm: str) -> str:
        return f"{self.tenant}:m:{yyyymm}"

    def call(self, call_id: str) -> str:
        return f"{self.tenant}:c:{call_id}"

    def rate(self, second: int) -> str:
        return f"{self.tenant}:rl:{second}"


# The end of a tenant's user_active key: U -> active calls of user U, kept at 0 once its
# last call ended (lua/00_lib.lua USER_ACTIVE).
USER_ACTIVE_SUFFIX = ":uact"

# The fields of a call hash that authorize sets and nothing changes after, in the order
# lua/00_lib.lua (CALL_PACKED) packs them, as a JSON array of strings, into the field 'i'.
CALL_PACKED_FIELDS = ("uid", "mon", "cnt", "pool", "kind", "rp", "rr", "rf", "ra", "rb",
                      "dir", "to", "from", "t0", "sa", "d", "rsn", "src", "g", "exp", "cls", "dc",
                      "dt", "free", "co", "ca", "sl")
# An open call's hash holds one field, 'v': its values, each followed by a NUL byte, those
# that change over its life (CALL_COUNTER_FIELDS; 'cn' and 'ru' empty until written), then
# CALL_PACKED_FIELDS's, then the grants (JSON, to the end): lua/00_lib.lua load_call. An open
# call has no 'st' of its own: it is active. A hash of an older layout has 'i' (the packed
# fields as JSON) and the others by name, or every field by name: such hashes read the same.
CALL_COUNTER_FIELDS = ("h", "ps", "cs", "pr", "cr", "gexp", "ext", "n", "cn", "ru")
_CALL_VALUE_FIELDS = CALL_COUNTER_FIELDS + CALL_PACKED_FIELDS
_OPTIONAL_COUNTERS = ("cn", "ru")


# A closed call (ended, expired, denied or voided) is a string key, no longer a hash: what its
# repeats answer (D31, D32), for the replay window; the rest is in the ledger. The values of
# CLOSED_FIELDS joined by '|' (a JSON array when a value holds '|'; the bill, from 'dur' on,
# once billed), packed as lua/00_lib.lua (closed_text) describes: the words of CLOSED_WORDS
# one character (their position in CODE_ALPHABET) in the fields of CLOSED_CODED, a pool
# without its kind, ended as seconds after exp.
CLOSED_FIELDS = ("st", "d", "rsn", "src", "g", "exp", "cls", "dc", "dt", "mon", "uid", "pool",
                 "rp", "dur", "bdp", "bip", "bc", "over", "ended")
CLOSED_CODED = ("st", "d", "rsn", "src", "cls", "dt")
CLOSED_WORDS = ("ended", "expired", "denied", "allow", "deny", "free", "domestic_pool",
    "international_pool", "credits", "emergency", "toll_free", "inbound_free",
    "no_calling_plan", "dial_out_policy", "destination_blocked", "invalid_destination",
    "pool_exhausted_no_credits", "insufficient_credits", "credits_not_allowed",
    "spend_limit_reached", "concurrency_limit", "unknown_user", "service_unavailable",
    "rate_limited", "domestic", "international", "toll_free_inbound", "inbound", "fixed_line",
    "mobile", "fixed_line_or_mobile", "premium_rate", "shared_cost", "voip",
    "personal_number", "pager", "uan", "voicemail", "unknown", "invalid")
CODE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_WORD_OF_CODE = dict(zip(CODE_ALPHABET, CLOSED_WORDS, strict=False))


def _closed_part(text: str) -> list[str]:
    return list(orjson.loads(text)) if text.startswith("[") else text.split("|")


def closed_fields(z: str) -> dict[str, str]:
    """A closed record's fields by name, from its text."""
    values = _closed_part(z)
    out = dict(zip(CLOSED_FIELDS, values, strict=False))
    for name in CLOSED_CODED:
        v = out.get(name, "")
        if len(v) == 1:
            out[name] = _WORD_OF_CODE[v]
    if out.get("pool", "").count(":") == 1:
        out["pool"] += ":" + ("international" if out["cls"] == "international" else "domestic")
    if out.get("ended"):
        out["ended"] = str(int(out["exp"]) + int(out["ended"]))
    return out


def call_fields(record: dict[str, str]) -> dict[str, str]:
    """A call hash's fields by name, the packed ones unpacked (a record with every field its
    own, written by an earlier version, is returned as it is). A closed record is given as
    {"z": its text} (gateway.redis.store.call_record_of) and keeps 'z' beside its fields: it tells
    a reader the rest is in the ledger."""
    closed = record.get("z")
    if closed is not None:
        return {**record, **closed_fields(closed)}
    values, packed = record.get("v"), record.get("i")
    if values is None and packed is None:
        return record
    out = {k: v for k, v in record.items() if k not in ("i", "v")}
    if values is not None:
        out["st"] = "active"
        parts = values.split("\0", len(_CALL_VALUE_FIELDS))
        out.update(zip(_CALL_VALUE_FIELDS, parts, strict=False))
        out["grants"] = parts[-1]
        for f in _OPTIONAL_COUNTERS:
            if not out.get(f):
                out.pop(f, None)
    if packed is not None:
        out.update(zip(CALL_PACKED_FIELDS, orjson.loads(packed), strict=False))
    return out


def open_call_hash(record: dict[str, str]) -> dict[str, str]:
    """The hash of an open call, in the layout lua/50_authorize.lua writes, from its record
    in any layout (by field name, as the ledger keeps it, or packed): what `callgate
    rebuild` writes back. A value holding a NUL (which the API's grammar lets through in
    none) takes the older layout, as in authorize."""
    fields = call_fields(record)
    values = [fields.get(f, "") for f in _CALL_VALUE_FIELDS]
    grants = fields.get("grants", "[]")
    if any("\0" in v for v in (*values, grants)):
        packed = orjson.dumps([fields.get(f, "") for f in CALL_PACKED_FIELDS]).decode()
        return {"i": packed, **{f: v for f, v in fields.items() if f not in CALL_PACKED_FIELDS}}
    return {"v": "".join(v + "\0" for v in values) + grants}


# Audit entries kept per tenant in Redis; older ones live only in the ledger (one value with
# lua/00_lib.lua: gateway.redis.contract).
AUDIT_MAX_ENTRIES = contract.AUDIT_MAX_ENTRIES

# Deliveries listed per webhook, and how long a settled delivery's record is kept.
DELIVERY_LOG_MAX = 100
DELIVERY_RETENTION_SECONDS = 7 * 86400

DECKS_TAG = "{decks}"
DECKS_VERSION = f"{DECKS_TAG}:version"
DECKS_VERSIONS = f"{DECKS_TAG}:versions"
DECKS_EVENTS = f"{DECKS_TAG}:events"


def deck_key(currency: str) -> str:
    """The CSV of one currency's rate deck, as last uploaded."""
    return f"{DECKS_TAG}:deck:{currency}"


def deck_rows_key(currency: str) -> str:
    """The same deck as JSON rows [prefix, description, kind, rate, fee, A, B]."""
    return f"{DECKS_TAG}:rows:{currency}"


TOKENS_TAG = "{tokens}"
TOKENS = f"{TOKENS_TAG}:all"
TOKENS_VERSION = f"{TOKENS_TAG}:version"
TOKENS_USED = f"{TOKENS_TAG}:used"
TOKENS_EVENTS = f"{TOKENS_TAG}:events"


def tenant_keys(tenant_id: str, partitions: int) -> TenantKeys:
    return TenantKeys(tenant_id, partition_tag(partition_of(tenant_id, partitions)))


def all_partitions(partitions: int) -> list[PartitionKeys]:
    return [PartitionKeys(partition_tag(p)) for p in range(partitions)]


def active_member(tenant_id: str, call_id: str) -> str:
    """Member of the partition's active zset; '/' occurs in neither id (api.md id grammar)."""
    return f"{tenant_id}/{call_id}"
