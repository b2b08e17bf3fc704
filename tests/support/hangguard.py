"""A bound on how long a test section may wait, for the tests that kill processes under load:
far above their normal time, so that a rare hang is reported with where every task waits
instead of holding the run until CI's limit. Not a timing assertion: nothing is measured."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator


def task_stacks() -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(file=out)
    return out.getvalue()


@contextlib.asynccontextmanager
async def hang_guard(seconds: float) -> AsyncIterator[None]:
    """After ``seconds``: record every task's stack, cancel every task (the section's own
    helpers too, so that its ``finally`` blocks can finish), and fail with the stacks."""
    loop = asyncio.get_running_loop()
    stacks: list[str] = []

    def fire() -> None:
        stacks.append(task_stacks())
        for task in asyncio.all_tasks(loop):
            task.cancel()

    handle = loop.call_later(seconds, fire)
    try:
        yield
    except asyncio.CancelledError:
        if not stacks:
            raise
        raise AssertionError(f"still waiting after {seconds:.0f} s; tasks:\n{stacks[0]}") \
            from None
    finally:
        handle.cancel()
