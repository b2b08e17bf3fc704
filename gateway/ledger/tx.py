"""One open ledger transaction: what a backend (SQLite, PostgreSQL) supplies, and what the
projections write through."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

Row = tuple[Any, ...]


class Tx(abc.ABC):
    """One open transaction."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> None: ...

    @abc.abstractmethod
    async def execute_many(self, sql: str, args: Sequence[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
