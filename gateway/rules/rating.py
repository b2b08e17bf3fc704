"""Rate decks and the credit-charging formulas of D20.

A deck maps E.164 prefixes to per-minute rates for one currency; the longest matching
prefix wins. All money is int micro-units (10^-6 of the deck's currency), all time int
seconds. The charging formulas themselves run in Redis (lua/00_lib.lua); their reference
model, which the tests compare the Lua with, is tests/support/refcost.py.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import ValidationError
from gateway.rules.money import format_rate, parse_rate

KIND_OUTBOUND = "outbound"
# The per-minute cost to the tenant of receiving a toll-free call, keyed by caller origin.
KIND_TOLL_FREE_INBOUND = "toll_free_inbound"
KINDS = (KIND_OUTBOUND, KIND_TOLL_FREE_INBOUND)

HEADER = (
    "prefix",
    "description",
    "kind",
    "rate_per_minute",
    "connection_fee",
    "initial_increment",
    "subsequent_increment",
)
DEFAULT_INCREMENT_SECONDS = 60
MAX_INCREMENT_SECONDS = 3600

# Country codes never start with 0, so neither does a prefix of an E.164 number.
_PREFIX_RE = re.compile(r"\+?([1-9][0-9]{0,14})", re.ASCII)
_INCREMENT_RE = re.compile(r"[1-9][0-9]{0,3}", re.ASCII)
_DIGITS_RE = re.compile(r"[0-9]{1,15}", re.ASCII)  # E.164: at most 15 digits
_CURRENCY_RE = re.compile(r"[A-Z]{3}", re.ASCII)


@dataclass(frozen=True, slots=True)
class Rate:
    """One deck row. Money in micro-units of the deck's currency; increments in seconds."""

    prefix: str  # digits only, no "+", e.g. "4420"
    description: str
    kind: str  # KIND_OUTBOUND | KIND_TOLL_FREE_INBOUND
    rate_per_minute_micro: int
    connection_fee_micro: int  # charged once per answered call
    initial_increment_seconds: int  # A: the minimum billed, >= 1
    subsequent_increment_seconds: int  # B: the step after A, >= 1

    def __post_init__(self) -> None:
        # Invariants the formulas rely on, checked for rows built in code too. An empty
        # prefix is allowed for placeholder rows (e.g. "no rate"); a deck refuses them.
        if self.prefix and (_DIGITS_RE.fullmatch(self.prefix) is None or self.prefix[0] == "0"):
            raise ValueError(f"prefix must be 1-15 digits not starting with 0: {self.prefix!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}: {self.kind!r}")
        if self.rate_per_minute_micro < 0 or self.connection_fee_micro < 0:
            raise ValueError("rate and connection fee must be >= 0")
        for increment in (self.initial_increment_seconds, self.subsequent_increment_seconds):
            if not 1 <= increment <= MAX_INCREMENT_SECONDS:
                raise ValueError(f"increments must be 1..{MAX_INCREMENT_SECONDS} seconds")


class DeckError(Exception):
    """A bad rate-deck line; the whole deck is rejected. `line` is 1-based, header = 1."""

    def __init__(self, line: int, column: str, message: str) -> None:
        self.line = line
        self.column = column  # a HEADER name, or "" when the problem is the whole line
        self.message = message
        where = f"line {line}, column {column}" if column else f"line {line}"
        super().__init__(f"{where}: {message}")


class RateDeck:
    """The rows of one currency, indexed for longest-prefix lookup.

    Index: one dict per kind from prefix to row, plus the longest prefix length per kind,
    so a lookup probes at most `min(len(number), longest)` dict keys, longest first.
    """

    __slots__ = ("_index", "_longest", "_rows", "currency")

    def __init__(self, currency: str, rows: Iterable[Rate]) -> None:
        if _CURRENCY_RE.fullmatch(currency) is None:
            raise ValueError(f"currency must be 3 upper-case letters: {currency!r}")
        self.currency = currency
        self._rows: list[Rate] = []
        self._index: dict[str, dict[str, Rate]] = {kind: {} for kind in KINDS}
        self._longest: dict[str, int] = dict.fromkeys(KINDS, 0)
        for rate in rows:
            if self._add(rate) is not None:
                raise ValueError(f"duplicate row for prefix {rate.prefix}, kind {rate.kind}")

    def _add(self, rate: Rate) -> Rate | None:
        """Index `rate`; return the existing row instead when (prefix, kind) is taken."""
        if not rate.prefix:
            raise ValueError("a deck row needs a prefix")
        table = self._index[rate.kind]
        existing = table.get(rate.prefix)
        if existing is not None:
            return existing
        table[rate.prefix] = rate
        self._rows.append(rate)
        self._longest[rate.kind] = max(self._longest[rate.kind], len(rate.prefix))
        return None

    @classmethod
    def from_csv(cls, text: str, currency: str) -> RateDeck:
        """Parse a deck; the first bad line raises `DeckError` and nothing is kept.

        Header exactly `HEADER`. A prefix may be written "+44" or "44"; empty increments
        mean 60/60 and an empty connection fee means none. Blank lines are skipped.
        """
        deck = cls(currency, ())
        rows = _numbered_rows(text)
        _check_header(next(rows, (0, None))[1])
        # Real decks repeat descriptions ("United Kingdom - Mobile") and amounts on thousands
        # of rows: one shared object per distinct text keeps a 100,000-row deck small.
        shared: dict[str, str] = {}
        amounts: dict[tuple[str, str], int] = {}
        for line, fields in rows:
            if not fields:
                continue
            rate = _parse_row(fields, line, shared, amounts)
            if deck._add(rate) is not None:
                # Rare (an error): find the first line again rather than keep a line
                # number per row, which would cost ~10 MB while a large deck loads.
                raise DeckError(line, "prefix", _duplicate(rate, _first_line(text, rate)))
        return deck

    def lookup(self, number: str, kind: str) -> Rate | None:
        """The row rating `number` ("+4420..." or digits): longest prefix first, else None.

        A `number` that is not 1-15 digits (after an optional "+") matches nothing.
        """
        table = self._index.get(kind)
        if table is None:
            raise ValueError(f"kind must be one of {KINDS}: {kind!r}")
        digits = number.removeprefix("+")
        if _DIGITS_RE.fullmatch(digits) is None:
            return None
        for length in range(min(len(digits), self._longest[kind]), 0, -1):
            rate = table.get(digits[:length])
            if rate is not None:
                return rate
        return None

    def __repr__(self) -> str:
        return f"<RateDeck {self.currency}: {len(self._rows)} rows>"

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> Iterator[Rate]:
        """Rows in the order they were loaded."""
        return iter(self._rows)

    def to_csv(self) -> str:
        """The deck as CSV that `from_csv` reads back to an equal deck."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(_row_fields(rate) for rate in self._rows)
        return out.getvalue()


def _numbered_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, fields) for every CSV row; the header is line 1."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")), strict=True)
    previous_end = 0
    for fields in _rows_with_errors(reader):
        # line_num counts physical lines: a quoted field may span several of them.
        line, previous_end = previous_end + 1, reader.line_num
        yield line, fields


def _first_line(text: str, rate: Rate) -> int:
    """The line of the first row with `rate`'s prefix and kind (the text parsed before)."""
    rows = _numbered_rows(text)
    next(rows, None)
    for line, fields in rows:
        if fields:
            row = _parse_row(fields, line)
            if (row.prefix, row.kind) == (rate.prefix, rate.kind):
                return line
    raise AssertionError("a duplicate without a first occurrence")


