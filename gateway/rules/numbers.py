"""Dialled-destination classification for the call-authorization hot path.

Every call is classified before its user record is read, so this runs thousands of times a
second per core and cannot know the caller's country. ``phonenumbers`` is the authority on
what is valid (rating tables and the API use it too), but ``parse`` + ``is_valid_number`` +
``region_code_for_number`` + ``number_type`` cost roughly 58 us per number. This module
re-derives the library's own decision procedure from its metadata once, at import time:

* country calling code -> a ``_Plan`` holding the regions sharing that code (in the library's
  order), the main region's national-prefix-stripping rule, and, for every national number
  length that any of those regions allows, ONE compiled regular expression. That expression
  is the library's region-selection loop and ``_number_type_helper`` chain folded into a
  single ordered alternation with one capturing group per (region, type) outcome: Python's
  ``re`` tries alternatives left to right, so the first group that matches is exactly the
  first region / first type the library would have accepted, and ``Match.lastindex`` names it.
* every emergency short code of every region -> a dict from digits to the regions in which
  they are an emergency number (the emergency patterns are finite, so they are enumerated).

A plan whose metadata uses something the folding cannot reproduce is marked ``fallback`` and
answered by the library itself, so an unexpected metadata update degrades speed, not
correctness. ``tests/test_numbers.py`` checks the equivalence against the library.

Cost, measured with phonenumbers 9.0.43 on CPython 3.11: importing this module takes about
0.3 s (0.05 s of it the library loading all region metadata, the rest compiling ~570 folded
expressions for 215 calling codes) and retains about 3.8 MB of our own on top of the 2.7 MB
of library metadata. ``classify`` averages about 2 us per number over a random mix of valid
and invalid numbers; the library path takes 36-73 us for one number repeated and over 100 us
on a random mix, where its per-call re.compile keeps missing ``re``'s 512-entry cache.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberDesc, PhoneNumberFormat, PhoneNumberType
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, NumberParseException

__all__ = ["NUMBER_TYPES", "Destination", "classify", "is_emergency", "normalise_e164"]

NUMBER_TYPES: tuple[str, ...] = (
    "fixed_line",
    "mobile",
    "fixed_line_or_mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "unknown",
)

_TYPE_NAMES: dict[int, str] = {
    PhoneNumberType.FIXED_LINE: "fixed_line",
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.PERSONAL_NUMBER: "personal_number",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
    PhoneNumberType.UNKNOWN: "unknown",
}

# The order in which phonenumbers' _number_type_helper tests the descriptions before it gets
# to fixed line / mobile; the first match wins, so the folded alternation must keep it.
_SPECIAL_TYPES: tuple[tuple[str, str], ...] = (
    ("premium_rate", "premium_rate"),
    ("toll_free", "toll_free"),
    ("shared_cost", "shared_cost"),
    ("voip", "voip"),
    ("personal_number", "personal_number"),
    ("pager", "pager"),
    ("uan", "uan"),
    ("voicemail", "voicemail"),
)

_MAX_RAW_LENGTH = 32
# Limits the library applies while parsing (phonenumberutil._MIN/_MAX_LENGTH_FOR_NSN).
_MIN_NSN_LENGTH = 2
_MAX_NSN_LENGTH = 17
# Separators people and switches put into numbers; the library ignores them too.
_SEPARATORS = str.maketrans("", "", " \u00a0-.()")
_NO_REGIONS: frozenset[str] = frozenset()
_NOT_E164 = (
    "must start with + and a country code (E.164, e.g. +14165550100); "
    "only emergency numbers may be dialled without one"
)


class Destination(NamedTuple):
    """The verdict on one dialled destination, immutable so it can be shared and cached.

    ``error`` is written for the person who dialled, because it ends up in the API answer.
    """

    raw: str
    e164: str | None
    country: str | None
    number_type: str
    emergency_regions: frozenset[str]
    error: str | None

    @property
    def valid(self) -> bool:
        """Emergency short codes are not "valid" E.164 numbers: callers route them apart."""
        return self.e164 is not None


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything needed to classify numbers of one country calling code without the library."""

    cc: str
    plus_cc: str
    regions: tuple[str, ...]
    fallback: bool
    # The main region's national-prefix rule, applied by phonenumbers.parse even to "+cc..."
    # input (so "+44 0 20 7183 8750" is the same number as "+44 20 7183 8750").
    npp: re.Pattern[str] | None
    transform: str | None
    main_general: re.Pattern[str] | None
    strip_keeps_length: frozenset[int]
    # Per national number length: the folded expression and, per capturing group number,
    # (region, type name) -- type None means "this region was chosen, but nothing matched".
    matchers: dict[int, tuple[re.Pattern[str], tuple[tuple[str, str | None], ...]]]
    lengths: frozenset[int]
    min_length: int
    max_length: int
    sole_region: str | None


