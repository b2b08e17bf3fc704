"""gateway.rules.numbers must give exactly the answers of the phonenumbers library, only faster.

The library is the oracle throughout: every random test compares against it rather than
against hand-written expectations, so a metadata update shows up as a failure here rather
than as wrongly rated calls. Random inputs come from one seed (NUMBERS_TEST_SEED, printed
and included in every failure message) or from hypothesis, so failures can be replayed.
"""

from __future__ import annotations

import itertools
import os
import random
import re
from collections.abc import Iterator

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneMetadata, PhoneNumberFormat, PhoneNumberType, shortnumberinfo

from gateway.rules import numbers
from gateway.rules.numbers import NUMBER_TYPES, Destination, classify, is_emergency, normalise_e164

SEED = int(os.environ.get("NUMBERS_TEST_SEED", "20240611"))
SHORT_REGIONS: tuple[str, ...] = tuple(sorted(phonenumbers.SUPPORTED_SHORT_REGIONS))
CALLING_CODES: tuple[int, ...] = tuple(sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE))
DESC_ATTRS = (
    "fixed_line",
    "mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)
# Inserted after the country code: national prefixes, carrier codes and trunk digits that
# parse() strips (or must not strip) even from "+cc..." input.
NATIONAL_PREFIXES = ("0", "1", "8", "9", "00", "06", "15", "0015", "011", "90", "0549", "015")

Verdict = tuple[str, str | None, str] | None


def library(text: str) -> Verdict:
    """(e164, region, type) as the library sees it, or None if it is not a valid number."""
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return (
        phonenumbers.format_number(parsed, PhoneNumberFormat.E164),
        phonenumbers.region_code_for_number(parsed),
        PhoneNumberType.to_string(phonenumbers.number_type(parsed)).lower(),
    )


def ours(text: str) -> Verdict:
    destination = classify(text)
    if destination.e164 is None:
        return None
    return (destination.e164, destination.country, destination.number_type)


def mismatches(candidates: list[str]) -> list[tuple[str, Verdict, Verdict]]:
    """Every candidate where classify and the library disagree (on the E.164 form)."""
    found = []
    for text in candidates:
        expected, got = library(text), ours(text)
        if expected != got:
            found.append((text, expected, got))
    return found


def example_numbers() -> list[str]:
    """The library's example number of every type of every region and non-geographic code."""
    found: list[str] = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for num_type in PhoneNumberType.values():
            example = phonenumbers.example_number_for_type(region, num_type)
            if example is not None:
                found.append(phonenumbers.format_number(example, PhoneNumberFormat.E164))
    for cc in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        metadata = PhoneMetadata.metadata_for_nongeo_region(cc)
        assert metadata is not None
        for attr in DESC_ATTRS:
            desc = getattr(metadata, attr)
            if desc is not None and desc.example_number:
                found.append(f"+{cc}{desc.example_number}")
    return found


EXAMPLES = example_numbers()


def variants(example: str, rng: random.Random) -> Iterator[str]:
    """Near misses around a valid number: what random valid and invalid traffic looks like."""
    digits = "0123456789"
    yield example
    for _ in range(12):
        k = rng.randint(1, 6)
        yield example[:-k] + "".join(rng.choice(digits) for _ in range(k))
    for k in range(1, 4):
        yield example[:-k]
        yield example + "".join(rng.choice(digits) for _ in range(k))
    cc = str(phonenumbers.parse(example, None).country_code)
    for prefix in NATIONAL_PREFIXES:
        yield f"+{cc}{prefix}{example[1 + len(cc) :]}"


def test_seed_is_reported() -> None:
    print(f"NUMBERS_TEST_SEED={SEED}")
    assert EXAMPLES, "phonenumbers returned no example numbers"


def test_every_region_and_non_geographic_code_has_examples() -> None:
    regions = {
        region
        for region in phonenumbers.SUPPORTED_REGIONS
        for num_type in PhoneNumberType.values()
        if phonenumbers.example_number_for_type(region, num_type) is not None
    }
    assert regions == set(phonenumbers.SUPPORTED_REGIONS)
    codes = {
        int(e[1:4])
        for e in EXAMPLES
        if int(e[1:4]) in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS
    }
    assert codes == set(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)


@pytest.mark.parametrize(("region", "attributed_to"), [("EH", {"MA"}), ("MF", {"GP", "BL"})])
def test_regions_whose_examples_the_library_attributes_elsewhere(
    region: str, attributed_to: set[str]
) -> None:
    # Shared calling codes are resolved in list order, and MA (before EH) and GP/BL (before
    # MF) accept these regions' example numbers, so classify must say MA / GP / BL too.
    for num_type in PhoneNumberType.values():
        example = phonenumbers.example_number_for_type(region, num_type)
        if example is not None:
            raw = phonenumbers.format_number(example, PhoneNumberFormat.E164)
            assert ours(raw) == library(raw)
            assert classify(raw).country in attributed_to


@pytest.mark.parametrize("chunk", range(4))
def test_examples_and_variants_agree_with_library(chunk: int) -> None:
    rng = random.Random(f"{SEED}-{chunk}")
    candidates = [v for e in EXAMPLES[chunk::4] for v in variants(e, rng)]
    bad = mismatches(candidates)
    assert not bad, f"seed {SEED}: {len(bad)}/{len(candidates)} disagree, e.g. {bad[:10]}"


def test_random_digits_after_every_calling_code_agree_with_library() -> None:
    rng = random.Random(SEED)
    candidates = []
    for cc in CALLING_CODES:
        for _ in range(40):
            tail = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 16)))
            candidates.append(f"+{cc}{tail}")
    bad = mismatches(candidates)
    assert not bad, f"seed {SEED}: {len(bad)}/{len(candidates)} disagree, e.g. {bad[:10]}"


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet="0123456789", min_size=0, max_size=20))
def test_hypothesis_plus_digits_agree_with_library(digits: str) -> None:
    assert ours("+" + digits) == library("+" + digits)


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(CALLING_CODES),
    st.text(alphabet="0123456789", min_size=0, max_size=15),
)
def test_hypothesis_known_calling_code_agrees_with_library(cc: int, rest: str) -> None:
    assert ours(f"+{cc}{rest}") == library(f"+{cc}{rest}")


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(EXAMPLES), st.lists(st.tuples(st.integers(0, 20), st.sampled_from(" -.()"))))
def test_hypothesis_separators_change_nothing(example: str, inserts: list[tuple[int, str]]) -> None:
    chars = list(example)
    for position, separator in inserts:
        chars.insert(min(position, len(chars)), separator)
    raw = "".join(chars)
    if len(raw) > 32:
        assert classify(raw).error == "longer than 32 characters"
    else:
        assert ours(raw) == ours(example) == library(raw)
    assert classify(raw).raw == raw


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=40))
def test_hypothesis_never_raises_and_valid_means_library_valid(raw: str) -> None:
    destination = classify(raw)
    assert destination.number_type in (*NUMBER_TYPES, "emergency", "invalid")
    assert destination.raw == raw
    if destination.valid:
        assert destination.error is None
        assert normalise_e164(raw) is not None
        assert library(destination.e164 or "") == ours(raw)
    elif destination.number_type == "emergency":
        assert destination.error is None and destination.emergency_regions
    else:
        assert destination.error and destination.country is None
        normalised = normalise_e164(raw)
        if (
            normalised is not None
            and len(raw) <= 32
            and not numbers._emergency_regions(normalised[1:])
        ):
            assert library(normalised) is None


