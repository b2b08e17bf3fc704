"""Exponential back-off and state-change logging for the loops that retry a store (the
persister writing the ledger, the reaper closing calls in Redis).

One loop, one ``Outage``. While its store fails, the loop waits ``delay_min_seconds``,
doubling per failure up to ``delay_max_seconds`` (with up to 20 % jitter, so that several
persisters restarted together do not knock in step), and the log gets one line per change
of state rather than one per attempt:

- ``down``: the first failure: the error's class and a short message (no traceback for the
  expected errors of an unreachable store, ``expected_error``; one traceback, at that line
  only, for anything else);
- ``still down``: every ``still_down_every_seconds``, with the failed attempts so far, the
  last error and the backlog when the caller can tell it;
- ``recovered``: after how long, how many failed attempts, and the backlog left to catch up.

Why 0.1 s doubling to 5 s (the defaults): a blip (a PostgreSQL restart, a failover) costs
at most a fraction of a second more than the blip itself; a long outage costs the database
one attempt every 5 s, and ends with at most 5 s of extra lag, far under the 30 s of the
CallgatePersisterLagging alert. A 30 s outage takes about a dozen attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from gateway.errors import StoreUnavailable
from gateway.redis.client import RedisUnavailable, ReplyError

if TYPE_CHECKING:
    from gateway.ledger.base import Ledger

DELAY_MIN_SECONDS = 0.1
DELAY_MAX_SECONDS = 5.0
STILL_DOWN_EVERY_SECONDS = 30.0
JITTER_FRACTION = 0.2
MESSAGE_CHARS_MAX = 200

# The errors of a store that is unreachable, restarting, read-only or locked: an outage,
# not a bug, so no traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, StoreUnavailable, RedisUnavailable, ReplyError,
    sqlite3.OperationalError,
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)


def expected_error(exc: BaseException) -> bool:
    return isinstance(exc, EXPECTED_ERRORS)


def describe(exc: BaseException) -> str:
    """``Class: first line of the message``, short: for one log line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > MESSAGE_CHARS_MAX:
        text = text[:MESSAGE_CHARS_MAX] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


Backlog = Callable[[], Awaitable[int | None]]


async def _no_backlog() -> int | None:
    return None


@dataclass
class Outage:
    """The back-off state of one retrying loop, and its log lines."""

    name: str  # who retries: "persister", "reaper"
    log: logging.Logger
    delay_min_seconds: float = DELAY_MIN_SECONDS
    delay_max_seconds: float = DELAY_MAX_SECONDS
    still_down_every_seconds: float = STILL_DOWN_EVERY_SECONDS
    monotonic: Callable[[], float] = time.monotonic
    jitter: Callable[[], float] = random.random  # in [0, 1)
    failures_total: int = 0  # failed attempts since start
    down_since: float | None = None
    failures: int = 0  # failed attempts in the current outage
    part: str = ""  # what is down: "ledger", "redis"
    _delay: float = 0.0
    _next_report: float = 0.0
    last_error: str = field(default="", repr=False)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    async def failed(self, part: str, exc: BaseException, backlog: Backlog = _no_backlog
                     ) -> float:
        """Record a failed attempt; log it if the state changed or a report is due.
        Returns the seconds to wait before the next attempt."""
        now = self.monotonic()
        self.failures_total += 1
        self.failures += 1
        self.last_error = describe(exc)
        if self.down_since is None:
            self.down_since, self.part = now, part
            self._delay = self.delay_min_seconds
            self._next_report = now + self.still_down_every_seconds
            msg = "%s: %s down (%s); retrying in %.1f s, backing off to %.0f s"
            args = (self.name, part, self.last_error, self._delay, self.delay_max_seconds)
            if expected_error(exc):
                self.log.warning(msg, *args)
            else:
                self.log.error(msg, *args, exc_info=exc)
        else:
            self._delay = min(self._delay * 2, self.delay_max_seconds)
            self.part = part
            if now >= self._next_report:
                self._next_report = now + self.still_down_every_seconds
                self.log.warning("%s: %s still down after %.0f s (%s, last %s); %s",
                                 self.name, part, now - self.down_since,
                                 _attempts(self.failures), self.last_error,
                                 _backlog_text(await _safe(backlog)))
        return self._delay * (1 - JITTER_FRACTION * self.jitter())

    async def succeeded(self, backlog: Backlog = _no_backlog, written: int | None = None
                        ) -> None:
        """Record a successful attempt; logs ``recovered`` after an outage (with the
        entries the recovering attempt wrote, when given)."""
        if self.down_since is None:
            return
        took = self.monotonic() - self.down_since
        wrote = "" if written is None else f"wrote {written} entries, "
        self.log.info("%s: %s recovered after %.1f s (%s); %s%s", self.name, self.part,
                      took, _attempts(self.failures), wrote,
                      _backlog_text(await _safe(backlog)))
        self.down_since, self.failures, self.part = None, 0, ""


def _attempts(n: int) -> str:
    return f"{n} failed attempt{'' if n == 1 else 's'}"


async def _safe(backlog: Backlog) -> int | None:
    try:
        return await backlog()
    except Exception:  # the backlog is a courtesy of the log line: never fail over it
        return None


def _backlog_text(entries: int | None) -> str:
    return "backlog unknown" if entries is None else f"backlog {entries} entries"


async def open_ledger_when_up(url: str, stop: asyncio.Event, outage: Outage) -> Ledger | None:
    """The ledger, opened as soon as its database answers (backing off meanwhile), or None
    when ``stop`` is set first. A URL the ledger cannot use at all (ValueError) raises."""
    from gateway.ledger import open_ledger

    while not stop.is_set():
        try:
            ledger = await open_ledger(url)
        except ValueError:
            raise
        except Exception as exc:
            wait = await outage.failed("ledger", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        else:
            await outage.succeeded()
            return ledger
    return None
