"""The truth checker of the fault scenarios (issue 11): what a client was answered, against
what Redis holds once things settle.

A scenario records every answer in :class:`Answers` (allow, deny with its reason, another
HTTP status, or no answer at all), waits with :func:`settle` until the tenant's state stops
changing (the gateway has nothing in flight and any compensation has landed), then
:func:`check` reads the tenant's keys in one atomic step and reports every departure:

* phantom: a call not answered ``allow`` that is active, holds a reservation (pool minutes,
  credits) or a concurrency slot, is in the partition's ``active`` zset (the reaper would
  close it and bill it as fully used), or has been billed;
* lost end: an end answered 200 whose call is not recorded ended with that bill;
* lost allow: a call answered ``allow`` that Redis does not hold (neither active nor ended);
* stray: a call of the tenant in the ``active`` zset that the client never sent;
* sums: the tenant's reserved credits, active-call count, per-user active counts and the
  month's reserved pool minutes and credits equal what the live allowed calls hold; the
  balance fell by the acknowledged credit bills and the pools' used minutes rose by the
  acknowledged pool bills, to the micro-unit and the minute.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster

from gateway.redis.keys import active_member, call_fields, tenant_keys
from gateway.rules.money import parse_money

ALLOW = "allow"
UNAVAILABLE = "deny:service_unavailable"
CALL_STATES_CLOSED = ("ended", "expired")


@dataclass
class CallAnswers:
    """What the client was told about one call (times: time.monotonic())."""

    call_id: str
    user_id: str
    authorize: str = ""  # allow | deny:<reason> | http:<status> | none:<error>
    authorize_at: float = 0.0
    end_status: list[str] = field(default_factory=list)  # each attempt: "200", "503", none:...
    end_at: list[float] = field(default_factory=list)
    bill: dict[str, Any] | None = None  # the 'billed' of the end answered 200

    @property
    def allowed(self) -> bool:
        return self.authorize == ALLOW

    @property
    def end_acked(self) -> bool:
        return self.bill is not None


def authorize_outcome(status: int | None, body: Any, error: BaseException | None) -> str:
    if error is not None or status is None:
        return f"none:{type(error).__name__}"
    if status != 200 or not isinstance(body, dict):
        return f"http:{status}"
    if body.get("decision") == "allow":
        return ALLOW
    return f"deny:{body.get('reason')}"


class Answers:
    """Every answer a client got in a scenario, by call id."""

    def __init__(self) -> None:
        self.calls: dict[str, CallAnswers] = {}

    def sent(self, call_id: str, user_id: str) -> None:
        """An authorize is about to be written: until its answer it counts as no answer."""
        self.calls[call_id] = CallAnswers(call_id, user_id, "none:unanswered",
                                          time.monotonic())

    def authorized(self, call_id: str, user_id: str, status: int | None, body: Any,
                   error: BaseException | None = None) -> str:
        outcome = authorize_outcome(status, body, error)
        self.calls[call_id] = CallAnswers(call_id, user_id, outcome, time.monotonic())
        return outcome

    def ended(self, call_id: str, status: int | None, body: Any,
              error: BaseException | None = None) -> bool:
        """Record one end attempt; True when it was acknowledged (200 with a bill)."""
        call = self.calls[call_id]
        call.end_at.append(time.monotonic())
        if error is not None or status is None:
            call.end_status.append(f"none:{type(error).__name__}")
            return False
        call.end_status.append(str(status))
        if status == 200 and isinstance(body, dict):
            call.bill = body["billed"]
            return True
        return False

    def outcomes(self) -> Counter[str]:
        return Counter(c.authorize for c in self.calls.values())

    def ends_to_retry(self) -> list[CallAnswers]:
        """Allowed calls whose end was sent and not acknowledged (a switch retries those)."""
        return [c for c in self.calls.values()
                if c.allowed and c.end_status and not c.end_acked
                and c.end_status[-1] != "404"]

    def unavailable_times(self) -> list[float]:
        """When each service_unavailable answer arrived: authorize denies and 503 ends."""
        times = [c.authorize_at for c in self.calls.values() if c.authorize == UNAVAILABLE]
        for c in self.calls.values():
            times += [t for s, t in zip(c.end_status, c.end_at, strict=True) if s == "503"]
        return sorted(times)

    def unavailable_span_s(self) -> float:
        times = self.unavailable_times()
        return times[-1] - times[0] if times else 0.0


# -- reading Redis ---------------------------------------------------------------------------

# Everything the check needs of one tenant, read in one atomic step (every key shares the
# tenant's hash tag, so this runs on a cluster too).
_SNAPSHOT_LUA = """
local out = {}
out[1] = redis.call('HGETALL', KEYS[1])
out[2] = redis.call('HGETALL', KEYS[2])
out[3] = redis.call('ZRANGE', KEYS[3], 0, -1)
for i = 4, #KEYS do
  -- a closed call is a string, its compact record (lua/00_lib.lua close_call)
  if redis.call('TYPE', KEYS[i]).ok == 'string' then
    out[i] = {'z', redis.call('GET', KEYS[i])}
  else
    out[i] = redis.call('HGETALL', KEYS[i])
  end
