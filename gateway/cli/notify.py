"""``callgate notify``: the webhook notifier (gateway.notify.notifier), on its own or, by
default, as a supervised child of ``callgate serve`` (CALLGATE_NOTIFY=0 keeps it out; run
it elsewhere then). One notifier per deployment: a second one is safe (deliveries stay at
least once) but may attempt a delivery twice."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.cli.common import run_async, settings_with_redis
from gateway.cli.supervisor import PersistSupervisor, persist_env
from gateway.config import Settings


def notify_enabled(env: Mapping[str, str] = os.environ) -> bool:
    return env.get("CALLGATE_NOTIFY", "1").strip().lower() not in ("0", "false", "no", "off")


def notify_supervisor(settings: Settings) -> PersistSupervisor | None:
    """The child `callgate serve` supervises (the persister's supervision, another
    command); None when disabled."""
    if not notify_enabled():
        return None
    return PersistSupervisor(persist_env(settings),
                             [sys.executable, "-m", "gateway", "notify"], name="notifier")


async def _notify(settings: Settings) -> None:
    from gateway import metrics
    from gateway.notify.notifier import Notifier
    from gateway.redis.client import parse_url
    from gateway.redis.store import Store
    from gateway.rules.clock import SystemClock

    assert settings.redis_url
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = Store.from_url(settings.redis_url, settings.partitions)
    # On one Redis server the notifier waits for alerts on a connection of its own (a
    # blocking read over every notify stream) instead of polling; a cluster is polled.
    waiter = (Store.from_url(settings.redis_url, settings.partitions)
              if parse_url(settings.redis_url)[0] == "single" else None)
    try:
        await store.load_functions()
        await asyncio.gather(
            Notifier(store, SystemClock(), settings.webhook_allow_private,
                     waiter=waiter).run(stop),
            metrics.flush_until(stop))
    finally:
        await store.close()
        if waiter is not None:
            await waiter.close()


async def _status(settings: Settings) -> dict[str, Any]:
    from gateway.notify.notifier import Notifier
    from gateway.redis.store import Store
    from gateway.rules.clock import SystemClock

    assert settings.redis_url
    store = Store.from_url(settings.redis_url, settings.partitions)
    try:
        count, age = await Notifier(store, SystemClock()).pending()
        return {"pending": count, "oldest_pending_seconds": round(age, 3)}
    finally:
        await store.close()


def cmd_notify(args: argparse.Namespace) -> int:
    settings = settings_with_redis()
    if args.status:
        print(orjson.dumps(run_async(_status(settings))).decode())
        return 0
    run_async(_notify(settings))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("notify", help="run the webhook notifier (alerts -> webhooks)")
    p.add_argument("--status", action="store_true",
                   help="print pending deliveries and the oldest one's age as JSON and exit")
    p.set_defaults(func=cmd_notify)
