"""The process tree of a ``callgate serve`` under test, read from /proc."""

from __future__ import annotations

import time
from pathlib import Path

from loadtest.common import child_processes

PERSIST_ARGV_TAIL = ["persist", "--reap"]


def persist_children(serve_pid: int) -> list[int]:
    return [p for p, argv in child_processes(serve_pid).items()
            if argv[-2:] == PERSIST_ARGV_TAIL]


def wait_persist_child(serve_pid: int, deadline_s: float = 30.0, other_than: int = 0) -> int:
    """The pid of serve's persist child (a new one when ``other_than`` is given)."""
    end = time.monotonic() + deadline_s
    while True:
        found = [p for p in persist_children(serve_pid) if p != other_than]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < end, f"no persist child of {serve_pid}: " \
                                       f"{child_processes(serve_pid)}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def notify_children(serve_pid: int) -> list[int]:
    """serve's notifier child processes (``callgate notify``)."""
    return [p for p, argv in child_processes(serve_pid).items() if argv[-1:] == ["notify"]]


def wait_notify_child(serve_pid: int, deadline_s: float = 30.0, other_than: int = 0) -> int:
    """The pid of serve's notifier child (a new one when ``other_than`` is given)."""
    end = time.monotonic() + deadline_s
    while True:
        found = [p for p in notify_children(serve_pid) if p != other_than]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert time.monotonic() < end, f"no notify child of {serve_pid}: " \
                                       f"{child_processes(serve_pid)}"
        time.sleep(0.05)
