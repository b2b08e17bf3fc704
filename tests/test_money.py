"""Money: decimal strings outside, int micro-units inside, never a float."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ValidationError
from gateway.rules.money import (
    MAX_MICRO,
    MICRO_PER_UNIT,
    NOT_A_STRING,
    format_money,
    format_rate,
    parse_money,
    parse_rate,
)


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("25", 25_000_000),
        ("25.5", 25_500_000),
        ("25.00", 25_000_000),
        ("0.0001", 100),
        ("12.5000", 12_500_000),
        ("1000000000000", MAX_MICRO),
        ("999999999999.9999", MAX_MICRO - 100),
    ],
)
def test_parse_money_accepts_decimal_strings(text: str, micro: int) -> None:
    assert parse_money(text, "amount") == micro


@pytest.mark.parametrize("value", [25, 25.0, 0.1, True, False, None, ["1"], {"a": 1}, b"1"])
def test_parse_money_rejects_non_strings_with_the_documented_message(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_money(value, "amount")
    assert caught.value.errors[0].field == "amount"
    assert (
        caught.value.errors[0].message
        == NOT_A_STRING
        == 'money must be a decimal string, e.g. "25.00"'
    )


BAD_STRINGS = [
    "",
    " 1",
    "1 ",
    "1\n",
    "1e3",
    "1E3",
    "1e309",
    "NaN",
    "nan",
    "inf",
    "Infinity",
    "-1",
    "+1",
    "-0",
    "1.",
    ".5",
    "1..0",
    "1,00",
    "1_000",
    "0x10",
    "01",
    "00.5",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: int() would take it
    "\uff11",  # FULLWIDTH DIGIT ONE
    "12.34567",  # five decimals
    "0.00001",
    "1000000000000.0001",  # above 10^12 units
    "1000000000001",
    "9" * 5000,  # would hit int()'s digit limit if it ever got there
    "0",
    "0.0000",
]


@pytest.mark.parametrize("text", BAD_STRINGS)
def test_parse_money_rejects_bad_strings_naming_the_field(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_money(text, "amount")
    assert [e.field for e in caught.value.errors] == ["amount"]
    assert caught.value.status == 400


def test_parse_money_messages_say_what_is_wrong() -> None:
    def message(text: str) -> str:
        with pytest.raises(ValidationError) as caught:
            parse_money(text, "amount")
        return caught.value.errors[0].message

    assert "at most 4 decimal places" in message("1.00001")
    assert "greater than zero" in message("0.00")
    assert "must not exceed 1000000000000" in message("1000000000001")
    assert "no sign, exponent" in message("-1")


def test_parse_money_zero_and_decimals_are_options() -> None:
    assert parse_money("0", "amount", allow_zero=True) == 0
    assert parse_money("0.000", "amount", allow_zero=True) == 0
    assert parse_money("1.25", "amount", max_decimals=2) == 1_250_000
    with pytest.raises(ValidationError):
        parse_money("1.255", "amount", max_decimals=2)
    with pytest.raises(ValidationError):
        parse_money("1.5", "amount", max_decimals=0)
    with pytest.raises(ValueError):
        parse_money("1", "amount", max_decimals=7)  # finer than micro-units: a caller bug


def test_parse_rate_takes_six_decimals_and_zero() -> None:
    assert parse_rate("0.012345", "rate") == 12_345
    assert parse_rate("0", "rate") == 0
    assert parse_rate("1.5", "rate") == 1_500_000
    with pytest.raises(ValidationError):
        parse_rate("0.0000001", "rate")
    with pytest.raises(ValidationError):
        parse_rate("-0.01", "rate")


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "0.0000"),
        (100, "0.0001"),
        (12_500_000, "12.5000"),
        (MICRO_PER_UNIT, "1.0000"),
        (MAX_MICRO, "1000000000000.0000"),
        (-2_500_000, "-2.5000"),
        (-100, "-0.0001"),
    ],
)
def test_format_money(micro: int, text: str) -> None:
    assert format_money(micro) == text


@pytest.mark.parametrize("micro", [1, 99, 150, 12_345_678, -1])
def test_format_money_refuses_to_round(micro: int) -> None:
    with pytest.raises(ValueError, match="not rounding"):
        format_money(micro)


@pytest.mark.parametrize("value", [1.5, True, "1"])
def test_formatters_refuse_non_int(value: object) -> None:
    with pytest.raises(TypeError):
        format_money(value)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_rate(value)  # type: ignore[arg-type]


def test_format_rate() -> None:
    assert format_rate(0) == "0.000000"
    assert format_rate(12_345) == "0.012345"
    assert format_rate(1_500_000) == "1.500000"
    with pytest.raises(ValueError):
        format_rate(-1)


@given(st.integers(min_value=0, max_value=MAX_MICRO // 100))
def test_money_round_trips(steps: int) -> None:
    micro = steps * 100
    assert parse_money(format_money(micro), "amount", allow_zero=True) == micro


@given(st.integers(min_value=0, max_value=MAX_MICRO))
def test_rate_round_trips(micro: int) -> None:
    assert parse_rate(format_rate(micro), "rate") == micro