# --- specific destinations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "country"),
    [("+14165550100", "CA"), ("+12125550123", "US"), ("+442071838750", "GB")],
)
def test_known_numbers(raw: str, country: str) -> None:
    destination = classify(raw)
    assert destination.valid and destination.error is None
    assert destination.e164 == raw
    assert destination.country == country
    assert ours(raw) == library(raw)


def test_london_fixed_line() -> None:
    assert classify("+442071838750").number_type == "fixed_line"


def test_nanpa_toll_free_gets_the_library_region() -> None:
    destination = classify("+18005550100")
    assert destination.number_type == "toll_free"
    assert ours("+18005550100") == library("+18005550100")
    # US is first in the +1 region list and its toll-free pattern covers every 8XX code,
    # so even Canada's own toll-free example number is attributed to US.
    assert destination.country == "US"
    ca_example = phonenumbers.example_number_for_type("CA", PhoneNumberType.TOLL_FREE)
    assert ca_example is not None
    ca_toll_free = phonenumbers.format_number(ca_example, PhoneNumberFormat.E164)
    assert ours(ca_toll_free) == library(ca_toll_free)
    assert classify(ca_toll_free).country == "US"


def test_gb_premium_rate() -> None:
    example = phonenumbers.example_number_for_type("GB", PhoneNumberType.PREMIUM_RATE)
    assert example is not None
    raw = phonenumbers.format_number(example, PhoneNumberFormat.E164)
    assert raw.startswith("+449")
    assert classify(raw).number_type == "premium_rate"
    assert ours(raw) == library(raw)