def _desc_pattern(desc: PhoneNumberDesc | None, length: int) -> str | None:
    """Mirror _is_number_matching_desc: a description only competes at lengths it allows."""
    if desc is None or not desc.national_number_pattern:
        return None
    if desc.possible_length and length not in desc.possible_length:
        return None
    return desc.national_number_pattern


def _type_alternatives(md: PhoneMetadata, length: int) -> list[tuple[str, str]]:
    """Mirror _number_type_helper as an ordered list of (pattern, type) alternatives."""
    alternatives: list[tuple[str, str]] = []
    for attr, name in _SPECIAL_TYPES:
        pattern = _desc_pattern(getattr(md, attr), length)
        if pattern is not None:
            alternatives.append((pattern, name))
    fixed = _desc_pattern(md.fixed_line, length)
    mobile = _desc_pattern(md.mobile, length)
    same = md.same_mobile_and_fixed_line_pattern
    if fixed is not None:
        if same:
            alternatives.append((fixed, "fixed_line_or_mobile"))
        else:
            if mobile is not None:
                alternatives.append((rf"(?=(?:{mobile})\Z)(?:{fixed})", "fixed_line_or_mobile"))
            alternatives.append((fixed, "fixed_line"))
    if not same and mobile is not None:
        alternatives.append((mobile, "mobile"))
    return alternatives


def _region_branch(
    region: str,
    md: PhoneMetadata,
    length: int,
    by_leading_digits: bool,
    outcomes: list[tuple[str, str | None]],
) -> str | None:
    """One region's share of the folded expression, in the library's region-selection terms.

    A region with leading digits is chosen by them alone (then valid or not by its types), so
    its branch ends in a catch-all group that stops the search from moving on to later regions.
    A region without is chosen only if some type matches, so a miss falls through.
    """
    general = _desc_pattern(md.general_desc, length)
    types = _type_alternatives(md, length) if general is not None else []
    typed = ""
    if types:
        groups = "|".join(f"({pattern})" for pattern, _ in types)
        typed = rf"(?=(?:{general})\Z)(?:{groups})"
        outcomes.extend((region, name) for _, name in types)
    if by_leading_digits:
        outcomes.append((region, None))
        inner = f"{typed}|" if typed else ""
        return rf"(?=(?:{md.leading_digits}))(?:{inner}(\d*))"
    return typed or None


def _region_metadata(cc: int, region: str) -> PhoneMetadata | None:
    """Which metadata the library consults for a region of this calling code."""
    if region == "001":
        return PhoneMetadata.metadata_for_nongeo_region(cc)
    return PhoneMetadata.metadata_for_region(region)


def _strip_keeps_length(md: PhoneMetadata) -> frozenset[int]:
    """Lengths after national-prefix stripping that parse() accepts (_test_number_length).

    parse() keeps the stripped number only if its length is possible or too long; too short,
    local-only and impossible lengths make it keep the number as given.
    """
    general = md.general_desc
    assert general is not None
    lengths = general.possible_length
    local = general.possible_length_local_only
    keep: set[int] = set()
    for n in range(_MAX_RAW_LENGTH + 1):
        if n in local or n < lengths[0]:
            continue
        if n == lengths[0] or n > lengths[-1] or n in lengths[1:]:
            keep.add(n)
    return frozenset(keep)


