"""A small pure-Python reference model of callgate's rules, for tests/test_model.py.

Written from /spec/domain.md and api.md, not from the Lua: one tenant, its users and
licences, its pools per month, its wallet, its calls. The test drives the real gateway and
this model with the same operations and compares every answer and every balance.

What the model takes from the project, because it is configuration or a tested pure
function, not a rule: plans, zones, country rules, the operator block list and rate decks
(``gateway.config.Settings``), and the D20 money formulas (``gateway.rules.rating``). What the model
knows about the numbers it is asked to dial is the hand-written table ``NUMBERS`` (from the
national numbering plans), plus emergency short codes from phonenumbers' short-number data
(D11 names it as the authority).

Reservation model (D29-D31): a call's time is a horizon ``h`` (seconds since answer) made of
a pool segment ``[0, ps)`` then a credit segment ``[ps, ps + cs)``; once a call moved to
credits it stays there (D18). It holds ``pr = ceil(ps / 60)`` pool minutes and
``cr = cost(cs)`` of the wallet. An extension truncates the horizon to the seconds used and
grants anew from now; a denied extension changes nothing (api.md: the call runs to the end
of its current grant, so what that grant holds stays held). The end bills
``min(duration, h)``, pool part in whole minutes (D8), credit part by D20, and releases the
reservations; the reaper (D33) ends a call whose grant expired a grace period ago with
``duration = h``.

Where domain.md leaves an order open, the model follows the order of the rules as the test's
brief states it: emergency > unknown user > invalid / blocked > no plan > dial-out policy >
concurrency > domestic toll-free > pool > credits, and among credits: barred > spend limit >
wallet (D22 before D17).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from phonenumbers import shortnumberinfo

from gateway import vocab
from gateway.config import Settings
from gateway.rules.rating import Rate
from tests.support.refcost import credit_cost_micro, max_affordable_seconds

POOL_KINDS = ("domestic", "international")

# The SIP answer of each deny reason: api.md's, pinned by tests/test_vocab.py.
SIP_CODES: Mapping[str, int] = {r.value: code for r, code in vocab.SIP_CODES.items()}


@dataclass(frozen=True)
class Number:
    """A dialled destination as the numbering plan of its country describes it."""

    e164: str | None  # None: an emergency short code, or not a number at all
    country: str | None
    kind: str  # "ordinary" | "toll_free" | "premium_rate" | "shared_cost" | "emergency"
    #            | "invalid"


def _n(e164: str, country: str, kind: str = "ordinary") -> Number:
    return Number(e164, country, kind)


# Every destination the test dials, classified by hand (D9-D14).
NUMBERS: dict[str, Number] = {
    "+12125550123": _n("+12125550123", "US"),  # New York
    "+14165550100": _n("+14165550100", "CA"),  # Toronto
    "+17875550123": _n("+17875550123", "PR"),  # San Juan
    "+18765550100": _n("+18765550100", "JM"),  # Jamaica: +1 but international (D9)
    "+442071838750": _n("+442071838750", "GB"),  # London
    "+33142685300": _n("+33142685300", "FR"),  # Paris
    "+33612345678": _n("+33612345678", "FR"),  # French mobile
    "+525512345678": _n("+525512345678", "MX"),  # Mexico City: deck increments 1/1
    "+551123456789": _n("+551123456789", "BR"),  # Sao Paulo: deck increments 30/6
    "+18005550199": _n("+18005550199", "US", "toll_free"),
    "+448001234567": _n("+448001234567", "GB", "toll_free"),
    "+33891234567": _n("+33891234567", "FR", "premium_rate"),  # FR 089x
    "+448451234567": _n("+448451234567", "GB", "shared_cost"),  # GB 0845 (D13's example)
    "+88216123456": _n("+88216123456", "001", "ordinary"),  # on the operator block list
    "+1234": Number(None, None, "invalid"),
    "12345abc": Number(None, None, "invalid"),
    "911": Number(None, None, "emergency"),
    "112": Number(None, None, "emergency"),
    "999": Number(None, None, "emergency"),
}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def money(micro: int) -> str:
    """api.md: a decimal string with 4 decimals."""
    sign = "-" if micro < 0 else ""
    units, rest = divmod(abs(micro), 1_000_000)
    return f"{sign}{units}.{rest // 100:04d}"


@dataclass(frozen=True)
class User:
    country: str
    plan: str
    dial_out: str = "international_and_domestic"
    credits_allowed: bool = True
    spend_limit: int | None = None  # micro-units per month (D22)
    max_calls: int | None = None  # D25
    number: str | None = None  # the user's own number (inbound, D27)


@dataclass
class Call:
    call_id: str
    answer: dict[str, Any]  # the authorize answer, replayed as is (D32)
    state: str  # "active" | "denied" | "ended" | "expired" (D33)
    uid: str
    month: str  # YYYYMM in the tenant's zone at the start (D7)
    started: int
    free: bool = False  # emergency, toll-free, inbound to a user (D11, D12, D27)
    counted: bool = False  # holds a concurrency slot (D25)
    pool: tuple[str, str, str] | None = None  # (country, plan, kind) it may draw from
    credits_only: bool = False  # allowed premium / shared cost, toll-free inbound (D13, D28)
    credits_allowed: bool = True
    spend_limit: int | None = None
    rate: Rate | None = None
    horizon: int = 0
    expires: int | None = None  # end of the current grant
    pool_s: int = 0
    cred_s: int = 0
    pool_r: int = 0
    cred_r: int = 0
    reported: int = 0  # used seconds the last extend reported: time only moves forward
    bill: dict[str, Any] | None = None


@dataclass
class Model:
    settings: Settings
    timezone: str = "UTC"
    currency: str = "USD"
    max_calls: int | None = None  # the tenant's cap (D25)
    charge_inbound: bool = False  # D27's tenant setting
    toll_free_numbers: frozenset[str] = frozenset()
    users: dict[str, User] = field(default_factory=dict)
    calls: dict[str, Call] = field(default_factory=dict)
    # month -> pool (country, plan, kind) -> minutes
    used: dict[str, Counter[tuple[str, str, str]]] = field(default_factory=dict)
    reserved: dict[str, Counter[tuple[str, str, str]]] = field(default_factory=dict)
    # month -> user id -> micro-units spent / reserved on credits (D22)
    spent: dict[str, Counter[str]] = field(default_factory=dict)
    spend_reserved: dict[str, Counter[str]] = field(default_factory=dict)
    balance: int = 0  # D19, micro-units
    wallet_reserved: int = 0
    topups: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (amount, balance)

    @property
    def grant_max(self) -> int:
        return self.settings.grant_seconds

    # -- time ------------------------------------------------------------------------------

    def month_of(self, ts: int) -> str:
        """D7: the calendar month in the tenant's zone."""
        return datetime.fromtimestamp(ts, UTC).astimezone(ZoneInfo(self.timezone)).strftime(
            "%Y%m")

    # -- users, licences, pools (D2-D6) ------------------------------------------------------

    def put_user(self, uid: str, user: User) -> None:
        self.users[uid] = user

    def delete_user(self, uid: str) -> bool:
        return self.users.pop(uid, None) is not None

    def minutes_per_user(self, country: str, plan: str, kind: str) -> int:
        p = self.settings.plans[plan]
        if kind == "domestic":
            return p.domestic_minutes_for(country)
        return p.international_minutes_for(country)

    def licences(self, country: str, plan: str) -> int:
        """D4: users of that country ASSIGNED that plan (with a pool there)."""
        if not any(self.minutes_per_user(country, plan, k) for k in POOL_KINDS):
            return 0
        return sum(1 for u in self.users.values() if (u.country, u.plan) == (country, plan))

    def capacity(self, pool: tuple[str, str, str]) -> int:
        country, plan, kind = pool
        return self.licences(country, plan) * self.minutes_per_user(country, plan, kind)

    def pool_rows(self, month: str) -> dict[tuple[str, str, str], dict[str, float | None]]:
        """GET /pools of a month, without the rows that are all zero."""
        ids = {(u.country, u.plan, k) for u in self.users.values() for k in POOL_KINDS
               if self.minutes_per_user(u.country, u.plan, k) > 0}
        ids |= {p for p, v in self.used.get(month, Counter()).items() if v}
        ids |= {p for p, v in self.reserved.get(month, Counter()).items() if v}
        rows = {}
        for pool in ids:
            lic = self.licences(pool[0], pool[1])
            used = self.used.get(month, Counter())[pool]
            res = self.reserved.get(month, Counter())[pool]
            if lic == 0 and used == 0 and res == 0:
                continue
            cap = self.capacity(pool)
            rows[pool] = {
                "licenses": lic, "minutes_per_user": self.minutes_per_user(*pool),
                "capacity_minutes": cap, "used_minutes": used, "reserved_minutes": res,
                "remaining_minutes": max(0, cap - used - res),
                "percent_used": round((used + res) * 100 / cap, 1) if cap else None,
            }
        return rows

    # -- credits (D19) ---------------------------------------------------------------------

    def topup(self, key: str, amount: int) -> tuple[int, str | None]:
        """(status, balance answered). Same key, same amount: the first answer again."""
        seen = self.topups.get(key)
        if seen is not None:
            if seen[0] != amount:
                return 409, None
            return 200, money(seen[1])
        self.balance += amount
        self.topups[key] = (amount, self.balance)
        return 200, money(self.balance)

    # -- call control ----------------------------------------------------------------------

    def active_calls(self, uid: str | None = None) -> int:
        return sum(1 for c in self.calls.values() if c.state == "active" and c.counted
                   and (uid is None or c.uid == uid))

    @staticmethod
    def _answer(decision: str, reason: str, source: str | None = None, granted: int = 0,
                expires: int | None = None) -> dict[str, Any]:
        """api.md's decision; ``expires``: when the switch must cut the call (the new grant,
        or on a denied extension the current one)."""
        allowed = decision == "allow"
        return {
            "decision": decision, "reason": reason, "source": source if allowed else None,
            "granted_seconds": granted if allowed else 0, "grant_expires_at": expires,
            "sip_code": None if allowed else SIP_CODES[reason],
        }

    def authorize(self, call_id: str, now: int, direction: str, uid: str | None, to: str,
                  from_: str | None = None, started: int | None = None) -> dict[str, Any]:
        known = self.calls.get(call_id)
        if known is not None:  # D32
            return known.answer
        started = now if started is None else started
        call = Call(call_id, {}, "denied", uid or "", self.month_of(started), started)
        if direction == "outbound":
            decision, reason, granted = self._outbound(call, uid or "", to)
        else:
            decision, reason, granted = self._inbound(call, to, from_ or "")
        if decision == "allow":
            call.state, call.horizon, call.expires = "active", granted, now + granted
            call.answer = self._answer(decision, reason, "free" if call.free else reason,
                                       granted, call.expires)
        else:
            call.answer = self._answer(decision, reason)
        self.calls[call_id] = call
        return call.answer

    def _outbound(self, call: Call, uid: str, to: str) -> tuple[str, str, int]:
        """D11-D26 in the order: emergency > unknown user > invalid / blocked > no plan >
        dial-out policy > concurrency > domestic toll-free > pool > credits."""
        dest = NUMBERS[to]
        user = self.users.get(uid)
        if dest.kind == "emergency":
            # D11, life safety first: a caller we cannot place still gets the call.
            if user is None or shortnumberinfo.is_emergency_number(to, user.country):
                call.free = True
                return "allow", "emergency", self.grant_max
            return "deny", "invalid_destination", 0
        if user is None:
            return "deny", "unknown_user", 0  # D26
        if dest.e164 is None:
            return "deny", "invalid_destination", 0  # D14
        assert dest.country is not None
        digits = dest.e164[1:]
        if any(digits.startswith(p) for p in self.settings.blocked_prefixes):
            return "deny", "destination_blocked", 0  # D13, operator block list
        rules = self.settings.rules_for(dest.country)
        if dest.kind == "premium_rate" and not rules.allow_premium_rate:
            return "deny", "destination_blocked", 0
        if dest.kind == "shared_cost" and not rules.allow_shared_cost:
            return "deny", "destination_blocked", 0
        if self.settings.plans[user.plan].outbound == "none":
            return "deny", "no_calling_plan", 0  # D24
        domestic = self.settings.is_domestic(user.country, dest.country)  # D9
        if user.dial_out == "none" or (user.dial_out == "domestic_only" and not domestic):
            return "deny", "dial_out_policy", 0  # D23
        if (user.max_calls is not None and self.active_calls(uid) >= user.max_calls) or (
                self.max_calls is not None and self.active_calls() >= self.max_calls):
            return "deny", "concurrency_limit", 0  # D25
        call.counted = True
        if dest.kind == "toll_free" and domestic:  # D12
            call.free = True
            return "allow", "toll_free", self.grant_max
        kind = "domestic" if domestic else "international"
        call.pool = (user.country, user.plan, kind)  # D3, D5, D15, D16
        call.credits_only = dest.kind in ("premium_rate", "shared_cost")  # D13
        call.credits_allowed = user.credits_allowed  # D21
        call.spend_limit = user.spend_limit  # D22
        call.rate = self.settings.rate_decks[self.currency].lookup(dest.e164, "outbound")
        granted, what = self._pay(call)
        if granted == 0:
            call.counted = False
            return "deny", what, 0
        return "allow", what, granted

    def _inbound(self, call: Call, to: str, from_: str) -> tuple[str, str, int]:
        if to in self.toll_free_numbers:  # D28: credits at the origin's toll-free rate
            call.credits_only = True
            call.rate = self.settings.rate_decks[self.currency].lookup(
                from_, "toll_free_inbound")
            granted, _ = self._pay(call)
            if granted == 0:
                return "deny", "insufficient_credits", 0
            return "allow", "credits", granted
        owner = next((uid for uid, u in self.users.items() if u.number == to), None)
        if owner is None:
            return "deny", "unknown_user", 0
        call.uid = owner
        if not self.charge_inbound:  # D27
            call.free = True
            return "allow", "inbound_free", self.grant_max
        # D27's option: D15 for inbound calls, credits at the rate of the caller's number.
        user = self.users[owner]
        call.pool = (user.country, user.plan, "domestic")
        call.credits_allowed, call.spend_limit = user.credits_allowed, user.spend_limit
        call.rate = self.settings.rate_decks[self.currency].lookup(from_, "outbound")
        granted, what = self._pay(call)
        if granted == 0:
            return "deny", what, 0
        return "allow", what, granted

    def _pay(self, call: Call) -> tuple[int, str]:
        """One grant of at most grant_max more seconds for ``call`` (D15-D22, D29):
        its pool unless it moved to credits (D18), then credits. Returns (seconds, source)
        or (0, deny reason)."""
        pool_existed = False
        if call.pool is not None and call.cred_s == 0 and not call.credits_only:
            capacity = self.capacity(call.pool)
            if capacity > 0:
                pool_existed = True
                used = self.used.setdefault(call.month, Counter())
                res = self.reserved.setdefault(call.month, Counter())
                remaining = max(0, capacity - used[call.pool] - res[call.pool])  # D6
                # Seconds up to pool_r * 60 are paid for already; beyond, whole minutes.
                g = min(self.grant_max, (call.pool_r + remaining) * 60 - call.pool_s)
                if g > 0:
                    new_r = ceil_div(call.pool_s + g, 60)
                    res[call.pool] += new_r - call.pool_r
                    if new_r > call.pool_r:  # conservation at grant time
                        assert used[call.pool] + res[call.pool] <= capacity
                    call.pool_s, call.pool_r = call.pool_s + g, new_r
                    return g, call.pool[2] + "_pool"
        if not call.credits_allowed:
            return 0, "credits_not_allowed"  # D21
        if call.rate is None:
            return 0, "destination_blocked"  # nothing can rate it: credits cannot pay
        want = call.cred_s + self.grant_max
        length = max_affordable_seconds(self.balance - self.wallet_reserved + call.cred_r,
                                        call.rate, want)
        if call.spend_limit is not None and call.uid:  # D22
            month_spend = (self.spent.get(call.month, Counter())[call.uid]
                           + self.spend_reserved.get(call.month, Counter())[call.uid]
                           - call.cred_r)
            by_limit = max_affordable_seconds(call.spend_limit - month_spend, call.rate, want)
            if by_limit <= call.cred_s:
                return 0, "spend_limit_reached"
            length = min(length, by_limit)
        if length <= call.cred_s:  # D17
            return 0, "pool_exhausted_no_credits" if pool_existed else "insufficient_credits"
        new_r = credit_cost_micro(length, call.rate)
        self._reserve_credits(call, new_r - call.cred_r)
        g = length - call.cred_s
        call.cred_s, call.cred_r = length, new_r
        assert 0 <= self.wallet_reserved <= self.balance  # D19
        return g, "credits"

    def _reserve_credits(self, call: Call, delta: int) -> None:
        self.wallet_reserved += delta
        if call.uid:
            self.spend_reserved.setdefault(call.month, Counter())[call.uid] += delta

    def _truncate(self, call: Call, used: int) -> None:
        """Shrink the horizon to ``used`` seconds, releasing what lies beyond."""
        if used <= call.pool_s:
            call.pool_s, call.cred_s = used, 0
        else:
            call.cred_s = used - call.pool_s
        pool_r = ceil_div(call.pool_s, 60)
        if call.pool is not None:
            self.reserved.setdefault(call.month, Counter())[call.pool] += pool_r - call.pool_r
        cred_r = credit_cost_micro(call.cred_s, call.rate) if call.rate else 0
        self._reserve_credits(call, cred_r - call.cred_r)
        call.pool_r, call.cred_r = pool_r, cred_r

    def extend(self, call_id: str, now: int, used: int) -> tuple[int, dict[str, Any] | None]:
        """D30: (HTTP status, answer)."""
        call = self.calls.get(call_id)
        if call is None:
            return 404, None
        if call.state != "active":
            return 409, None
        if used < call.reported:
            return 400, None
        u = min(used, call.horizon)
        call.reported = u  # as taken: time past the horizon was never granted
        if call.free:
            call.horizon, call.expires = u + self.grant_max, now + self.grant_max
            return 200, self._answer("allow", call.answer["reason"], "free", self.grant_max,
                                     call.expires)
        saved = copy.deepcopy((call, self.reserved, self.wallet_reserved, self.spend_reserved))
        self._truncate(call, u)
        granted, what = self._pay(call)
        if granted == 0:
            # The call may still run to the end of its current grant: keep what it holds.
            old, self.reserved, self.wallet_reserved, self.spend_reserved = saved
            self.calls[call_id] = old
            return 200, self._answer("deny", what, expires=old.expires)
        call.horizon, call.expires = u + granted, now + granted
        return 200, self._answer("allow", what, what, granted, call.expires)

    def reap(self, now: int, grace: int) -> None:
        """D33: a call whose grant expired ``grace`` seconds ago or more is closed, billed
        as fully used."""
        for call in self.calls.values():
            if (call.state == "active" and call.expires is not None
                    and call.expires + grace <= now):
                self._close(call, call.horizon, "expired")

    def end(self, call_id: str, duration: int) -> tuple[int, dict[str, Any] | None]:
        """D31: (HTTP status, bill); a repeated end answers the first bill."""
        call = self.calls.get(call_id)
        if call is None:
            return 404, None
        if call.bill is None:
            self._close(call, duration, "ended")
        return 200, call.bill

    def _close(self, call: Call, duration: int, state: str) -> None:
        billed = min(duration, call.horizon)  # a denied call's horizon is 0
        pool_min, credits = 0, 0
        if not call.free:
            pool_used = min(billed, call.pool_s)
            pool_min = ceil_div(pool_used, 60)  # D8
            credits = credit_cost_micro(billed - pool_used, call.rate) if call.rate else 0
        if call.pool is not None:
            self.reserved.setdefault(call.month, Counter())[call.pool] -= call.pool_r
            self.used.setdefault(call.month, Counter())[call.pool] += pool_min
        self._reserve_credits(call, -call.cred_r)
        if call.uid:
            self.spent.setdefault(call.month, Counter())[call.uid] += credits
        self.balance -= credits
        assert 0 <= self.wallet_reserved <= self.balance  # D19
        call.pool_r = call.cred_r = 0
        call.state = state
        kind = call.pool[2] if call.pool else ""
        call.bill = {
            "state": state, "duration_seconds": duration,
            "billed": {
                "domestic_pool_minutes": pool_min if kind == "domestic" else 0,
                "international_pool_minutes": pool_min if kind == "international" else 0,
                "credits": money(credits),
            },
            "overrun_seconds": duration - billed,
        }