@pytest.mark.parametrize("raw", ["+448451234567", "+448456789012", "+448701234567"])
def test_gb_084x_087x_follow_the_library(raw: str) -> None:
    # Traditionally "shared cost"; the library's GB metadata has no shared-cost description
    # and files 0842-0845 and 0870-0873 under premium rate, so that is what we must say too.
    destination = classify(raw)
    assert ours(raw) == library(raw)
    assert destination.country == "GB"
    assert destination.number_type in {"shared_cost", "premium_rate"}


def test_a_shared_cost_number() -> None:
    example = phonenumbers.example_number_for_type("FR", PhoneNumberType.SHARED_COST)
    assert example is not None
    raw = phonenumbers.format_number(example, PhoneNumberFormat.E164)
    assert classify(raw).number_type == "shared_cost"
    assert ours(raw) == library(raw)


def test_fr_premium_rate() -> None:
    raw = "+33891123456"
    destination = classify(raw)
    assert destination.country == "FR"
    assert destination.number_type == "premium_rate"
    assert ours(raw) == library(raw)


def test_national_prefix_after_country_code_is_dropped_like_the_library() -> None:
    assert classify("+4402071838750").e164 == "+442071838750"
    assert ours("+4402071838750") == library("+4402071838750")


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("00442071838750", "+442071838750"),
        ("+1 (416) 555-0100", "+14165550100"),
        ("+44 20 7183 8750", "+442071838750"),
        ("0044.20.7183.8750", "+442071838750"),
        (
            "+\uff14\uff14\uff12\uff10\uff17\uff11\uff18\uff13\uff18\uff17\uff15\uff10",
            "+442071838750",
        ),
    ],
)
def test_normalised_forms(raw: str, e164: str) -> None:
    assert normalise_e164(raw) == e164
    destination = classify(raw)
    assert destination.e164 == e164
    assert destination.raw == raw
    assert ours(raw) == library(e164)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+14165550100", "+14165550100"),
        ("00 1 416 555 0100", "+14165550100"),
        ("(+1) 416.555.0100", "+14165550100"),
        ("+\u0664\u0664\u0662\u0660", "+4420"),
        ("4165550100", None),
        ("+", None),
        ("00", None),
        ("", None),
        ("+1-800-FLOWERS", None),
        ("+44 20 7183 8750 x12", None),
        ("+1+4165550100", None),
        ("+1\u00b2", None),
    ],
)
def test_normalise_e164(raw: str, expected: str | None) -> None:
    assert normalise_e164(raw) == expected


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("abc", "contains letters"),
        ("+1-800-FLOWERS", "contains letters"),
        ("", "empty"),
        ("4165550100", "must start with + and a country code"),
        ("+", "must start with + and a country code"),
        ("+0442071838750", "must start with + and a country code"),
        ("+44", "too short"),
        ("+44207", "too short for +44"),
        ("+4420718387501234567", "too long for +44"),
        ("+442071838750" + "1" * 20, "longer than 32 characters"),
        ("+449999999999", "not a valid number for +44 (GB, GG, IM, JE)"),
        ("+3399999999999", "too long for +33"),
        ("+33012345678", "not a valid number for FR"),
        ("+1999555010", "wrong number of digits for +1: 7 or 10 after the country code"),
        ("+199955501", "wrong number of digits for +1"),
        ("+19995550100", "not a valid number for +1"),
        ("+2801234567", "unknown country code"),
        ("+4412", "too short for +44"),
        ("+44 20/7183 8750", "characters other than digits"),
        ("+44+2071838750", "'+' may only appear once"),
    ],
)
def test_invalid_inputs_explain_themselves(raw: str, error: str) -> None:
    destination = classify(raw)
    assert not destination.valid
    assert destination.number_type == "invalid"
    assert destination.country is None and destination.e164 is None
    assert destination.emergency_regions == frozenset()
    assert destination.error is not None and error in destination.error
    assert destination.raw == raw


