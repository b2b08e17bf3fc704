"""The credit-charging formulas of D20 in plain Python: the reference the Lua port
(lua/00_lib.lua: billable_seconds, credit_cost, max_affordable) is tested against. Same
formulas, same rounding, integers only."""

from __future__ import annotations

from gateway.rules.money import MICRO_PER_MONEY_STEP
from gateway.rules.rating import Rate

SECONDS_PER_MINUTE = 60
# 60 s x 100 micro-units: cost x 60 divided by this gives whole 0.0001 steps.
_COST_DIVISOR = SECONDS_PER_MINUTE * MICRO_PER_MONEY_STEP


def billable_seconds(duration_seconds: int, initial: int, subsequent: int) -> int:
    """Seconds billed for an answered duration under increments A/B (D20).

    0 if `duration_seconds` <= 0 (unanswered), else max(A, A + ceil((d - A) / B) * B):
    at least A, then whole steps of B, rounded up. Always >= d and on the grid A + kB.
    """
    if initial < 1 or subsequent < 1:
        raise ValueError("increments must be >= 1 second")
    if duration_seconds <= 0:
        return 0
    steps = _ceil_div(duration_seconds - initial, subsequent)
    return max(initial, initial + steps * subsequent)


def credit_cost_micro(duration_seconds: int, rate: Rate) -> int:
    """Credits charged for one call, in micro-units (D20).

    0 if unanswered; else connection fee + rate * billable / 60, the sum rounded UP to
    0.0001 (100 micro-units) once per call:

        cost = 100 * ceil((60 * F + R * b) / 6000)

    with F the fee (micro), R the rate (micro per minute), b the billable seconds.
    """
    billable = billable_seconds(
        duration_seconds, rate.initial_increment_seconds, rate.subsequent_increment_seconds
    )
    if billable == 0:
        return 0
    # Scaled by 60 so that the per-second rate stays an integer: micro-units * 60.
    cost_micro_x60 = SECONDS_PER_MINUTE * rate.connection_fee_micro
    cost_micro_x60 += rate.rate_per_minute_micro * billable
    return MICRO_PER_MONEY_STEP * _ceil_div(cost_micro_x60, _COST_DIVISOR)


def max_affordable_seconds(budget_micro: int, rate: Rate, cap_seconds: int) -> int:
    """The largest L in [0, cap] with credit_cost_micro(L, rate) <= budget (D19, D29).

    Closed form, integers only (F fee, R rate per minute, both micro; A/B increments):

        U = floor(budget / 100)                   whole 0.0001 steps the budget holds
        cost(b) <= budget  <=>  60F + R*b <= 6000U          (ceil(x) <= U <=> x <= U)
        if R == 0:  L = cap if 60F <= 6000U else 0
        b_max = floor((6000U - 60F) / R)          most billable seconds payable
        if b_max < A:  L = 0                      not even the first increment
        L = min(cap, A + floor((b_max - A) / B) * B)

    The last line holds because billable(d) >= d, billable(d) lies on the grid A + kB and
    billable(A + kB) = A + kB. cost is non-decreasing in d, so every L' <= L is payable too.
    A budget below zero (e.g. a spend limit lowered below what was already spent) buys 0,
    even at a zero rate.
    Lua note: Redis runs Lua 5.1, whose numbers are doubles (exact integers up to 2^53).
    6000U ~ 60 * budget passes 2^53 above ~1.5 * 10^14 micro-units (150 million currency
    units); a port must cap the budget it feeds in (a grant never needs more) or divide first.
    """
    if cap_seconds < 0:
        raise ValueError(f"cap_seconds must be >= 0, got {cap_seconds}")
    if budget_micro < 0:
        return 0
    steps_payable = budget_micro // MICRO_PER_MONEY_STEP
    payable_x60 = _COST_DIVISOR * steps_payable
    headroom_x60 = payable_x60 - SECONDS_PER_MINUTE * rate.connection_fee_micro
    if headroom_x60 < 0:
        return 0
    if rate.rate_per_minute_micro == 0:
        return cap_seconds
    billable_max = headroom_x60 // rate.rate_per_minute_micro
    initial, subsequent = rate.initial_increment_seconds, rate.subsequent_increment_seconds
    if billable_max < initial:
        return 0
    return min(cap_seconds, initial + (billable_max - initial) // subsequent * subsequent)


def _ceil_div(numerator: int, denominator: int) -> int:
    """ceil(numerator / denominator) for a positive denominator, exact for any int."""
    return -(-numerator // denominator)