def _fallback_plan(cc: int, regions: tuple[str, ...]) -> _Plan:
    """A plan that sends every number of this calling code to the library."""
    return _Plan(
        cc=str(cc),
        plus_cc=f"+{cc}",
        regions=regions,
        fallback=True,
        npp=None,
        transform=None,
        main_general=None,
        strip_keeps_length=frozenset(),
        matchers={},
        lengths=frozenset(range(_MIN_NSN_LENGTH, _MAX_NSN_LENGTH + 1)),
        min_length=_MIN_NSN_LENGTH,
        max_length=_MAX_NSN_LENGTH,
        sole_region=regions[0] if len(regions) == 1 else None,
    )


def _build_plan(cc: int, regions: tuple[str, ...]) -> _Plan:
    """Fold one calling code's metadata; anything unexpected yields a library-backed plan."""
    main = _region_metadata(cc, regions[0])
    if main is None or main.general_desc is None or not main.general_desc.possible_length:
        return _fallback_plan(cc, regions)
    members: list[tuple[str, PhoneMetadata]] = []
    for region in regions:
        # Mirrors the library: the lone region of a code is used as is, while in a shared
        # code a region without metadata is skipped ("001" never has region metadata).
        md = (
            _region_metadata(cc, region)
            if len(regions) == 1
            else PhoneMetadata.metadata_for_region(region)
        )
        if md is None:
            continue
        if md.general_desc is None or not md.general_desc.possible_length:
            return _fallback_plan(cc, regions)
        if region != "001" and md.country_code != cc:
            return _fallback_plan(cc, regions)
        members.append((region, md))
    lengths = sorted(
        {n for _, md in members if md.general_desc for n in md.general_desc.possible_length}
    )
    if not lengths:
        return _fallback_plan(cc, regions)
    shared = len(regions) > 1
    matchers: dict[int, tuple[re.Pattern[str], tuple[tuple[str, str | None], ...]]] = {}
    for length in lengths:
        outcomes: list[tuple[str, str | None]] = [("", None)]  # group numbers start at 1
        branches = [
            branch
            for region, md in members
            if (
                branch := _region_branch(
                    region, md, length, shared and md.leading_digits is not None, outcomes
                )
            )
            is not None
        ]
        if not branches:
            continue
        try:
            compiled = re.compile("|".join(branches))
        except re.error:
            return _fallback_plan(cc, regions)
        if compiled.groups != len(outcomes) - 1:
            # A metadata pattern brought its own capturing groups: lastindex would lie.
            return _fallback_plan(cc, regions)
        matchers[length] = (compiled, tuple(outcomes))
    npp: re.Pattern[str] | None = None
    transform = main.national_prefix_transform_rule or None
    if main.national_prefix_for_parsing:
        npp = re.compile(main.national_prefix_for_parsing)
        if transform is not None and npp.groups == 0:
            return _fallback_plan(cc, regions)
    general = main.general_desc.national_number_pattern
    return _Plan(
        cc=str(cc),
        plus_cc=f"+{cc}",
        regions=regions,
        fallback=False,
        npp=npp,
        transform=transform,
        main_general=re.compile(general) if general else None,
        strip_keeps_length=_strip_keeps_length(main),
        matchers=matchers,
        lengths=frozenset(lengths),
        min_length=lengths[0],
        max_length=lengths[-1],
        sole_region=regions[0] if len(regions) == 1 else None,
    )


def _build_plans() -> dict[str, _Plan]:
    """Keyed by the calling code as digits, so extraction is three slice-and-lookups."""
    return {
        str(cc): _build_plan(cc, tuple(regions))
        for cc, regions in COUNTRY_CODE_TO_REGION_CODE.items()
        if regions
    }


# --- emergency short codes ------------------------------------------------------------------


class _Unsupported(Exception):
    """The pattern uses syntax the enumerator does not expand (open-ended repetition etc.)."""


_ENUMERATION_LIMIT = 100_000