end
return out
"""


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


@dataclass(frozen=True)
class Snapshot:
    tenant: dict[str, str]
    user_active: dict[str, str]
    active: frozenset[str]  # members of the partition's active zset that are this tenant's
    months: dict[str, dict[str, str]]  # YYYYMM -> month hash
    calls: dict[str, dict[str, str] | None]  # call id -> fields (packed ones unpacked)


def redis_client(url: str) -> Any:
    """A redis-py client of ``url`` (``redis://`` or ``redis+cluster://``), strings out."""
    if url.startswith("redis+cluster://"):
        seeds = [redis.cluster.ClusterNode(h.rpartition(":")[0], int(h.rpartition(":")[2]))
                 for h in url.removeprefix("redis+cluster://").split(",")]
        return redis.cluster.RedisCluster(startup_nodes=seeds, decode_responses=True,
                                          socket_timeout=2.0)
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=2.0)


def _utc_months(now: float) -> set[str]:
    return {time.strftime("%Y%m", time.gmtime(now + d)) for d in (-86_400, 0, 86_400)}


def snapshot(client: Any, tenant_id: str, partitions: int,
             call_ids: Iterable[str]) -> Snapshot:
    """The tenant's state in one atomic read: its hash, per-user active counts, its members
    of the active zset, the month hashes its calls reserve in, and every call in
    ``call_ids``. Months are those of the calls (read again if a call names another)."""
    k = tenant_keys(tenant_id, partitions)
    ids = list(call_ids)
    months = sorted(_utc_months(time.time()))
    for _ in range(3):
        keys = [k.tenant, k.user_active, k.partition.active, *(k.month(m) for m in months),
                *(k.call(c) for c in ids)]
        out = client.eval(_SNAPSHOT_LUA, len(keys), *keys)
        calls = {cid: (call_fields(_pairs(flat)) if flat else None)
                 for cid, flat in zip(ids, out[3 + len(months):], strict=True)}
        needed = {rec["mon"] for rec in calls.values() if rec and rec.get("mon")}
        if needed <= set(months):
            prefix = tenant_id + "/"
            return Snapshot(
                tenant=_pairs(out[0]), user_active=_pairs(out[1]),
                active=frozenset(str(m) for m in out[2] if str(m).startswith(prefix)),
                months={m: _pairs(flat) for m, flat in zip(months, out[3:], strict=False)},
                calls=calls)
        months = sorted(set(months) | needed)
    raise AssertionError(f"calls of {tenant_id} name months that keep changing")


