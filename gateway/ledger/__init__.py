"""The durable ledger: every stream event once, and the projections derived from them."""

from __future__ import annotations

from pathlib import Path

from gateway.ledger.base import Entry, Ledger

__all__ = ["Entry", "Ledger", "open_ledger"]


async def open_ledger(url: str, migrate: bool = True) -> Ledger:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path`` or ``postgresql://…``."""
    ledger: Ledger
    if url.startswith("sqlite:///"):
        from gateway.ledger.sqlite import SqliteLedger

        ledger = await SqliteLedger.open(Path(url[len("sqlite:///"):]))
    elif url.startswith(("postgresql://", "postgres://")):
        from gateway.ledger.postgres import PostgresLedger

        ledger = await PostgresLedger.open(url)
    else:
        raise ValueError(f"unsupported ledger URL scheme: {url.split(':', 1)[0]}")
    if migrate:
        await ledger.migrate()
    return ledger
