"""Input validation: every request field checked, every error naming its field.

One rule for unknown fields, everywhere: a request body field the endpoint does not know is
rejected (400, naming it). On an API that moves money a misspelt optional field
(``monthly_spend_limt``) silently ignored would be a limit silently not applied.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

import orjson

from gateway.errors import FieldError, ValidationError

# Ids go into URL paths: one made only of dots ("." or "..") is a path segment that clients,
# proxies and URL libraries rewrite (RFC 3986 dot segments), so it could never be addressed.
ID_RE = re.compile(r"(?!\.+\Z)[A-Za-z0-9._-]{1,64}", re.ASCII)
CALL_ID_RE = re.compile(r"(?!\.+\Z)[A-Za-z0-9._:@-]{1,128}", re.ASCII)
ID_HINT = "must be 1-64 characters of [A-Za-z0-9._-], not only dots"
CALL_ID_HINT = "must be 1-128 characters of [A-Za-z0-9._:@-], not only dots"
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)
MONTH_RE = re.compile(r"(\d{4})-(0[1-9]|1[0-2])", re.ASCII)

# Largest integer accepted anywhere (seconds, counts): far beyond any real value, far below
# what Lua's doubles hold exactly.
INT_MAX = 10**12


def path_id(value: str, name: str, pattern: re.Pattern[str] = ID_RE) -> str:
    """A path id (tenant, user, call, ...): the one check every route's ids go through."""
    if pattern.fullmatch(value) is None:
        raise ValidationError.one(name, CALL_ID_HINT if pattern is CALL_ID_RE else ID_HINT)
    return value


def json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise ValidationError.one("body", "a JSON object is required")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError.one("body", f"malformed JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValidationError.one("body", "must be a JSON object")
    return value


class Fields:
    """Reads typed fields of one JSON object, collecting every error before raising."""

    def __init__(self, obj: Mapping[str, Any], allowed: Collection[str]) -> None:
        self.obj = obj
        self.errors: list[FieldError] = [
            FieldError(k, "unknown field") for k in obj if k not in allowed
        ]

    def _fail(self, name: str, message: str) -> None:
        self.errors.append(FieldError(name, message))

    def done(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)

    def string(
        self, name: str, *, required: bool = False, default: str | None = None,
        max_len: int = 256, pattern: re.Pattern[str] | None = None, hint: str = "",
    ) -> str | None:
        if name not in self.obj or (self.obj[name] is None and not required):
            if required:
                self._fail(name, "is required")
            return default
        v = self.obj[name]
        if not isinstance(v, str):
            self._fail(name, "must be a string")
            return default
        if not v or len(v) > max_len:
            self._fail(name, f"must be 1-{max_len} characters")
            return default
        if pattern is not None and pattern.fullmatch(v) is None:
            self._fail(name, hint or f"must match {pattern.pattern}")
            return default
        return v

    def integer(
        self, name: str, *, required: bool = False, default: int | None = None,
        minimum: int = 0, maximum: int = INT_MAX, nullable: bool = False,
    ) -> int | None:
        if name not in self.obj:
            if required:
                self._fail(name, "is required")
            return default
        v = self.obj[name]
        if v is None and nullable:
            return None
        if isinstance(v, float) and v.is_integer():  # e.g. 10**30, which JSON parses as float
            self._fail(name, f"must be an integer between {minimum} and {maximum}")
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            self._fail(name, "must be an integer" + (" or null" if nullable else ""))
            return default
        if not minimum <= v <= maximum:
            self._fail(name, f"must be between {minimum} and {maximum}")
            return default
        return v

    def boolean(self, name: str, *, default: bool) -> bool:
        if name not in self.obj:
            return default
        v = self.obj[name]
        if not isinstance(v, bool):
            self._fail(name, "must be true or false")
            return default
        return v

    def choice(
        self, name: str, values: Collection[str], *, default: str | None = None,
        required: bool = False,
    ) -> str | None:
        if name not in self.obj:
            if required:
                self._fail(name, "is required")
            return default
        v = self.obj[name]
        if not isinstance(v, str) or v not in values:
            self._fail(name, "must be one of " + ", ".join(sorted(values)))
            return default
        return v

    def string_list(self, name: str, *, max_items: int, max_len: int = 64) -> list[str]:
        if name not in self.obj or self.obj[name] is None:
            return []
        v = self.obj[name]
        if not isinstance(v, list) or len(v) > max_items:
            self._fail(name, f"must be a list of at most {max_items} strings")
            return []
        out: list[str] = []
        for i, item in enumerate(v):
            if not isinstance(item, str) or not item or len(item) > max_len:
                self._fail(f"{name}[{i}]", f"must be a string of 1-{max_len} characters")
            else:
                out.append(item)
        return out

    def raw(self, name: str) -> Any:
        return self.obj.get(name)

    def has(self, name: str) -> bool:
        return name in self.obj and self.obj[name] is not None

    def fail(self, name: str, message: str) -> None:
        self._fail(name, message)


def query_int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    if name not in query:
        return default
    text = query[name]
    # The length first: int() refuses more than 4,300 digits with a ValueError (a 500).
    if (len(text) > len(str(hi)) or not text.isascii() or not text.isdigit()
            or not lo <= int(text) <= hi):
        raise ValidationError.one(name, f"must be an integer between {lo} and {hi}")
    return int(text)


def query_month(query: Mapping[str, str], name: str = "month") -> str | None:
    """YYYY-MM as YYYYMM, or None when absent."""
    if name not in query:
        return None
    m = MONTH_RE.fullmatch(query[name])
    if m is None:
        raise ValidationError.one(name, "must be a month written YYYY-MM")
    return m.group(1) + m.group(2)
