"""One vocabulary (gateway.vocab): the words api.md fixes, the SIP code of each deny reason,
and the Lua functions writing the same words the Python side reads."""

from __future__ import annotations

import re
from pathlib import Path

from gateway import vocab
from gateway.rules import calls
from gateway.vocab import DenyReason, EventType

LUA_DIR = Path(__file__).resolve().parent.parent / "lua"

# Comments (skipped) and quoted strings of Lua source, in order: a quote inside a string
# of the other kind does not start one.
_LUA_TOKEN = re.compile(
    r"--\[\[.*?\]\]|--[^\n]*|\"((?:[^\"\\\n]|\\.)*)\"|'((?:[^'\\\n]|\\.)*)'", re.S)


def lua_literals() -> set[str]:
    found: set[str] = set()
    for path in sorted(LUA_DIR.glob("*.lua")):
        for m in _LUA_TOKEN.finditer(path.read_text()):
            found.update(g for g in m.groups() if g is not None)
    return found


def test_api_md_words_are_the_values() -> None:
    assert [r.value for r in vocab.Role] == ["switch", "admin", "operator"]
    assert [d.value for d in vocab.DialOut] == [
        "international_and_domestic", "domestic_only", "none"]
    assert [s.value for s in vocab.Source] == [
        "domestic_pool", "international_pool", "credits", "free"]
    assert vocab.REASONS[:6] == ("domestic_pool", "international_pool", "credits", "emergency",
                                 "toll_free", "inbound_free")


def test_every_deny_reason_has_the_sip_code_api_md_gives() -> None:
    """402 for money, 403 for policy, plan and blocked destinations, 404 for an unknown
    user, 484 for an invalid number, 486 for concurrency, 503 for service unavailable."""
    by_code = {
        402: {"pool_exhausted_no_credits", "insufficient_credits", "spend_limit_reached"},
        403: {"no_calling_plan", "dial_out_policy", "destination_blocked",
              "credits_not_allowed"},
        404: {"unknown_user"},
        484: {"invalid_destination"},
        486: {"concurrency_limit"},
        503: {"service_unavailable", "rate_limited"},
    }
    assert set(vocab.SIP_CODES) == set(DenyReason)
    assert {code: {r.value for r, c in vocab.SIP_CODES.items() if c == code}
            for code in by_code} == by_code
    # The call path's table: the same codes, keyed by the plain strings Redis answers.
    plain = {r.value: c for r, c in vocab.SIP_CODES.items()}
    assert plain == calls.SIP_CODES
    assert all(type(k) is str for k in calls.SIP_CODES)


def test_lua_writes_the_event_types_python_reads() -> None:
    """Both ways: every ``kind.what`` literal of lua/ is an EventType, and every EventType
    is written by lua/ (call.ended and call.expired as ``'call.' .. state``)."""
    dotted = {s for s in lua_literals() if re.fullmatch(r"[a-z_]+\.[a-z_]*", s)}
    assert "call." in dotted  # 'call.' .. state, state being 'ended' or 'expired'
    assert dotted - {"call."} == {e.value for e in EventType} - {
        EventType.CALL_ENDED, EventType.CALL_EXPIRED}
    assert {"ended", "expired"} <= lua_literals()


def test_lua_denies_with_the_vocabulary_s_reasons() -> None:
    literals = lua_literals()
    missing = [r.value for r in DenyReason if r.value not in literals]
    assert missing == [], f"deny reasons lua/ never gives: {missing}"
    assert {v.value for v in vocab.Verdict} <= literals


def test_webhooks_subscribe_to_the_alert_events_in_api_md_order() -> None:
    assert [e.value for e in vocab.ALERT_EVENTS] == [
        "pool.threshold_crossed", "credits.low_balance", "credits.recharge_requested",
        "spend_limit.reached"]