def test_destination_is_frozen_and_slotted() -> None:
    destination = classify("+442071838750")
    with pytest.raises(AttributeError):
        destination.e164 = None  # type: ignore[misc]
    assert not hasattr(destination, "__dict__")
    assert isinstance(destination, Destination)


def test_number_types_are_the_library_type_names() -> None:
    names = {PhoneNumberType.to_string(t).lower() for t in PhoneNumberType.values()}
    assert set(NUMBER_TYPES) == names
    assert len(NUMBER_TYPES) == len(names)


def test_classify_never_raises_on_non_string() -> None:
    destination = classify(None)  # type: ignore[arg-type]
    assert destination.number_type == "invalid" and destination.error


# --- emergency numbers ----------------------------------------------------------------------


def library_emergency_regions(digits: str) -> frozenset[str]:
    return frozenset(r for r in SHORT_REGIONS if shortnumberinfo.is_emergency_number(digits, r))


@pytest.mark.parametrize(
    "digits",
    ["911", "112", "999", "000", "110", "119", "100", "101", "102", "15", "17", "18", "08"],
)
def test_listed_short_codes_match_library_in_every_region(digits: str) -> None:
    expected = library_emergency_regions(digits)
    destination = classify(digits)
    for region in SHORT_REGIONS:
        assert is_emergency(digits, region) == (region in expected), region
        assert is_emergency(digits, region.lower()) == (region in expected), region
    if expected:
        assert destination.number_type == "emergency"
        assert destination.emergency_regions == expected
        assert destination.error is None
        assert destination.e164 is None and destination.country is None
    else:
        assert destination.number_type == "invalid" and destination.error


def test_well_known_emergency_numbers() -> None:
    assert {"US", "CA"} <= classify("911").emergency_regions
    assert {"GB", "FR", "DE"} <= classify("112").emergency_regions
    assert "GB" in classify("999").emergency_regions
    assert "AU" in classify("000").emergency_regions
    assert classify("1-1-2").emergency_regions == classify("112").emergency_regions
    assert is_emergency("911", "US") and is_emergency("999", "gb")
    assert not is_emergency("+911", "US")
    assert not is_emergency("9110", "US")
    assert not is_emergency("911", "XX")


def test_every_string_of_up_to_three_digits_in_every_region() -> None:
    for length in (1, 2, 3):
        for chars in itertools.product("0123456789", repeat=length):
            digits = "".join(chars)
            expected = library_emergency_regions(digits)
            assert (numbers._emergency_regions(digits) or frozenset()) == expected, digits


