"""Redis as the ledger says it should be: `callgate rebuild` writes it into an empty Redis,
`callgate audit` (gateway.ledger.audit) compares it with the live one.

Restored: tenants (settings, wallet balance, reservations, active-call count), users and
their licences (pools hash derived from the user records, as user_put does), inbound
numbers, toll-free numbers, top-up idempotency records, open calls (record, active zset,
per-user active counts) and the pool / credit usage of the months a live call may still
touch (clock.candidate_months), each tenant's audit list (its newest AUDIT_MAX_ENTRIES
admin-change events, as lua/00_lib.lua `audit` wrote them) and the last rate deck of each
currency. Not restored: records of closed calls (kept 24 h in Redis only for retries and
repeated ends; their CDRs are in the ledger).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.ledger import Ledger
from gateway.ledger.progress import Progress
from gateway.ledger.project import call_record_of
from gateway.redis import contract as c
from gateway.redis.contract import AUDIT_MAX_ENTRIES, MONTH_TTL_SECONDS
from gateway.redis.keys import active_member, open_call_hash, tenant_keys
from gateway.redis.store import Store
from gateway.rules.clock import candidate_months
from gateway.vocab import EventType as E

# Fields of the tenant hash that the ledger determines (created/updated/ver are bookkeeping).
TENANT_FIELDS = ("name", "cur", "tz", "chg_in", "maxc", "rl", "bal", "res", "act")
CALL_FIELDS = ("st", "gexp", "pr", "cr", "uid", "pool", "mon")
# The events that lua/00_lib.lua `audit` also pushes on the tenant's audit list.
AUDIT_EVENT_TYPES = tuple(e.value for e in (
    E.TENANT_CREATED, E.TENANT_UPDATED, E.USER_CREATED, E.USER_UPDATED, E.USER_DELETED,
    E.CREDITS_TOPPED_UP, E.TOLLFREE_ADDED, E.TOLLFREE_REMOVED, E.ALERTS_UPDATED,
    E.WEBHOOK_CREATED, E.WEBHOOK_UPDATED, E.WEBHOOK_DELETED))
# Rows pushed per RPUSH when restoring an audit list.
LIST_PUSH_CHUNK = 200


@dataclass
class Expected:
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    zsets: dict[str, dict[str, int]] = field(default_factory=dict)
    months: set[str] = field(default_factory=set)  # keys of month hashes (expire)
    tenant_keys: set[str] = field(default_factory=set)
    call_keys: set[str] = field(default_factory=set)
    # Audit lists, newest entry first (as LRANGE 0 -1 reads them): one per tenant.
    lists: dict[str, list[str]] = field(default_factory=dict)

    def h(self, key: str) -> dict[str, str]:
        return self.hashes.setdefault(key, {})

    def add(self, key: str, fld: str, delta: int) -> None:
        h = self.h(key)
        h[fld] = str(int(h.get(fld, "0")) + delta)


def _drop_zeros(h: dict[str, str], prefixes: tuple[str, ...]) -> None:
    for k in [k for k, v in h.items() if k.startswith(prefixes) and v == "0"]:
        del h[k]


async def expected_state(ledger: Ledger, partitions: int, now: int,
                         clock_skew_seconds: int) -> Expected:
    ex = Expected()
    months = set(candidate_months(now, clock_skew_seconds))
    for (t, name, cur, tz, chg_in, maxc, rl, bal, created, updated) in await ledger.query(
            "SELECT tenant, name, currency, timezone, charge_inbound_calls, "
            "max_concurrent_calls, authorizations_per_second, balance_micro, created_at, "
            "updated_at FROM tenants"):
        k = tenant_keys(t, partitions)
        ex.tenant_keys.add(k.tenant)
        ex.lists[k.audit] = []
        ex.hashes[k.tenant] = {"name": name, "cur": cur, "tz": tz, "chg_in": str(chg_in),
                               "maxc": maxc, "rl": rl, "bal": str(bal), "res": "0", "act": "0",
                               "created": str(created), "updated": str(updated), "ver": "1"}
    for (t, uid, record) in await ledger.query(
            "SELECT tenant, user_id, record FROM users ORDER BY updated_at"):
        k = tenant_keys(t, partitions)
        ex.h(k.users)[uid] = record
        u: dict[str, Any] = orjson.loads(record)
        dmin, imin = int(u.get("dmin") or 0), int(u.get("imin") or 0)
        if dmin > 0 or imin > 0:
            pool = c.pool_id(u["country"], u["plan"])
            ex.add(k.pools, c.POOL_LICENCES + pool, 1)
            ex.h(k.pools).update({c.POOL_DOMESTIC_MINUTES + pool: str(dmin),
                                  c.POOL_INTERNATIONAL_MINUTES + pool: str(imin)})
        for n in u.get("numbers") or []:
            ex.h(k.numbers)[str(n)] = uid
    for (t, key, amount, after) in await ledger.query(
            "SELECT tenant, idempotency_key, amount_micro, balance_after_micro FROM topups"):
        ex.h(tenant_keys(t, partitions).topups)[key] = f"{amount}|{after}"
    for (t, number, added) in await ledger.query(
            "SELECT tenant, number, added_at FROM tollfree_numbers"):
        ex.h(tenant_keys(t, partitions).tollfree)[number] = str(added)
    for (t, cid, uid, pool, month, pr, cr, record, changes, counted) in await ledger.query(
            "SELECT tenant, call_id, user_id, pool, month, pool_reserved_minutes, "
            "credits_reserved_micro, record, record_changes, counted FROM calls "
            "WHERE state = 'active'"):
        k = tenant_keys(t, partitions)
        rec = call_record_of(record, changes)
        rec["pr"], rec["cr"] = str(pr), str(cr)
        ex.hashes[k.call(cid)] = open_call_hash(rec)
        ex.call_keys.add(k.call(cid))
        ex.zsets.setdefault(k.partition.active, {})[active_member(t, cid)] = int(
            rec.get("gexp", "0"))
        if counted:
            ex.add(k.tenant, "act", 1)
            ex.add(k.user_active, uid, 1)
        ex.add(k.tenant, "res", int(cr))
        if month in months:
            if pool:
                ex.add(k.month(month), c.MONTH_POOL_RESERVED + pool, int(pr))
            if uid and cr:
                ex.add(k.month(month), c.MONTH_USER_RESERVED + uid, int(cr))
    for (t, month, pool, uid, minutes, credits) in await ledger.query(
            "SELECT tenant, month, pool, user_id, "
            "SUM(domestic_pool_minutes + international_pool_minutes), SUM(credits_micro) "
            "FROM cdrs GROUP BY tenant, month, pool, user_id"):
        if month not in months:
            continue
        k = tenant_keys(t, partitions)
        if pool:
            ex.add(k.month(month), c.MONTH_POOL_USED + pool, int(minutes))
        if uid:
            ex.add(k.month(month), c.MONTH_USER_SPENT + uid, int(credits))
    for key, h in ex.hashes.items():
        if ":m:" in key:
            ex.months.add(key)
            _drop_zeros(h, c.MONTH_COUNTER_PREFIXES)
    await _alert_settings(ledger, partitions, ex)
    await _audit_lists(ledger, partitions, ex)
    return ex


def audit_entry_text(entry_id: str, data: str) -> str:
    """The audit list entry of one admin-change event: the event's data (the JSON text the
    Lua function wrote) with its stream entry id, as lua/00_lib.lua `audit` pushes it."""
    body = data.strip()
    assert body.startswith("{"), f"event {entry_id}: data is not a JSON object"
    rest = body[1:].lstrip()
    return '{"id":' + orjson.dumps(entry_id).decode() + ("," if rest != "}" else "") + rest


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _alert_settings(ledger: Ledger, partitions: int, ex: Expected) -> None:
    """Each tenant's alert settings, as its last ``alerts.updated`` event set them
    (lua/25_alerts_put.lua): the pool thresholds in the pools hash, the low-balance and
    auto-recharge amounts in the tenant hash. Whether an alert already fired this month or
    a recharge is awaited is not restored: at worst one fires again (at least once)."""
    last: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
    for (t, entry_id, data) in await ledger.query(
            "SELECT tenant, entry_id, data FROM events WHERE type = ?",
            E.ALERTS_UPDATED.value):
        order = _entry_order(str(entry_id))
        if str(t) not in last or order > last[str(t)][0]:
            last[str(t)] = (order, orjson.loads(data))
    for t, (_, d) in last.items():
        k = tenant_keys(t, partitions)
        if k.tenant not in ex.tenant_keys:
            continue
        ex.h(k.pools)["apct"] = str(d.get("pool_thresholds_percent") or "")
        tenant = ex.hashes[k.tenant]
        if d.get("low_balance_micro"):
            tenant["alb"] = str(d["low_balance_micro"])
        if d.get("auto_recharge_below_micro"):
            tenant["arb"] = str(d["auto_recharge_below_micro"])
            tenant["ara"] = str(d.get("auto_recharge_amount_micro") or "")


async def _audit_lists(ledger: Ledger, partitions: int, ex: Expected) -> None:
    """Each tenant's audit list: its newest AUDIT_MAX_ENTRIES admin-change events. A
    tenant's events all come from its one partition stream, so stream order (entry id,
    compared as numbers) is the order Redis pushed them in."""
    per_tenant: dict[str, list[tuple[tuple[int, int], str]]] = {}
    marks = ", ".join("?" * len(AUDIT_EVENT_TYPES))
    for (t, entry_id, data) in await ledger.query(
            f"SELECT tenant, entry_id, data FROM events WHERE type IN ({marks})",
            *AUDIT_EVENT_TYPES):
        per_tenant.setdefault(str(t), []).append(
            (_entry_order(str(entry_id)), audit_entry_text(str(entry_id), str(data))))
    for t, entries in per_tenant.items():
        k = tenant_keys(t, partitions)
        if k.tenant not in ex.tenant_keys:
            continue  # no tenant record (never created): nothing to audit in Redis
        entries.sort(reverse=True)
        ex.lists[k.audit] = [text for _, text in entries[:AUDIT_MAX_ENTRIES]]


async def latest_decks(ledger: Ledger) -> dict[str, str]:
    """The CSV of the last rate deck uploaded per currency (``deck.replaced`` events)."""
    latest: dict[str, str] = {}
    rows = await ledger.query("SELECT entry_id, data FROM events WHERE type = 'deck.replaced'")
    for _, text in sorted((_entry_order(str(r[0])), str(r[1])) for r in rows):
        data = orjson.loads(text)
        if data.get("csv"):
            latest[str(data["currency"])] = str(data["csv"])
    return latest


async def latest_tokens(ledger: Ledger) -> dict[str, str]:
    """The run-time tokens the ledger says exist: token id -> record (JSON, the SHA-256
    only), from the token.created and token.revoked events in stream order."""
    tokens: dict[str, str] = {}
    rows = await ledger.query(
        "SELECT entry_id, type, data FROM events "
        "WHERE type IN ('token.created', 'token.revoked')")
    for _, etype, text in sorted((_entry_order(str(r[0])), str(r[1]), str(r[2]))
                                 for r in rows):
        data = orjson.loads(text)
        if etype == E.TOKEN_CREATED:
            tokens[str(data["token_id"])] = str(data["record"])
        else:
            tokens.pop(str(data["token_id"]), None)
    return tokens


async def restore_tokens(store: Store, ledger: Ledger) -> int:
    """Put back the run-time tokens (never over one Redis has); returns those written. The
    version counter moves and is published as lua/85_token_create.lua does, so that
    running workers reload the table."""
    from gateway.redis.keys import TOKENS, TOKENS_VERSION

    written = 0
    for token_id, record in (await latest_tokens(ledger)).items():
        written += int(await store.raw(TOKENS, "HSETNX", TOKENS, token_id, record))
    if written:
        version = await store.raw(TOKENS_VERSION, "INCR", TOKENS_VERSION)
        await store.raw(TOKENS_VERSION, "PUBLISH", TOKENS_VERSION, version)
    return written


async def redis_is_empty(store: Store, ex: Expected) -> bool:
    for key in ex.tenant_keys:
        if int(await store.raw(key, "EXISTS", key)):
            return False
    return True


async def rebuild(store: Store, ledger: Ledger, now: int, clock_skew_seconds: int,
                  show_progress: bool = True) -> int:
    """Write the ledger's state into Redis (expected empty); returns keys written."""
    ex = await expected_state(ledger, store.partitions, now, clock_skew_seconds)
    await store.load_functions()
    total = len(ex.hashes) + len(ex.zsets) + len(ex.lists)
    bar = Progress("rebuild", total) if show_progress else None
    for key, h in ex.hashes.items():
        if h:
            flat = [x for kv in h.items() for x in kv]
            await store.raw(key, "HSET", key, *flat)
            if key in ex.months:
                await store.raw(key, "EXPIRE", key, MONTH_TTL_SECONDS)
        if bar:
            bar.advance()
    for key, members in ex.zsets.items():
        flat_z: list[str | int] = [x for m, s in members.items() for x in (s, m)]
        await store.raw(key, "ZADD", key, *flat_z)
        if bar:
            bar.advance()
    for key, entries in ex.lists.items():
        # Only into an empty list: a second run (--force) must not append the entries
        # again, and a list the gateway has written since is left as it is.
        if entries and not int(await store.raw(key, "LLEN", key)):
            for i in range(0, len(entries), LIST_PUSH_CHUNK):  # newest first, as LPUSH
                await store.raw(key, "RPUSH", key, *entries[i:i + LIST_PUSH_CHUNK])
        if bar:
            bar.advance()
    if bar:
        bar.close()
    lists = sum(1 for entries in ex.lists.values() if entries)
    return (len(ex.hashes) + len(ex.zsets) + lists
            + await restore_decks(store, ledger, now) + await restore_tokens(store, ledger))


async def restore_decks(store: Store, ledger: Ledger, now: int) -> int:
    """Upload again the last rate deck of each currency recorded in the ledger (the
    ``deck.replaced`` events carry the CSV); returns the decks restored."""
    from gateway.rules.decks import store_deck
    from gateway.rules.rating import RateDeck

    latest = await latest_decks(ledger)
    for currency, csv_text in latest.items():
        await store_deck(store, RateDeck.from_csv(csv_text, currency), csv_text, now,
                         actor="callgate-rebuild")
    return len(latest)


def diff_hash(key: str, want: dict[str, str], have: dict[str, str],
              only: tuple[str, ...] | None) -> list[str]:
    out = []
    fields = set(only) if only else set(want) | set(have)
    for f in sorted(fields):
        w, h = want.get(f), have.get(f)
        if (w or None) != (h or None):
            out.append(f"{key} {f}: redis={h!r} ledger={w!r}")
    return out

