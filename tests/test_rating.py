"""Rate decks (longest-prefix match) and the D20 charging formulas, against slow references."""

from __future__ import annotations

import math
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.rules.rating import (
    HEADER,
    KIND_OUTBOUND,
    KIND_TOLL_FREE_INBOUND,
    DeckError,
    Rate,
    RateDeck,
)
from tests.support.refcost import billable_seconds, credit_cost_micro, max_affordable_seconds

RATES_DIR = Path(__file__).resolve().parent.parent / "config" / "rates"
HEADER_LINE = ",".join(HEADER)


def make_rate(rate: int, fee: int = 0, initial: int = 60, subsequent: int = 60) -> Rate:
    return Rate("44", "test", KIND_OUTBOUND, rate, fee, initial, subsequent)


def deck(*lines: str, currency: str = "USD") -> RateDeck:
    return RateDeck.from_csv("\n".join((HEADER_LINE, *lines)) + "\n", currency)


# --- references: slow, obviously right, no shared code with gateway.rules.rating ----------------


def reference_billable(duration: int, initial: int, subsequent: int) -> int:
    """The smallest point of the grid A, A+B, A+2B, … that covers the duration."""
    if duration <= 0:
        return 0
    billed = initial
    while billed < duration:
        billed += subsequent
    return billed


def reference_cost(duration: int, rate: Rate) -> int:
    billed = reference_billable(
        duration, rate.initial_increment_seconds, rate.subsequent_increment_seconds
    )
    if billed == 0:
        return 0
    exact = rate.connection_fee_micro + Fraction(rate.rate_per_minute_micro * billed, 60)
    return math.ceil(exact / 100) * 100  # rounded up to 0.0001 of the currency


def brute_force_affordable(budget: int, rate: Rate, cap: int) -> int:
    return max(length for length in range(cap + 1) if reference_cost(length, rate) <= budget)


rates = st.builds(
    make_rate,
    rate=st.one_of(st.just(0), st.integers(1, 2_000_000)),
    fee=st.one_of(st.just(0), st.integers(1, 300_000)),
    initial=st.integers(1, 120),
    subsequent=st.integers(1, 120),
)


# --- D20 formulas --------------------------------------------------------------------------


def test_worked_example_8_61_seconds_at_60_60() -> None:
    rate = make_rate(rate=12_000, fee=10_000)  # 0.0120 per minute, 0.0100 per call
    assert billable_seconds(61, 60, 60) == 120
    assert credit_cost_micro(61, rate) == 10_000 + 2 * 12_000


@pytest.mark.parametrize(
    ("duration", "initial", "subsequent", "billed"),
    [
        (0, 60, 60, 0),
        (-5, 60, 60, 0),
        (1, 60, 60, 60),
        (60, 60, 60, 60),
        (61, 60, 60, 120),
        (61, 1, 1, 61),
        (1, 30, 6, 30),
        (30, 30, 6, 30),
        (31, 30, 6, 36),
        (37, 30, 6, 42),
        (59, 60, 1, 60),
        (61, 60, 1, 61),
        (10, 1, 60, 61),
    ],
)
def test_billable_seconds(duration: int, initial: int, subsequent: int, billed: int) -> None:
    assert billable_seconds(duration, initial, subsequent) == billed


@given(st.integers(-10, 5000), st.integers(1, 300), st.integers(1, 300))
def test_billable_seconds_matches_reference(duration: int, initial: int, subsequent: int) -> None:
    assert billable_seconds(duration, initial, subsequent) == reference_billable(
        duration, initial, subsequent
    )


def test_billable_seconds_rejects_zero_increments() -> None:
    with pytest.raises(ValueError):
        billable_seconds(10, 0, 60)
    with pytest.raises(ValueError):
        billable_seconds(10, 60, 0)


def test_unanswered_call_costs_nothing_even_with_a_connection_fee() -> None:
    assert credit_cost_micro(0, make_rate(rate=50_000, fee=100_000)) == 0


def test_cost_is_rounded_up_once_per_call() -> None:
    # 0.000101 per minute for 60 s = 101 micro -> 0.0002; fee and usage summed first.
    assert credit_cost_micro(60, make_rate(rate=101)) == 200
    assert credit_cost_micro(60, make_rate(rate=50, fee=50)) == 100
    assert credit_cost_micro(1, make_rate(rate=1, initial=1, subsequent=1)) == 100