def test_table_is_complete_for_four_to_six_digits() -> None:
    """Everything any region's emergency pattern accepts is in the table, and nothing else."""
    patterns = []
    for region in SHORT_REGIONS:
        metadata = PhoneMetadata.short_metadata_for_region(region)
        if metadata is not None and metadata.emergency is not None:
            pattern = metadata.emergency.national_number_pattern
            if pattern:
                patterns.append(f"(?:{pattern})")
    anything = re.compile("|".join(patterns))
    matched = {
        "".join(chars)
        for length in (4, 5, 6)
        for chars in itertools.product("0123456789", repeat=length)
        if anything.fullmatch("".join(chars))
    }
    table = {digits for digits in numbers._EMERGENCY if 4 <= len(digits) <= 6}
    assert matched == table
    assert all(len(digits) <= 6 for digits in numbers._EMERGENCY)
    for digits in sorted(table):
        assert numbers._EMERGENCY[digits] == library_emergency_regions(digits), digits


def test_random_short_strings_in_every_region() -> None:
    rng = random.Random(SEED)
    for _ in range(300):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))
        expected = library_emergency_regions(digits)
        assert (numbers._emergency_regions(digits) or frozenset()) == expected, (SEED, digits)
        region = rng.choice(SHORT_REGIONS)
        assert is_emergency(digits, region) == (region in expected), (SEED, digits, region)


def test_emergency_wins_over_the_00_prefix() -> None:
    assert classify("000").number_type == "emergency"
    assert classify("0044").number_type == "invalid"


# --- internals that keep the fast path honest -----------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("112|911", {"112", "911"}),
        ("1(?:1[02]|5|7|8)", {"110", "112", "15", "17", "18"}),
        ("9(?:11?|2)", {"91", "911", "92"}),
        ("0[0-2]{2}", {"000", "001", "002", "010", "011", "012", "020", "021", "022"}),
        ("1\\d", {f"1{d}" for d in range(10)}),
        ("1(?:2|3){1,2}", {"12", "13", "122", "123", "132", "133"}),
    ],
)
def test_expand_lists_finite_patterns(pattern: str, expected: set[str]) -> None:
    assert numbers._expand(pattern) == frozenset(expected)


@pytest.mark.parametrize("pattern", ["1\\d+", "9*", "[^1]", "(?=1)1", "a", "1{2,}", "(12"])
def test_expand_refuses_what_it_cannot_list(pattern: str) -> None:
    with pytest.raises(numbers._Unsupported):
        numbers._expand(pattern)


def test_unexpandable_emergency_pattern_still_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    table = dict(numbers._EMERGENCY)
    table.pop("999")
    monkeypatch.setattr(numbers, "_EMERGENCY", table)
    monkeypatch.setattr(numbers, "_EMERGENCY_UNEXPANDED", (("GB", re.compile("99\\d+")),))
    assert classify("999").emergency_regions == frozenset({"GB"})
    assert is_emergency("999", "GB") and not is_emergency("999", "IE")
    assert "GB" in classify("112").emergency_regions


def test_fallback_plan_uses_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    plans = dict(numbers._PLANS)
    plans["44"] = numbers._fallback_plan(44, phonenumbers.COUNTRY_CODE_TO_REGION_CODE[44])
    monkeypatch.setattr(numbers, "_PLANS", plans)
    rng = random.Random(SEED)
    candidates = [v for e in EXAMPLES if e.startswith("+44") for v in variants(e, rng)] + [
        "+44",
        "+440",
        "+4412",
    ]
    bad = mismatches(candidates)
    assert not bad, f"seed {SEED}: {bad[:10]}"
    assert classify("+449999999999").error == "not a valid number for +44 (GB, GG, IM, JE)"
    assert classify("+4412").error is not None


def test_every_calling_code_is_folded() -> None:
    """A library-backed plan is correct but slow: notice when metadata stops folding."""
    fallbacks = sorted(cc for cc, plan in numbers._PLANS.items() if plan.fallback)
    assert fallbacks == []
    assert set(numbers._PLANS) == {str(cc) for cc in CALLING_CODES}