def settle(read: Callable[[], Snapshot], *, stable_s: float = 1.0, deadline_s: float = 60.0,
           poll_s: float = 0.1, pending: Callable[[], int] | None = None) -> Snapshot:
    """Poll ``read`` until its result has not changed for ``stable_s`` (and ``pending``, if
    given, says nothing is in flight); AssertionError after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    last = read()
    since = time.monotonic()
    while True:
        time.sleep(poll_s)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= stable_s and (pending is None or pending() == 0):
            return now
        if time.monotonic() > end:
            raise AssertionError(f"the tenant's state did not settle within {deadline_s} s")


# -- the check -----------------------------------------------------------------------------

def _num(value: str | None) -> int:
    return int(value) if value else 0


@dataclass
class Report:
    calls: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    ends_acked: int = 0
    phantoms: list[str] = field(default_factory=list)  # "call-id (outcome): what"
    lost_ends: list[str] = field(default_factory=list)
    lost_allows: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    sums: list[str] = field(default_factory=list)
    phantom_credits_micro: int = 0
    phantom_pool_minutes: int = 0

    @property
    def ok(self) -> bool:
        return not (self.phantoms or self.lost_ends or self.lost_allows or self.strays
                    or self.sums)

    def summary(self) -> str:
        lines = [
            f"calls {self.calls}: {dict(sorted(self.outcomes.items()))}; "
            f"ends acknowledged {self.ends_acked}",
            f"phantoms {len(self.phantoms)} (holding {self.phantom_credits_micro} micro-units "
            f"and {self.phantom_pool_minutes} pool minutes), lost ends {len(self.lost_ends)}, "
            f"lost allows {len(self.lost_allows)}, strays {len(self.strays)}, "
            f"sum mismatches {len(self.sums)}",
        ]
        for name in ("phantoms", "lost_ends", "lost_allows", "strays", "sums"):
            items: list[str] = getattr(self, name)
            lines += [f"  {name}: {item}" for item in items[:10]]
            if len(items) > 10:
                lines.append(f"  {name}: ... {len(items) - 10} more")
        return "\n".join(lines)


def _phantom(snap: Snapshot, tenant_id: str, call: CallAnswers) -> str:
    """What a call not answered allow wrongly holds ("" when nothing)."""
    rec = snap.calls.get(call.call_id)
    wrong = []
    if active_member(tenant_id, call.call_id) in snap.active:
        wrong.append("in the active zset")
    if rec is not None:
        if rec.get("st") == "active":
            wrong.append("active")
        if _num(rec.get("pr")) or _num(rec.get("cr")):
            wrong.append(f"reserves {rec.get('pr')} min / {rec.get('cr')} micro")
        if _num(rec.get("bc")) or _num(rec.get("bdp")) or _num(rec.get("bip")):
            wrong.append(f"billed {rec.get('bc')} micro / {rec.get('bdp')}+{rec.get('bip')} min")
    return ", ".join(wrong)


def check(snap: Snapshot, answers: Answers, tenant_id: str, balance_before_micro: int,
          used_before: dict[str, int] | None = None) -> Report:
    """Compare what ``answers`` says the client was told with ``snap``.

    ``balance_before_micro``: the tenant's balance before the scenario's first call;
    ``used_before``: the month hashes' ``u:`` fields then ("YYYYMM u:POOL" -> minutes).
    """
    report = Report(calls=len(answers.calls), outcomes=answers.outcomes())
    live_cr = 0
    live_act = 0
    live_uact: Counter[str] = Counter()
    reserved: Counter[str] = Counter()  # "YYYYMM r:POOL" / "YYYYMM sr:U" -> amount
    billed_credits = 0
    used: Counter[str] = Counter(used_before or {})
    spent: Counter[str] = Counter()
    for call in answers.calls.values():
        rec = snap.calls.get(call.call_id)
        if not call.allowed:
            what = _phantom(snap, tenant_id, call)
            if what:
                report.phantoms.append(f"{call.call_id} ({call.authorize}): {what}")
                if rec is not None:
                    report.phantom_credits_micro += _num(rec.get("cr"))
                    report.phantom_pool_minutes += _num(rec.get("pr"))
            continue
        if rec is None or rec.get("st") not in ("active", *CALL_STATES_CLOSED):
            report.lost_allows.append(f"{call.call_id}: {rec and rec.get('st')}")
            continue
        mon = rec.get("mon", "")
        if call.end_acked:
            report.ends_acked += 1
            assert call.bill is not None
            credits = parse_money(call.bill["credits"], "credits", max_decimals=6,
                                  allow_zero=True)
            minutes = (int(call.bill["domestic_pool_minutes"])
                       + int(call.bill["international_pool_minutes"]))
            got = (_num(rec.get("bc")), _num(rec.get("bdp")) + _num(rec.get("bip")))
            if rec.get("st") not in CALL_STATES_CLOSED or got != (credits, minutes):
                report.lost_ends.append(
                    f"{call.call_id}: acknowledged {credits} micro / {minutes} min, Redis "
                    f"holds {rec.get('st')} {got[0]} micro / {got[1]} min")
            billed_credits += credits
            if rec.get("pool"):
                used[f"{mon} u:{rec['pool']}"] += minutes
            if call.user_id and credits:
                spent[f"{mon} s:{call.user_id}"] += credits
            continue
        if rec.get("st") != "active":
            # Ended or expired without an acknowledged end: billed behind the client's back.
            report.lost_ends.append(f"{call.call_id}: {rec.get('st')} with no end answered "
                                    f"200 (ends: {call.end_status})")
            continue
        live_cr += _num(rec.get("cr"))
        if rec.get("cnt") == "1":
            live_act += 1
            live_uact[rec.get("uid", "")] += 1
        if rec.get("pool") and _num(rec.get("pr")):
            reserved[f"{mon} r:{rec['pool']}"] += _num(rec.get("pr"))
        if rec.get("uid") and _num(rec.get("cr")):
            reserved[f"{mon} sr:{rec['uid']}"] += _num(rec.get("cr"))
    known = {active_member(tenant_id, c) for c in answers.calls}
    report.strays = sorted(snap.active - known)
    _compare(report, "tenant reserved credits (res)", _num(snap.tenant.get("res")), live_cr)
    _compare(report, "tenant active calls (act)", _num(snap.tenant.get("act")), live_act)
    _compare(report, "balance drop (micro)",
             balance_before_micro - _num(snap.tenant.get("bal")), billed_credits)
    for uid in set(live_uact) | {u for u, v in snap.user_active.items() if _num(v)}:
        _compare(report, f"user {uid} active calls", _num(snap.user_active.get(uid)),
                 live_uact[uid])
    month_fields: Counter[str] = Counter()
    for mon, fields in snap.months.items():
        for name, value in fields.items():
            if name.startswith(("r:", "sr:", "u:", "s:")):
                month_fields[f"{mon} {name}"] = _num(value)
    expected = reserved + used + spent
    for name in sorted(set(month_fields) | set(expected)):
        if name.split(" ", 1)[1].startswith("s:"):
            continue  # spent credits: billed_credits checks them on the balance
        _compare(report, f"month {name}", month_fields[name], expected[name])
    return report


def _compare(report: Report, what: str, got: int, expected: int) -> None:
    if got != expected:
        report.sums.append(f"{what}: Redis {got}, expected {expected} (off by "
                           f"{got - expected})")


def used_minutes(snap: Snapshot) -> dict[str, int]:
    """The month hashes' used pool minutes ("YYYYMM u:POOL" -> minutes), for check()."""
    return {f"{mon} {name}": _num(v) for mon, fields in snap.months.items()
            for name, v in fields.items() if name.startswith("u:")}