@given(st.integers(0, 10_000), rates)
def test_cost_matches_reference_and_is_whole_steps(duration: int, rate: Rate) -> None:
    cost = credit_cost_micro(duration, rate)
    assert cost == reference_cost(duration, rate)
    assert cost % 100 == 0


@given(st.integers(0, 10_000), st.integers(0, 10_000), rates)
def test_cost_is_monotone_in_duration(first: int, second: int, rate: Rate) -> None:
    shorter, longer = sorted((first, second))
    assert credit_cost_micro(shorter, rate) <= credit_cost_micro(longer, rate)


@settings(max_examples=300)
@given(st.integers(-1_000, 3_000_000), rates, st.integers(0, 400))
@example(budget=0, rate=make_rate(0), cap=300)
@example(budget=33_900, rate=make_rate(12_000, 10_000), cap=300)  # 0.0339: one minute only
@example(budget=34_000, rate=make_rate(12_000, 10_000), cap=300)  # 0.0340: two minutes
@example(budget=10_000, rate=make_rate(0, 10_000), cap=300)  # fee only, just affordable
@example(budget=9_900, rate=make_rate(0, 10_000), cap=300)
def test_max_affordable_seconds_matches_brute_force(budget: int, rate: Rate, cap: int) -> None:
    expected = brute_force_affordable(budget, rate, cap) if budget >= 0 else 0
    assert max_affordable_seconds(budget, rate, cap) == expected


def test_max_affordable_seconds_edges() -> None:
    free = make_rate(rate=0, fee=0)
    assert max_affordable_seconds(0, free, 300) == 300
    # 0.0339 pays the first minute and fee (0.0220) but not the second (0.0340).
    rate = make_rate(rate=12_000, fee=10_000)
    assert max_affordable_seconds(33_900, rate, 300) == 60
    assert max_affordable_seconds(21_900, rate, 300) == 0  # not even the first increment
    assert max_affordable_seconds(10**18, rate, 300) == 300  # capped
    assert max_affordable_seconds(-100, rate, 300) == 0  # e.g. a lowered spend limit
    assert max_affordable_seconds(10**6, rate, 0) == 0
    with pytest.raises(ValueError):
        max_affordable_seconds(10**6, rate, -1)


# --- decks -----------------------------------------------------------------------------------


def test_deck_parses_rows_and_defaults() -> None:
    loaded = deck(
        "+44,UK fixed,outbound,0.02,0.01,30,6",
        "447,UK mobile,outbound,0.060000,,,",
        "1,US origin,toll_free_inbound,0.0200,0,1,1",
    )
    assert len(loaded) == 3
    assert loaded.currency == "USD"
    uk = loaded.lookup("+442071838750", KIND_OUTBOUND)
    assert uk == Rate("44", "UK fixed", KIND_OUTBOUND, 20_000, 10_000, 30, 6)
    mobile = loaded.lookup("447700900123", KIND_OUTBOUND)
    assert mobile == Rate("447", "UK mobile", KIND_OUTBOUND, 60_000, 0, 60, 60)


def test_lookup_is_longest_prefix_and_per_kind() -> None:
    loaded = deck(
        "1,NANP,outbound,0.01,,,",
        "1876,Jamaica,outbound,0.21,,,",
        "18765,Jamaica special,outbound,0.30,,,",
        "1,NANP origin,toll_free_inbound,0.02,,,",
    )
    assert loaded.lookup("+18765550100", KIND_OUTBOUND).prefix == "18765"  # type: ignore[union-attr]
    assert loaded.lookup("+18761234567", KIND_OUTBOUND).prefix == "1876"  # type: ignore[union-attr]
    assert loaded.lookup("+12125550100", KIND_OUTBOUND).prefix == "1"  # type: ignore[union-attr]
    assert loaded.lookup("1876", KIND_OUTBOUND).prefix == "1876"  # type: ignore[union-attr]
    toll_free = loaded.lookup("+18765550100", KIND_TOLL_FREE_INBOUND)
    assert toll_free is not None and toll_free.description == "NANP origin"
    assert loaded.lookup("+442071838750", KIND_OUTBOUND) is None
    for not_a_number in ("", "+", "++1", "1-876", " 1876", "abc", "1" * 16):
        assert loaded.lookup(not_a_number, KIND_OUTBOUND) is None
    with pytest.raises(ValueError):
        loaded.lookup("+1876", "inbound")


