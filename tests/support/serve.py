"""A ``callgate serve`` process under test, on a Redis the test started and controls (to
stop, kill or fail it over), without the persist child (the scenarios read Redis itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.redis.server import free_port
from loadtest.common import stop

TOKEN = "chaos-operator-token-" + "k3Xq9vTn2pLw"  # >= 128 bits (22+ characters)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PARTITIONS = 64
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 20.0


class ServeProcess:
    """``python -m gateway serve`` with one worker on a free port, its log in
    ``data_dir/serve.log``. ``env`` adds or overrides ``CALLGATE_*`` settings."""

    def __init__(self, data_dir: Path, redis_url: str, env: dict[str, str] | None = None,
                 workers: int = 1) -> None:
        self.data_dir = data_dir
        self.redis_url = redis_url
        self.workers = workers
        self.port = free_port()
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CALLGATE_DATA_DIR": str(self.data_dir / "var"),
               "CALLGATE_OPERATOR_TOKEN": TOKEN, "CALLGATE_LOG_LEVEL": "ERROR",
               "CALLGATE_REDIS_URL": self.redis_url, "CALLGATE_PERSIST": "0",
               "CALLGATE_PARTITIONS": str(PARTITIONS),
               # No per-tenant authorize rate: the scenarios load one tenant far above any
               # real one's rate, and their calls must reach the reservations.
               "CALLGATE_TENANT_AUTHORIZATIONS_PER_SECOND": "0", **self.extra_env}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--workers", str(self.workers),
                 "--port", str(self.port)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"callgate serve exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(f"callgate serve not ready:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, STOP_TIMEOUT_SECONDS)  # SIGTERM, then SIGKILL past the bound

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