def _expand(pattern: str) -> frozenset[str]:
    """All strings a finite digit pattern fully matches.

    Emergency patterns are small finite languages ("112|911", "1(?:1[02]|5|7|8)"), so they can
    be listed; anything this tiny parser does not understand raises _Unsupported.
    """
    pos = 0

    def cross(left: set[str], right: Iterable[str]) -> set[str]:
        result = {a + b for a in left for b in right}
        if len(result) > _ENUMERATION_LIMIT:
            raise _Unsupported(pattern)
        return result

    def alternation() -> set[str]:
        nonlocal pos
        result = sequence()
        while pos < len(pattern) and pattern[pos] == "|":
            pos += 1
            result |= sequence()
        return result

    def sequence() -> set[str]:
        nonlocal pos
        result = {""}
        while pos < len(pattern) and pattern[pos] not in "|)":
            atom_strings = atom()
            result = cross(result, quantified(atom_strings))
        return result

    def atom() -> set[str]:
        nonlocal pos
        char = pattern[pos]
        if char == "(":
            if pattern.startswith("(?:", pos):
                pos += 3
            elif pattern.startswith("(?", pos):
                raise _Unsupported(pattern)
            else:
                pos += 1
            inner = alternation()
            if pos >= len(pattern) or pattern[pos] != ")":
                raise _Unsupported(pattern)
            pos += 1
            return inner
        if char == "[":
            end = pattern.find("]", pos)
            if end < 0:
                raise _Unsupported(pattern)
            body = pattern[pos + 1 : end]
            pos = end + 1
            return character_class(body)
        if char == "\\":
            if pattern[pos + 1 : pos + 2] != "d":
                raise _Unsupported(pattern)
            pos += 2
            return set("0123456789")
        if char.isascii() and char.isdigit():
            pos += 1
            return {char}
        raise _Unsupported(pattern)

    def character_class(body: str) -> set[str]:
        if body.startswith("^"):
            raise _Unsupported(pattern)
        chars: set[str] = set()
        i = 0
        while i < len(body):
            if body.startswith("\\d", i):
                chars.update("0123456789")
                i += 2
            elif i + 2 < len(body) and body[i + 1] == "-":
                chars.update(chr(c) for c in range(ord(body[i]), ord(body[i + 2]) + 1))
                i += 3
            else:
                chars.add(body[i])
                i += 1
        if not all(c.isascii() and c.isdigit() for c in chars):
            raise _Unsupported(pattern)
        return chars

    def quantified(strings: set[str]) -> set[str]:
        nonlocal pos
        if pos >= len(pattern):
            return strings
        char = pattern[pos]
        if char == "?":
            pos += 1
            if pos < len(pattern) and pattern[pos] in "?+":
                raise _Unsupported(pattern)
            return strings | {""}
        if char in "*+":
            raise _Unsupported(pattern)
        if char == "{":
            end = pattern.find("}", pos)
            if end < 0:
                raise _Unsupported(pattern)
            low_text, _, high_text = pattern[pos + 1 : end].partition(",")
            if not low_text.isdigit() or (high_text and not high_text.isdigit()):
                raise _Unsupported(pattern)
            if "," in pattern[pos + 1 : end] and not high_text:
                raise _Unsupported(pattern)
            low = int(low_text)
            high = int(high_text) if high_text else low
            pos = end + 1
            if pos < len(pattern) and pattern[pos] in "?+":
                raise _Unsupported(pattern)
            result: set[str] = set()
            repeated = {""}
            for count in range(high + 1):
                if count >= low:
                    result |= repeated
                repeated = cross(repeated, strings)
            return result
        return strings

    expanded = alternation()
    if pos != len(pattern):
        raise _Unsupported(pattern)
    return frozenset(expanded)


def _build_emergency() -> tuple[dict[str, frozenset[str]], tuple[tuple[str, re.Pattern[str]], ...]]:
    """Digits -> regions where they are an emergency number, plus regions left to the library.

    A region lands in the second list only if its pattern could not be enumerated; none does
    with the current metadata, but a metadata update must not make emergency calls fail.
    """
    by_number: dict[str, set[str]] = {}
    unexpanded: list[tuple[str, re.Pattern[str]]] = []
    for region in phonenumbers.SUPPORTED_SHORT_REGIONS:
        md = PhoneMetadata.short_metadata_for_region(region)
        if md is None or md.emergency is None or not md.emergency.national_number_pattern:
            continue
        pattern = md.emergency.national_number_pattern
        compiled = re.compile(pattern)
        try:
            numbers = _expand(pattern)
        except _Unsupported:
            unexpanded.append((region, compiled))
            continue
        for number in numbers:
            # Cross-check the enumerator against the real engine on every string it produced.
            if number and compiled.fullmatch(number):
                by_number.setdefault(number, set()).add(region)
    return {k: frozenset(v) for k, v in by_number.items()}, tuple(unexpanded)