def test_deck_round_trips_through_csv() -> None:
    loaded = deck(
        '44,"UK, fixed ""geographic""",outbound,0.02,0.01,30,6',
        '33,"France\nmultiline",outbound,0.025,,,',
        "1,origin,toll_free_inbound,0.000001,0,1,1",
    )
    again = RateDeck.from_csv(loaded.to_csv(), "USD")
    assert list(again.rows()) == list(loaded.rows())
    assert again.to_csv() == loaded.to_csv()


def test_deck_tolerates_bom_crlf_and_blank_lines() -> None:
    text = "\ufeff" + HEADER_LINE + "\r\n\r\n44,UK,outbound,0.02,,,\r\n\r\n"
    assert len(RateDeck.from_csv(text, "GBP")) == 1


def test_header_only_is_an_empty_deck() -> None:
    empty = RateDeck.from_csv(HEADER_LINE + "\n", "EUR")
    assert len(empty) == 0
    assert empty.lookup("+33123456789", KIND_OUTBOUND) is None


@pytest.mark.parametrize(
    ("bad_line", "column", "fragment"),
    [
        ("0044,x,outbound,0.02,,,", "prefix", "not starting with 0"),
        ("44a,x,outbound,0.02,,,", "prefix", "digits"),
        (",x,outbound,0.02,,,", "prefix", "digits"),
        ("+,x,outbound,0.02,,,", "prefix", "digits"),
        ("1234567890123456,x,outbound,0.02,,,", "prefix", "1-15 digits"),
        ("33,x,inbound,0.02,,,", "kind", "outbound, toll_free_inbound"),
        ("33,x,,0.02,,,", "kind", "must be one of"),
        ("33,x,outbound,,,,", "rate_per_minute", "decimal"),
        ("33,x,outbound,-0.02,,,", "rate_per_minute", "decimal"),
        ("33,x,outbound,0.0000001,,,", "rate_per_minute", "6 decimal places"),
        ("33,x,outbound,1e3,,,", "rate_per_minute", "decimal"),
        ("33,x,outbound,NaN,,,", "rate_per_minute", "decimal"),
        ("33,x,outbound,0.02,abc,,", "connection_fee", "decimal"),
        ("33,x,outbound,0.02,,0,", "initial_increment", "1..3600"),
        ("33,x,outbound,0.02,,-1,", "initial_increment", "1..3600"),
        ("33,x,outbound,0.02,,1.5,", "initial_increment", "1..3600"),
        ("33,x,outbound,0.02,,3601,", "initial_increment", "1..3600"),
        ("33,x,outbound,0.02,,60, 60", "subsequent_increment", "1..3600"),
        ("33,x,outbound,0.02,,60,x", "subsequent_increment", "1..3600"),
    ],
)
def test_bad_line_names_line_and_column(bad_line: str, column: str, fragment: str) -> None:
    good = "44,UK,outbound,0.02,,,"
    with pytest.raises(DeckError) as caught:
        deck(good, '1,"two\nlines",outbound,0.01,,,', good.replace("44", "45"), bad_line, good)
    error = caught.value
    # header 1, good 2, the quoted description spans 3-4, 45 on 5: the bad line is line 6.
    assert (error.line, error.column) == (6, column)
    assert str(error).startswith(f"line 6, column {column}: ")
    assert fragment in error.message


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        ("33,x,outbound,0.02,,", "expected 7 fields, got 6"),
        ("33,x,outbound,0.02,,,,", "expected 7 fields, got 8"),
        ('33,"x"y,outbound,0.02,,,', "bad CSV"),
    ],
)
def test_malformed_line_names_the_line(bad_line: str, fragment: str) -> None:
    with pytest.raises(DeckError) as caught:
        deck("44,UK,outbound,0.02,,,", bad_line)
    assert caught.value.line == 3
    assert str(caught.value).startswith("line 3")
    assert fragment in str(caught.value)


def test_duplicate_prefix_and_kind_is_rejected_naming_both_lines() -> None:
    with pytest.raises(DeckError) as caught:
        deck(
            "44,UK,outbound,0.02,,,",
            "44,UK origin,toll_free_inbound,0.05,,,",  # another kind: fine
            "+44,UK again,outbound,0.03,,,",
        )
    assert (caught.value.line, caught.value.column) == (4, "prefix")
    assert "duplicate of line 2" in caught.value.message


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("", "prefix"),
        (
            "prefix,description,kind,rate,connection_fee,initial_increment,subsequent_increment\n",
            "rate_per_minute",
        ),
        (
            "prefix,description,kind,rate_per_minute,connection_fee,initial_increment\n",
            "subsequent_increment",
        ),
        ("44,UK,outbound,0.02,,,\n", "prefix"),
    ],
)
def test_bad_header_is_line_1(text: str, column: str) -> None:
    with pytest.raises(DeckError) as caught:
        RateDeck.from_csv(text, "USD")
    assert (caught.value.line, caught.value.column) == (1, column)
    assert "header must be exactly" in caught.value.message


