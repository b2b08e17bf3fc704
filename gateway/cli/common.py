"""What the ``callgate`` subcommands share: the event loop they run on and the Redis they
talk to."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from gateway.config import Settings, load_settings

T = TypeVar("T")


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run one command's coroutine on uvloop."""
    install_uvloop()
    return asyncio.run(coro)


def settings_with_redis() -> Settings:
    """The settings, with the Redis of CALLGATE_REDIS_URL, or else the one `callgate
    serve` embeds in the data directory."""
    from gateway.redis.server import embedded_url

    settings = load_settings()
    if not settings.redis_url:
        url = embedded_url(settings.data_dir)
        if url is None:
            raise SystemExit("callgate: CALLGATE_REDIS_URL is required for this command "
                             f"(no embedded Redis in {settings.data_dir})")
        settings = replace(settings, redis_url=url)
    return settings