_PLANS: dict[str, _Plan] = _build_plans()
_EMERGENCY, _EMERGENCY_UNEXPANDED = _build_emergency()


# --- classification -------------------------------------------------------------------------


def _to_ascii(text: str) -> str:
    """Fold non-ASCII decimal digits (full-width, Arabic-Indic, ...) the way the library does.

    Anything else non-ASCII is kept so that the caller rejects it with a precise message.
    """
    out = []
    for char in text:
        if char.isascii():
            out.append(char)
        elif char.isdecimal():
            out.append(str(unicodedata.decimal(char)))
        elif char == "\uff0b":  # FULLWIDTH PLUS SIGN, a plus sign to the library as well
            out.append("+")
        else:
            out.append(char)
    return "".join(out)


def _clean(raw: str) -> str:
    """Separators removed and digits folded to ASCII: the string every check looks at."""
    text = raw.translate(_SEPARATORS)
    return text if text.isascii() else _to_ascii(text)


def _is_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit alone also accepts superscripts and other scripts."""
    return text.isascii() and text.isdigit()


def normalise_e164(raw: str) -> str | None:
    """Give "+digits" for anything shaped like an international number, without judging it.

    Only a leading "+" or "00" marks a number as international: the gateway does not know
    the caller's country, so a national format cannot be interpreted.
    """
    text = _clean(raw)
    if text[:1] == "+":
        body = text[1:]
    elif text[:2] == "00":
        body = text[2:]
    else:
        return None
    return "+" + body if body and _is_digits(body) else None


def is_emergency(raw: str, region: str) -> bool:
    """Same answer as shortnumberinfo.is_emergency_number for a short code, by dict lookup."""
    digits = _clean(raw)
    if not _is_digits(digits):
        return False
    region = region.upper()
    regions = _EMERGENCY.get(digits)
    if regions is not None and region in regions:
        return True
    return any(r == region and p.fullmatch(digits) for r, p in _EMERGENCY_UNEXPANDED)


def _emergency_regions(digits: str) -> frozenset[str] | None:
    """Regions in which these digits are an emergency number, or None if there are none."""
    regions = _EMERGENCY.get(digits)
    if _EMERGENCY_UNEXPANDED:
        extra = {r for r, p in _EMERGENCY_UNEXPANDED if p.fullmatch(digits)}
        if extra:
            regions = (regions or _NO_REGIONS) | extra
    return regions


def _invalid(raw: str, error: str) -> Destination:
    return Destination(raw, None, None, "invalid", _NO_REGIONS, error)


def _explain_characters(text: str) -> str:
    """Why a string is not a number, in terms the person who dialled it understands."""
    if not text:
        return "empty destination"
    if any(char.isalpha() for char in text):
        return "contains letters; dial digits only, in E.164 form (+ and a country code)"
    if "+" in text[1:]:
        return "'+' may only appear once, at the start"
    return "contains characters other than digits, a leading +, spaces and - . ( )"


def _strip_national_prefix(plan: _Plan, npp: re.Pattern[str], nsn: str) -> str:
    """Mirror parse(): _maybe_strip_national_prefix_carrier_code + the length re-check."""
    match = npp.match(nsn)
    if match is None:
        return nsn
    general = plan.main_general
    viable = general is not None and general.fullmatch(nsn) is not None
    groups = match.groups()
    transform = plan.transform
    if transform is None or groups[-1] is None:
        stripped = nsn[match.end() :]
    else:
        stripped = npp.sub(transform, nsn, count=1)
    if viable and (general is None or general.fullmatch(stripped) is None):
        return nsn
    return stripped if len(stripped) in plan.strip_keeps_length else nsn


def _classify_with_library(raw: str, number: str, plan: _Plan) -> Destination:
    """The slow, authoritative path, for calling codes whose metadata could not be folded."""
    try:
        parsed = phonenumbers.parse(number, None)
    except NumberParseException as exc:
        return _invalid(raw, f"not a valid number: {exc}")
    region = phonenumbers.region_code_for_number(parsed)
    if region is None or not phonenumbers.is_valid_number(parsed):
        return _invalid(raw, f"not a valid number for {region or _shared_code_name(plan)}")
    return Destination(
        raw,
        phonenumbers.format_number(parsed, PhoneNumberFormat.E164),
        region,
        _TYPE_NAMES.get(phonenumbers.number_type(parsed), "unknown"),
        _NO_REGIONS,
        None,
    )


def _classify_international(raw: str, digits: str) -> Destination:
    """Country code, national prefix, then one folded-regex match: parse + validate + type."""
    if not digits or digits[0] == "0":
        return _invalid(raw, "must start with + and a country code")
    if len(digits) < 3:
        return _invalid(raw, "too short: expected + then a country code and a number")
    plan = _PLANS.get(digits[:1]) or _PLANS.get(digits[:2]) or _PLANS.get(digits[:3])
    if plan is None:
        return _invalid(raw, f"unknown country code: +{digits[:3]}...")
    if plan.fallback:
        return _classify_with_library(raw, "+" + digits, plan)
    nsn = digits[len(plan.cc) :]
    if len(nsn) < _MIN_NSN_LENGTH:
        return _invalid(raw, f"too short for {plan.plus_cc}")
    npp = plan.npp
    if npp is not None:
        nsn = _strip_national_prefix(plan, npp, nsn)
    length = len(nsn)
    matcher = plan.matchers.get(length)
    region = plan.sole_region
    if matcher is not None:
        match = matcher[0].fullmatch(nsn)
        if match is not None and match.lastindex is not None:
            chosen, number_type = matcher[1][match.lastindex]
            if number_type is not None:
                return Destination(raw, plan.plus_cc + nsn, chosen, number_type, _NO_REGIONS, None)
            region = chosen
    if length < plan.min_length:
        return _invalid(raw, f"too short for {plan.plus_cc}")
    if length > plan.max_length:
        return _invalid(raw, f"too long for {plan.plus_cc}")
    if length not in plan.lengths:
        expected = " or ".join(str(n) for n in sorted(plan.lengths))
        return _invalid(
            raw, f"wrong number of digits for {plan.plus_cc}: {expected} after the country code"
        )
    return _invalid(raw, f"not a valid number for {region or _shared_code_name(plan)}")


def _shared_code_name(plan: _Plan) -> str:
    """Name a shared code as "+44 (GB, GG, IM, JE)"; +1 has too many regions to list."""
    if len(plan.regions) <= 4:
        return f"{plan.plus_cc} ({', '.join(plan.regions)})"
    return plan.plus_cc


def _classify(raw: str) -> Destination:
    if len(raw) > _MAX_RAW_LENGTH:
        return _invalid(raw, f"longer than {_MAX_RAW_LENGTH} characters")
    text = _clean(raw)
    if text[:1] == "+":
        digits = text[1:]
        if not _is_digits(digits):
            return _invalid(raw, _explain_characters(text) if digits else _NOT_E164)
        return _classify_international(raw, digits)
    if not _is_digits(text):
        return _invalid(raw, _explain_characters(text))
    regions = _emergency_regions(text)
    if regions:
        return Destination(raw, None, None, "emergency", regions, None)
    if text[:2] == "00":
        return _classify_international(raw, text[2:])
    return _invalid(raw, _NOT_E164)


def classify(raw: str) -> Destination:
    """Classify a dialled destination; never raises, because a call must always get an answer.

    Emergency short codes are recognised before "00" is read as an international prefix, so
    that "000" (AU) stays an emergency call.
    """
    try:
        # Already clean E.164 (what switches send) skips the separator and Unicode handling.
        if len(raw) <= _MAX_RAW_LENGTH and raw[:1] == "+" and raw.isascii() and raw[1:].isdigit():
            return _classify_international(raw, raw[1:])
        return _classify(raw)
    except Exception:  # a defect here must not take the call path down
        return _invalid(raw if isinstance(raw, str) else repr(raw), "could not be classified")
