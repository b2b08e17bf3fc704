"""Errors shared by every layer, mapped to RFC 9457 problem documents by the API."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid input: the field (JSON pointer-like dotted path) and what is wrong with it."""

    field: str
    message: str


class ValidationError(Exception):
    """Bad input: answered as 400 with one entry per bad field; nothing was changed."""

    def __init__(self, errors: list[FieldError] | FieldError, status: int = 400) -> None:
        self.errors = errors if isinstance(errors, list) else [errors]
        self.status = status
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in self.errors))

    @classmethod
    def one(cls, field: str, message: str, status: int = 400) -> ValidationError:
        return cls([FieldError(field, message)], status)


class TenantNotFound(Exception):
    """No such tenant, or not one the token may act for: answered 404 alike (api.md)."""


class ConfigError(Exception):
    """Invalid configuration, detected at start-up; the message names the bad key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"configuration key {key!r}: {message}")
