"""`callgate audit`: Redis against the ledger, and the conservation invariants.

Run it with the persister caught up (the backlog is reported first: events not yet in
the ledger show up as differences). Each discrepancy is one line; any makes the command
exit non-zero.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.ledger import Ledger
from gateway.ledger.rebuild import (
    CALL_FIELDS,
    TENANT_FIELDS,
    diff_hash,
    expected_state,
    latest_decks,
    latest_tokens,
)
from gateway.redis.contract import MONTH_COUNTER_PREFIXES
from gateway.redis.keys import (
    TOKENS,
    USER_ACTIVE_SUFFIX,
    all_partitions,
    call_fields,
    deck_key,
)
from gateway.redis.store import Store, call_record_of


async def ledger_invariants(ledger: Ledger) -> list[str]:
    """Money is conserved: balance = top-ups - credits charged, per tenant."""
    out = []
    for (t, bal, topups, charged) in await ledger.query(
            "SELECT t.tenant, t.balance_micro, "
            "(SELECT COALESCE(SUM(amount_micro), 0) FROM topups p WHERE p.tenant = t.tenant), "
            "(SELECT COALESCE(SUM(credits_micro), 0) FROM cdrs c WHERE c.tenant = t.tenant) "
            "FROM tenants t"):
        if int(bal) != int(topups) - int(charged):
            out.append(f"ledger {t}: balance {bal} != top-ups {topups} - charged {charged}")
    return out


def _parsed(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def diff_list(key: str, want: list[str], have: list[str]) -> list[str]:
    """An audit list against the ledger's: entries compared as JSON values (the key order
    of a JSON object is not part of the record). One line for the first difference."""
    for i in range(max(len(want), len(have))):
        w = _parsed(want[i]) if i < len(want) else None
        h = _parsed(have[i]) if i < len(have) else None
        if w != h:
            def ident(v: Any) -> str:
                return repr(v.get("id") if isinstance(v, dict) else v)
            return [f"{key}: redis has {len(have)} entries, ledger {len(want)}; first "
                    f"difference at #{i}: redis={ident(h)} ledger={ident(w)}"]
    return []


async def audit(store: Store, ledger: Ledger, now: int, clock_skew_seconds: int) -> list[str]:
    """Every discrepancy between Redis and what `callgate rebuild` would restore from the
    ledger (tenants, users, numbers, top-ups, open calls, month usage, audit lists, rate
    decks), after the ledger's own invariants."""
    problems = await ledger_invariants(ledger)
    ex = await expected_state(ledger, store.partitions, now, clock_skew_seconds)
    for key, want in ex.hashes.items():
        if key in ex.call_keys:
            # An open call in the ledger may be closed in Redis (a string, its compact
            # record): a difference to report, not a reply error.
            problems += diff_hash(key, call_fields(want), await call_record_of(store, key) or {},
                                  CALL_FIELDS)
            continue
        flat = await store.raw(key, "HGETALL", key)
        have = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}
        if key in ex.tenant_keys:
            problems += diff_hash(key, want, have, TENANT_FIELDS)
            continue
        if key in ex.months:
            have = {k: v for k, v in have.items() if k.startswith(MONTH_COUNTER_PREFIXES)}
        elif key.endswith(USER_ACTIVE_SUFFIX):
            # A user's count stays at 0 once its last call ended (lua/00_lib.lua USER_ACTIVE).
            have = {k: v for k, v in have.items() if v != "0"}
        problems += diff_hash(key, want, have, None)
    for key, members in ex.zsets.items():
        for member, score in members.items():
            have_score = await store.raw(key, "ZSCORE", key, member)
            if have_score is None or int(float(have_score)) != score:
                problems.append(f"{key} {member}: redis={have_score!r} ledger={score}")
    for p in all_partitions(store.partitions):
        want_members = ex.zsets.get(p.active, {})
        for member in await store.raw(p.active, "ZRANGE", p.active, 0, -1):
            if str(member) not in want_members:
                problems.append(f"{p.active} {member}: open in redis, not in the ledger")
    for key, entries in ex.lists.items():
        have_list = [str(x) for x in await store.raw(key, "LRANGE", key, 0, -1)]
        problems += diff_list(key, entries, have_list)
    for currency, csv_text in (await latest_decks(ledger)).items():
        key = deck_key(currency)
        have_deck = await store.raw(key, "GET", key)
        if have_deck is None or str(have_deck) != csv_text:
            state = "missing" if have_deck is None else "differs"
            problems.append(f"{key}: {state} in redis (the ledger's last upload of "
                            f"{currency}: {len(csv_text)} bytes)")
    flat = await store.raw(TOKENS, "HGETALL", TOKENS)
    have_tokens = {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}
    want_tokens = await latest_tokens(ledger)
    # Named by id only: a record carries the token's SHA-256, which stays out of output.
    for token_id in sorted(set(want_tokens) | set(have_tokens)):
        w, h = want_tokens.get(token_id), have_tokens.get(token_id)
        if w != h:
            state = ("missing in redis" if h is None else "not in the ledger" if w is None
                     else "differs from the ledger's")
            problems.append(f"{TOKENS} {token_id}: {state}")
    return problems
