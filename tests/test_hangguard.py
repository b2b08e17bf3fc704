"""tests/support/hangguard.py: a hung section fails with every stack and frees its helpers."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.hangguard import hang_guard


async def stuck_helper() -> None:
    await asyncio.Event().wait()


async def test_a_hung_section_fails_with_every_task_stack() -> None:
    helper = asyncio.create_task(stuck_helper(), name="stuck-helper")
    with pytest.raises(AssertionError) as info:
        async with hang_guard(0.2):
            try:
                await asyncio.Event().wait()
            finally:
                await helper  # a finally that waits on a hung helper, as the crash tests do
    text = str(info.value)
    assert text.startswith("still waiting after")
    assert "stuck-helper" in text and "stuck_helper" in text
    assert helper.cancelled()


async def test_a_section_that_ends_in_time_leaves_no_timer_behind() -> None:
    async with hang_guard(0.05):
        pass
    await asyncio.sleep(0.1)  # past the bound: a timer left armed would cancel this task
    task = asyncio.current_task()
    assert task is not None and not task.cancelling()
