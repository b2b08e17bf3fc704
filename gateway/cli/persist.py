"""``callgate persist | export-cdrs | rebuild | audit``: the persistence side of the CLI."""

from __future__ import annotations

import argparse
import asyncio
import csv
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.cli.common import run_async, settings_with_redis
from gateway.config import Settings, load_settings


async def _open_ledger(url: str) -> Any:
    """The ledger, or exit with one line naming the error (no traceback) when its
    database cannot be reached."""
    from gateway.ledger import open_ledger
    from gateway.ledger.backoff import describe, expected_error

    try:
        return await open_ledger(url)
    except Exception as exc:
        if not expected_error(exc):
            raise
        raise SystemExit(f"callgate: the ledger is unavailable ({describe(exc)})") from None


async def _persist(settings: Settings, reaper: bool) -> None:
    from gateway.ledger.background import run_persister

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run_persister(settings, stop, reaper=reaper)


async def _status(settings: Settings) -> dict[str, Any]:
    from gateway.ledger.persister import persister_status
    from gateway.redis.store import Store

    assert settings.redis_url
    store = Store.from_url(settings.redis_url, settings.partitions)
    try:
        return await persister_status(store)
    finally:
        await store.close()


def cmd_persist(args: argparse.Namespace) -> int:
    settings = settings_with_redis()
    if args.status:
        print(orjson.dumps(run_async(_status(settings))).decode())
        return 0
    run_async(_persist(settings, reaper=args.reap))
    return 0


def _month_range(month: str) -> tuple[int, int]:
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 \
        else start.replace(month=start.month + 1)
    return int(start.timestamp()), int(end.timestamp())


async def _export(settings: Settings, tenant: str, month: str, out: Any) -> int:
    from gateway.ledger.cdrs import CSV_COLUMNS, csv_row
    from gateway.ledger.progress import Progress

    lo, hi = _month_range(month)
    ledger = await _open_ledger(settings.database_url_effective)
    try:
        total = (await ledger.query(
            "SELECT COUNT(*) FROM cdrs WHERE tenant = ? AND ended_at >= ? AND ended_at < ?",
            tenant, lo, hi))[0][0]
        bar = Progress(f"export {tenant} {month}", int(total))
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        async for row in ledger.stream_cdrs(tenant, lo, hi):
            writer.writerow(csv_row(row))
            bar.advance()
        bar.close()
        return bar.done
    finally:
        await ledger.close()


def cmd_export_cdrs(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        _month_range(args.month)
    except ValueError:
        print("callgate: --month must be YYYY-MM", file=sys.stderr)
        return 2
    if args.output == "-":
        run_async(_export(settings, args.tenant, args.month, sys.stdout))
    else:
        with open(args.output, "w", newline="") as f:
            run_async(_export(settings, args.tenant, args.month, f))
    return 0


async def _rebuild_or_audit(settings: Settings, what: str, force: bool) -> int:
    import time

    from gateway.ledger.audit import audit
    from gateway.ledger.persister import persister_status
    from gateway.ledger.rebuild import expected_state, rebuild, redis_is_empty
    from gateway.redis.store import Store

    assert settings.redis_url
    ledger = await _open_ledger(settings.database_url_effective)
    store = Store.from_url(settings.redis_url, settings.partitions)
    now = int(time.time())
    try:
        if what == "rebuild":
            ex = await expected_state(ledger, settings.partitions, now,
                                      settings.clock_skew_seconds)
            if not force and not await redis_is_empty(store, ex):
                print("callgate: Redis already holds tenants; rebuild restores into an "
                      "empty Redis (--force to write anyway)", file=sys.stderr)
                return 1
            keys = await rebuild(store, ledger, now, settings.clock_skew_seconds)
            print(f"rebuilt {keys} keys from the ledger")
            return 0
        status = await persister_status(store)
        print(f"persister backlog: {status['backlog_entries']} entries, "
              f"lag {status['lag_seconds']} s")
        problems = await audit(store, ledger, now, settings.clock_skew_seconds)
        for line in problems:
            print(line)
        print(f"{len(problems)} discrepanc{'y' if len(problems) == 1 else 'ies'}")
        return 1 if problems else 0
    except Exception as exc:
        from gateway.ledger.backoff import describe, expected_error

        if not expected_error(exc):
            raise
        # A store went away midway: one line, no traceback; a rebuild may be run again
        # with --force (it writes the same values).
        raise SystemExit(f"callgate: {what} stopped: {describe(exc)}") from None
    finally:
        await ledger.close()
        await store.close()


def cmd_rebuild(args: argparse.Namespace) -> int:
    return int(run_async(_rebuild_or_audit(settings_with_redis(), "rebuild", args.force)))


def cmd_audit(args: argparse.Namespace) -> int:
    return int(run_async(_rebuild_or_audit(settings_with_redis(), "audit", False)))


def register(sub: Any) -> None:
    """Adds the persistence commands to the ``callgate`` parser's subparsers."""
    p = sub.add_parser("persist", help="run the persister (Redis streams -> ledger)")
    p.add_argument("--status", action="store_true",
                   help="print backlog and lag as JSON and exit")
    p.add_argument("--reap", action="store_true", help="also close lost calls (D33)")
    p.set_defaults(func=cmd_persist)
    e = sub.add_parser("export-cdrs", help="export a tenant's CDRs of one month")
    e.add_argument("--tenant", required=True)
    e.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    e.add_argument("--format", choices=("csv",), default="csv")
    e.add_argument("--output", default="-", help="file (default: standard output)")
    e.set_defaults(func=cmd_export_cdrs)
    r = sub.add_parser("rebuild", help="restore an empty Redis from the ledger")
    r.add_argument("--force", action="store_true", help="write even if Redis is not empty")
    r.set_defaults(func=cmd_rebuild)
    a = sub.add_parser("audit", help="compare Redis with the ledger; non-zero on any "
                                     "discrepancy")
    a.set_defaults(func=cmd_audit)
