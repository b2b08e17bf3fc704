"""The persister and reaper of ``callgate serve``: a supervised ``callgate persist --reap``
child process.

Why a process of its own: ledger batches (thousands of events decoded and written per
transaction) on an HTTP worker's event loop doubled its CPU per request and hurt the p99
of call control. In a process of their own they never share a loop or a CPU time slice
with call control, and the machine's scheduler (or ``taskset``/``nice``) keeps them apart.

The child gets the effective settings through its environment: the Redis URL (``serve``
may have started an embedded redis-server and set it itself), the data directory and the
ledger URL; everything else comes from the same configuration file and variables as the
parent's. It inherits PROMETHEUS_MULTIPROC_DIR, so its metrics reach /metrics.

Supervision runs in a thread of the parent (as the embedded Redis's does): it blocks in
``wait()`` on the child, never on an event loop, so with one worker the HTTP loop of the
same process is not disturbed. An unexpected exit is logged and the child restarted after
a back-off; ``stop()`` sends SIGTERM (the child finishes its batch, commits, acknowledges,
exits) and waits, then SIGKILL after ``STOP_TIMEOUT_SECONDS`` (safe: an unacknowledged
batch is re-delivered and the ledger ignores what it already holds).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from gateway.config import Settings
from gateway.redis.server import die_with_parent_hook

log = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 30.0  # one ledger batch commits well within this
RESTART_BACKOFF_SECONDS = 1.0  # first restart delay, doubled per quick failure
RESTART_BACKOFF_MAX_SECONDS = 16.0
STABLE_RUN_SECONDS = 30.0  # a child that ran this long resets the back-off


def persist_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """CALLGATE_PERSIST=0 keeps persister and reaper out of `callgate serve` (run
    `callgate persist --reap` elsewhere then)."""
    return env.get("CALLGATE_PERSIST", "1").strip().lower() not in ("0", "false", "no", "off")


def persist_command() -> list[str]:
    """The interpreter running serve, so that a venv works without its bin/ on PATH."""
    return [sys.executable, "-m", "gateway", "persist", "--reap"]


def persist_env(settings: Settings, base: Mapping[str, str] = os.environ) -> dict[str, str]:
    env = dict(base)
    assert settings.redis_url, "serve sets redis_url before starting the persister"
    env["CALLGATE_REDIS_URL"] = settings.redis_url
    env["CALLGATE_DATA_DIR"] = str(settings.data_dir.resolve())
    env["CALLGATE_PARTITIONS"] = str(settings.partitions)
    if settings.database_url:
        env["CALLGATE_DATABASE_URL"] = settings.database_url
    return env


class PersistSupervisor:
    """Runs ``callgate persist --reap`` and restarts it whenever it exits unasked."""

    def __init__(self, env: Mapping[str, str], command: list[str] | None = None,
                 name: str = "persister") -> None:
        self.env = dict(env)
        self.command = command or persist_command()
        self.name = name  # in log lines: the same supervision runs the notifier too
        self._stop = threading.Event()  # set by stop(): also ends a back-off at once
        # Set by no_restart(), from a signal handler: a plain flag, since an Event takes a
        # lock that the interrupted main thread may hold.
        self._no_restart = False
        self._lock = threading.Lock()  # guards _proc against stop() during a (re)start
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._spawn():
            return
        self._thread = threading.Thread(target=self._watch, name="persist-supervisor",
                                        daemon=True)
        self._thread.start()

    def _spawn(self) -> bool:
        with self._lock:
            if self._stopping():
                return False
            # SIGTERM when serve dies, even by SIGKILL: no orphan persister left behind.
            self._proc = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL,
                                          preexec_fn=die_with_parent_hook())
        log.info("%s running as process %d", self.name, self._proc.pid)
        return True

    def _watch(self) -> None:
        backoff = RESTART_BACKOFF_SECONDS
        while True:
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            _mark_dead(proc.pid)
            if self._stopping():
                return
            if time.monotonic() - started >= STABLE_RUN_SECONDS:
                backoff = RESTART_BACKOFF_SECONDS
            log.error("%s (process %d) exited with status %d; restarting it in %.0f s",
                      self.name, proc.pid, code, backoff)
            while True:
                if self._stop.wait(backoff):  # serve is stopping: no restart
                    return
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX_SECONDS)
                try:
                    if not self._spawn():
                        return
                    break
                except OSError:
                    log.exception("starting the %s failed; next try in %.0f s", self.name,
                                  backoff)

    def _stopping(self) -> bool:
        return self._no_restart or self._stop.is_set()

    def no_restart(self) -> None:
        """serve is stopping: a child that exits now (it may have had the terminal's
        SIGINT itself) stays down. Safe in a signal handler: takes no lock."""
        self._no_restart = True

    def stop(self, timeout_s: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM the child and wait for it (SIGKILL after timeout_s); its exit status."""
        with self._lock:
            self._stop.set()
            proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0f s; killing it", self.name, timeout_s)
            proc.kill()
            code = proc.wait()
        if self._thread is not None:
            self._thread.join(timeout_s)
        # -SIGTERM: it had not yet installed its handler, so it had not read anything.
        if code not in (0, -signal.SIGTERM):
            log.warning("%s (process %d) stopped with status %d", self.name, proc.pid, code)
        return code


def _mark_dead(pid: int) -> None:
    """Drop the dead child's live gauges (backlog, lag) from /metrics; its counters stay.
    prometheus_client directly: importing gateway.metrics would create metric files for
    this (non-serving) process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class Supervisors:
    """Several supervised children (persister, notifier) behind one supervisor's interface:
    started, told not to restart and stopped together."""

    def __init__(self, *children: PersistSupervisor | None) -> None:
        self.children = [c for c in children if c is not None]

    def start(self) -> None:
        for c in self.children:
            c.start()

    def no_restart(self) -> None:
        for c in self.children:
            c.no_restart()

    def stop(self, timeout_s: float = STOP_TIMEOUT_SECONDS) -> int | None:
        codes = [c.stop(timeout_s) for c in self.children]
        return codes[0] if codes else None
