"""Time, injectable: the gateway asks a Clock, tests drive a ManualClock across months."""

from __future__ import annotations

import functools
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to (tests, simulations)."""

    def __init__(self, start: float) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def set(self, t: float) -> None:
        self._t = t

    def advance(self, seconds: float) -> None:
        self._t += seconds


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _month_of(ts: int, tz: str) -> str:
    return datetime.fromtimestamp(ts, zone(tz)).strftime("%Y%m")


# tz -> (first second of the month, first second of the next month, YYYYMM): the hot path
# asks for the current month on every authorize; zoneinfo arithmetic costs microseconds.
_month_spans: dict[str, tuple[int, int, str]] = {}


def month_of(ts: int, tz: str) -> str:
    """YYYYMM of the instant ts in time zone tz: the month a call is charged to (D7)."""
    span = _month_spans.get(tz)
    if span is not None and span[0] <= ts < span[1]:
        return span[2]
    month = _month_of(ts, tz)
    y, m = int(month[:4]), int(month[4:])
    z = zone(tz)
    start = int(datetime(y, m, 1, tzinfo=z).timestamp())
    end = int(datetime(y + m // 12, m % 12 + 1, 1, tzinfo=z).timestamp())
    # Cache only spans that are exact (a zone whose clocks jump at midnight on the 1st
    # would make local midnight ambiguous or missing: such a zone is never cached).
    if (start <= ts < end and _month_of(start, tz) == month and _month_of(start - 1, tz) != month
            and _month_of(end - 1, tz) == month and _month_of(end, tz) != month):
        if len(_month_spans) > 10_000:
            _month_spans.clear()
        _month_spans[tz] = (start, end, month)
    return month


def previous_month(yyyymm: str) -> str:
    y, m = int(yyyymm[:4]), int(yyyymm[4:])
    return f"{y - 1}12" if m == 1 else f"{y}{m - 1:02d}"


# Every UTC offset in use lies within -12 h .. +14 h.
_OFFSET_BOUND = timedelta(hours=14)


@functools.lru_cache(maxsize=64)
def candidate_months(now: int, clock_skew_seconds: int) -> tuple[str, str, str]:
    """The months (any time zone) a call still alive at ``now`` may have started in.

    A call's month is that of its start in the tenant's zone; the start lies within
    ``clock_skew_seconds`` of its authorization, which precedes ``now``. So it is at most
    the UTC month of now + skew + 14 h and, for any call younger than about four weeks, at
    least the month before the UTC month of now - 14 h. Knowing no time zone keeps extend
    and end one round trip with no tenant lookup.
    """
    t = datetime.fromtimestamp(now, UTC)
    low = (t - _OFFSET_BOUND).strftime("%Y%m")
    high = (t + _OFFSET_BOUND + timedelta(seconds=clock_skew_seconds)).strftime("%Y%m")
    return previous_month(low), low, high


@functools.lru_cache(maxsize=4096)  # answers repeat the same few seconds (now + grant)
def rfc3339(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# RFC 3339 date-time exactly (section 5.6): fromisoformat alone also takes ISO 8601 forms
# such as week dates, basic format or hour-only offsets.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def parse_rfc3339(text: str) -> int | None:
    """Seconds since the epoch of an RFC 3339 date-time, else None."""
    if _RFC3339.fullmatch(text) is None:
        return None
    try:
        dt = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:  # e.g. month 13
        return None
    return int(dt.timestamp())
