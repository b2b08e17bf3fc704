"""Money as integers: micro-units (10^-6 of the currency) inside, decimal strings outside.

No float ever touches money. Amounts enter through `parse_money` / `parse_rate` and leave
through `format_money` / `format_rate`; everything in between is `int` micro-units.
Balances and bills are whole multiples of 0.0001 (`MICRO_PER_MONEY_STEP`, D20); rates may
use all six decimals because they are multiplied and rounded (up) per call.
"""

from __future__ import annotations

import re

from gateway.errors import ValidationError

MICRO_PER_UNIT = 1_000_000
# Smallest step of a balance or a bill (0.0001 of the currency, D20), in micro-units.
MICRO_PER_MONEY_STEP = 100
# Largest accepted amount, in whole currency units. 10^12 units = 10^18 micro-units, which
# still fits a signed 64-bit Redis integer (max ~9.22 * 10^18) with room for one addition.
MAX_UNITS = 10**12
MAX_MICRO = MAX_UNITS * MICRO_PER_UNIT
# Lua formats numbers with 14 significant digits (tostring, "..", cjson in events): from
# 10^14 micro-units on, a balance would reach clients as "1.0000000000001e+14" and events
# would lose digits (a 500 on top-up, found by schemathesis). Every wallet stays below.
BALANCE_MAX_MICRO = 10**14 - 100

_DECIMALS_MICRO = 6  # micro-units resolve exactly 6 decimals; more would need rounding
# JSON-number grammar without sign, exponent or leading zeros. ASCII only: Python's
# `int()` and `\d` would otherwise accept other scripts' digits and stray whitespace.
_DECIMAL_RE = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]+))?", re.ASCII)

NOT_A_STRING = 'money must be a decimal string, e.g. "25.00"'


def parse_money(
    value: object, field: str, *, max_decimals: int = 4, allow_zero: bool = False
) -> int:
    """Parse a JSON money string ("25", "25.5", "0.0001") into micro-units.

    Raises `ValidationError` naming `field` for anything else: JSON numbers (their float
    representation may already have lost the exact amount), bools, signs, exponents,
    spaces, "NaN"/"inf", "1." / ".5", more than `max_decimals` decimals, zero unless
    `allow_zero`, and amounts above `MAX_UNITS`.
    """
    if not 0 <= max_decimals <= _DECIMALS_MICRO:
        raise ValueError(f"max_decimals must be 0..{_DECIMALS_MICRO}, got {max_decimals}")
    if not isinstance(value, str):
        raise ValidationError.one(field, NOT_A_STRING)
    match = _DECIMAL_RE.fullmatch(value)
    if match is None:
        raise ValidationError.one(field, _bad_format_message(max_decimals))
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > max_decimals:
        raise ValidationError.one(field, f"money allows at most {max_decimals} decimal places")
    # Checked on the text first so a 10,000-digit string never reaches int().
    if len(whole) > len(str(MAX_UNITS)):
        raise ValidationError.one(field, f"money must not exceed {MAX_UNITS}")
    micro = int(whole) * MICRO_PER_UNIT + int(fraction.ljust(_DECIMALS_MICRO, "0"))
    if micro > MAX_MICRO:
        raise ValidationError.one(field, f"money must not exceed {MAX_UNITS}")
    if micro == 0 and not allow_zero:
        raise ValidationError.one(field, "money must be greater than zero")
    return micro


def _bad_format_message(max_decimals: int) -> str:
    return (
        'money must be a plain decimal string such as "25.00": digits, optionally a point '
        f"and up to {max_decimals} decimals; no sign, exponent, spaces or leading zeros"
    )


def parse_rate(value: str, field: str) -> int:
    """Parse a rate-deck amount (per-minute rate or connection fee) into micro-units.

    Same grammar as `parse_money`, but six decimals (the micro-unit resolution) and zero
    allowed (free destinations, rows without a connection fee).
    """
    return parse_money(value, field, max_decimals=_DECIMALS_MICRO, allow_zero=True)


def format_money(micro: int) -> str:
    """Format micro-units as a 4-decimal string ("12.5000").

    Balances and bills are whole multiples of 0.0001 by construction (D20 rounds every
    bill up to it), so a remainder means a bug upstream: raise instead of rounding it away.
    Negative amounts (adjustments, deltas) get a leading "-".
    """
    _require_int(micro)
    if micro % MICRO_PER_MONEY_STEP != 0:
        raise ValueError(f"{micro} micro-units is not a whole multiple of 0.0001; not rounding")
    sign = "-" if micro < 0 else ""
    units, remainder = divmod(abs(micro), MICRO_PER_UNIT)
    return f"{sign}{units}.{remainder // MICRO_PER_MONEY_STEP:04d}"


def format_rate(micro: int) -> str:
    """Format a non-negative rate or fee in micro-units exactly, with 6 decimals ("0.012500")."""
    _require_int(micro)
    if micro < 0:
        raise ValueError(f"a rate cannot be negative: {micro} micro-units")
    units, remainder = divmod(micro, MICRO_PER_UNIT)
    return f"{units}.{remainder:06d}"


def _require_int(micro: int) -> None:
    # A float (or a bool) reaching a formatter means money was computed inexactly somewhere.
    if not isinstance(micro, int) or isinstance(micro, bool):
        raise TypeError(f"money must be int micro-units, got {type(micro).__name__}")