def _check_header(header: list[str] | None) -> None:
    if header is not None and tuple(header) == HEADER:
        return
    found = header or []
    # Name the first header cell that differs, so a typo in one name is easy to find.
    column = next(
        (name for i, name in enumerate(HEADER) if i >= len(found) or found[i] != name), ""
    )
    expected = ",".join(HEADER)
    raise DeckError(1, column, f"header must be exactly {expected!r}, got {','.join(found)!r}")


class _CsvReader(Protocol):
    @property
    def line_num(self) -> int: ...

    def __next__(self) -> list[str]: ...


def _rows_with_errors(reader: _CsvReader) -> Iterator[list[str]]:
    """Iterate CSV rows, turning csv's own syntax errors (stray quotes) into DeckError."""
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise DeckError(reader.line_num, "", f"bad CSV: {error}") from None
        yield fields


def _parse_row(fields: list[str], line: int, shared: dict[str, str] | None = None,
               amounts: dict[tuple[str, str], int] | None = None) -> Rate:
    """One deck row; `shared` and `amounts` memoise repeated texts and amounts."""
    if len(fields) != len(HEADER):
        raise DeckError(line, "", f"expected {len(HEADER)} fields, got {len(fields)}")
    prefix, description, kind, rate, fee, initial, subsequent = fields
    if shared is not None:
        description = shared.setdefault(description, description)
    return Rate(
        prefix=_parse_prefix(prefix, line),
        description=description,
        kind=_parse_kind(kind, line),
        rate_per_minute_micro=_memo_amount(amounts, rate, "rate_per_minute", line, False),
        connection_fee_micro=_memo_amount(amounts, fee, "connection_fee", line, True),
        initial_increment_seconds=_parse_increment(initial, "initial_increment", line),
        subsequent_increment_seconds=_parse_increment(subsequent, "subsequent_increment", line),
    )


def _parse_prefix(text: str, line: int) -> str:
    match = _PREFIX_RE.fullmatch(text)
    if match is None:
        message = f"must be 1-15 digits, optional '+', not starting with 0: {text!r}"
        raise DeckError(line, "prefix", message)
    return match.group(1)


def _parse_kind(text: str, line: int) -> str:
    for kind in KINDS:  # the constant, not the row's own copy of the text
        if text == kind:
            return kind
    raise DeckError(line, "kind", f"must be one of {', '.join(KINDS)}: {text!r}")


def _memo_amount(memo: dict[tuple[str, str], int] | None, text: str, column: str, line: int,
                 allow_empty: bool) -> int:
    if memo is None:
        return _parse_amount(text, column, line, allow_empty=allow_empty)
    key = (column, text)
    value = memo.get(key)
    if value is None:
        value = memo[key] = _parse_amount(text, column, line, allow_empty=allow_empty)
    return value


def _parse_amount(text: str, column: str, line: int, *, allow_empty: bool) -> int:
    if text == "" and allow_empty:
        return 0
    try:
        return parse_rate(text, column)
    except ValidationError as error:
        raise DeckError(line, column, f"{error.errors[0].message}: {text!r}") from None


def _parse_increment(text: str, column: str, line: int) -> int:
    if text == "":
        return DEFAULT_INCREMENT_SECONDS
    if _INCREMENT_RE.fullmatch(text) is None or int(text) > MAX_INCREMENT_SECONDS:
        raise DeckError(line, column, f"must be whole seconds 1..{MAX_INCREMENT_SECONDS}: {text!r}")
    return int(text)


def _duplicate(rate: Rate, first_line: int) -> str:
    return f"duplicate of line {first_line} (prefix {rate.prefix}, kind {rate.kind})"


def _row_fields(rate: Rate) -> tuple[str, ...]:
    return (
        rate.prefix,
        rate.description,
        rate.kind,
        format_rate(rate.rate_per_minute_micro),
        format_rate(rate.connection_fee_micro),
        str(rate.initial_increment_seconds),
        str(rate.subsequent_increment_seconds),
    )