def test_one_bad_line_rejects_the_whole_deck() -> None:
    lines = [f"{prefix},row,outbound,0.01,,," for prefix in range(100, 200)]
    lines[57] = "157,row,outbound,one cent,,,"
    with pytest.raises(DeckError) as caught:
        deck(*lines)
    assert caught.value.line == 59  # header + 58th row


def test_deck_rejects_bad_currency_and_prefixless_rows() -> None:
    with pytest.raises(ValueError):
        RateDeck.from_csv(HEADER_LINE + "\n", "usd")
    with pytest.raises(ValueError):
        RateDeck("USD", [Rate("", "placeholder", KIND_OUTBOUND, 0, 0, 60, 60)])


def test_rate_invariants_hold_for_rows_built_in_code() -> None:
    with pytest.raises(ValueError):
        Rate("44", "x", "inbound", 0, 0, 60, 60)
    with pytest.raises(ValueError):
        Rate("44", "x", KIND_OUTBOUND, -1, 0, 60, 60)
    with pytest.raises(ValueError):
        Rate("44", "x", KIND_OUTBOUND, 0, 0, 0, 60)
    with pytest.raises(ValueError):
        Rate("+44", "x", KIND_OUTBOUND, 0, 0, 60, 60)


def test_a_100k_row_deck_loads(capsys: pytest.CaptureFixture[str]) -> None:
    # Distinct 6-digit prefixes over all kinds: ~the size of a full carrier A-Z deck.
    rows = [
        f"{200_000 + i},Destination {i},{KIND_OUTBOUND if i % 4 else KIND_TOLL_FREE_INBOUND},"
        f"0.{i % 10_000:04d}{i % 100:02d},{'0.01' if i % 3 == 0 else ''},{1 + i % 60},{1 + i % 6}"
        for i in range(100_000)
    ]
    text = HEADER_LINE + "\n" + "\n".join(rows) + "\n"
    tracemalloc.start()
    started = time.perf_counter()
    loaded = RateDeck.from_csv(text, "USD")
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(loaded) == 100_000
    assert loaded.lookup("+2999999123", KIND_OUTBOUND) is not None
    with capsys.disabled():
        print(
            f"\n100,000-row deck: loaded in {elapsed:.2f} s (under tracemalloc), "
            f"peak traced memory {peak / 2**20:.1f} MiB"
        )


# --- the shipped decks ------------------------------------------------------------------------


@pytest.mark.parametrize("currency", ["USD", "EUR", "GBP"])
def test_default_decks_load_and_cover_the_worked_examples(currency: str) -> None:
    loaded = RateDeck.from_csv((RATES_DIR / f"{currency}.csv").read_text("utf-8"), currency)
    assert len(loaded) >= 40
    for number in (
        "+12125550100",
        "+14165550100",
        "+17875550100",
        "+442071838750",
        "+447700900123",
        "+33123456789",
        "+49301234567",
        "+61212345678",
        "+81312345678",
        "+525512345678",
        "+912212345678",
        "+551112345678",
    ):
        assert loaded.lookup(number, KIND_OUTBOUND) is not None, number
    assert loaded.lookup("+18765550100", KIND_OUTBOUND).prefix == "1876"  # type: ignore[union-attr]
    # Every country code can reach a toll-free number: the world-zone rows catch them all.
    for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        assert loaded.lookup(f"{code}5550100", KIND_TOLL_FREE_INBOUND) is not None, code


def test_default_usd_deck_rates_worked_example_8() -> None:
    loaded = RateDeck.from_csv((RATES_DIR / "USD.csv").read_text("utf-8"), "USD")
    us = loaded.lookup("+12125550100", KIND_OUTBOUND)
    assert us is not None
    assert (us.initial_increment_seconds, us.subsequent_increment_seconds) == (60, 60)
    expected = us.connection_fee_micro + 2 * us.rate_per_minute_micro
    assert credit_cost_micro(61, us) == expected == 34_000  # 0.0100 + 2 x 0.0120
