"""Shared by the benchmark, the Locust runner and the bulk loader: start a local gateway
(and its Redis) in a scratch directory, wait until it is ready, create tenants and users."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "loadtest" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 20.0, proc: subprocess.Popen[bytes] | None = None,
              method: str = "GET") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST"
                                         else None)
            with urllib.request.urlopen(req, timeout=1) as resp:
                if resp.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    """``taskset -c cpus cmd`` (or cmd unchanged when cpus is None)."""
    return (["taskset", "-c", cpus] if cpus is not None else []) + list(cmd)


@dataclass(frozen=True)
class Server:
    base: str  # http://127.0.0.1:port
    pid: int  # the serve process (its workers are its children)


@contextlib.contextmanager
def gateway(data_dir: Path, redis_url: str | None, token: str, *, workers: int = 1,
            cpus: str | None = None, port: int | None = None,
            log_level: str = "WARNING") -> Iterator[Server]:
    """A ``callgate serve`` process, stopped (SIGTERM: graceful) after."""
    port = port or free_port()
    env = {**os.environ, "CALLGATE_DATA_DIR": str(data_dir), "CALLGATE_OPERATOR_TOKEN": token,
           "CALLGATE_LOG_LEVEL": log_level, "CALLGATE_HTTP_HOST": "127.0.0.1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if redis_url:
        env["CALLGATE_REDIS_URL"] = redis_url
    cmd = pinned([str(BIN / "callgate"), "serve", "--workers", str(workers),
                  "--port", str(port)], cpus)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", proc=proc)
        yield Server(base, proc.pid)  # taskset execs: the same pid
    finally:
        stop(proc)


def new_token() -> str:
    return "bench-" + secrets.token_urlsafe(16)


async def create_tenants(base: str, token: str, tenants: Sequence[str], users_per_tenant: int,
                         *, country: str = "US", plan: str = "domestic",
                         topup: str | None = None, concurrency: int = 32) -> None:
    """PUT every tenant, then its users u0..u{n-1} (and a credit top-up), through the API."""
    headers = {"Authorization": f"Bearer {token}"}
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(base, headers=headers) as s:

        async def put(path: str, body: dict[str, Any], method: str = "PUT") -> None:
            async with sem, s.request(method, path, json=body) as r:
                if r.status >= 300:
                    raise RuntimeError(f"{method} {path}: {r.status} {await r.text()}")

        await asyncio.gather(*(put(f"/v1/tenants/{t}", {"name": t}) for t in tenants))
        await asyncio.gather(*(
            put(f"/v1/tenants/{t}/users/u{i}", {"country": country, "plan": plan})
            for t in tenants for i in range(users_per_tenant)
        ))
        if topup:
            await asyncio.gather(*(
                put(f"/v1/tenants/{t}/credits/topups",
                    {"amount": topup, "idempotency_key": f"bench-{t}"}, "POST")
                for t in tenants
            ))


def scratch_dir(name: str) -> Path:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"callgate-{name}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- the process tree, from /proc (this kernel has no /proc/PID/task/TID/children) ---------


def _parents() -> dict[int, list[int]]:
    """{ppid: [pid, ...]} of every live process, from the ppid field of /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    return parents


def tree_pids(pid: int) -> list[int]:
    """pid and its descendants (the serve process, its workers and its persist child)."""
    parents = _parents()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def child_processes(pid: int) -> dict[int, list[str]]:
    """{pid: argv} of the live direct children of ``pid`` (zombies have no argv)."""
    out: dict[int, list[str]] = {}
    for child in _parents().get(pid, []):
        try:
            raw = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode() for a in raw.split(b"\0") if a]
        if argv:
            out[child] = argv
    return out


def ensure_tool(name: str, package: str, needed_by: str) -> str:
    """The path of executable ``name``, installed with apt (Debian package ``package``)
    when missing."""
    path = shutil.which(name)
    if path:
        return path
    print(f"{name} not found: installing it with apt (Debian package {package})",
          file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                    package], check=True, env=env)
    path = shutil.which(name)
    if not path:
        raise SystemExit(f"{name} is required for {needed_by}")
    return path
