"""CPU per call at a switch's pace: whole calls (authorize, then end) at a fixed rate over a
few keep-alive connections, and the CPU the gateway's processes use when nothing happens.

`make bench` measures the gateway at saturation, where every event-loop tick is full and
commands are batched; a switch sends a few hundred calls a second over a handful of
connections, where every per-request and per-wake-up cost shows. This starts a private
redis-server (AOF everysec, unix socket) and `callgate serve` (one worker, its persist
child), creates tenants through the API, then for each rate runs wrk with
loadtest/lifecycle.lua and reads the CPU time of the HTTP worker, the persister and Redis
from /proc before and after: microseconds of CPU per call (authorize + end). Beside each
rate, the aiohttp hello world of `make bench` (loadtest/hello.py) gets the same requests at
the same pace over as many connections: its CPU per two requests is the floor that waking
up, reading and writing cost any asyncio server at that pace. Last, an idle phase with no
traffic: each process's share of a core.

    python -m loadtest.pace [--rates 100,300,1000] [--connections 8] [--duration 10]

Results: loadtest/results/pace.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

from gateway.redis.server import RedisServer
from loadtest.common import (
    RESULTS,
    create_tenants,
    ensure_tool,
    gateway,
    new_token,
    scratch_dir,
    tree_pids,
)

LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lifecycle.lua")
HELLO_LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "authorize.lua")
TENANTS = 20
CONNECTIONS = 8  # a switch's few keep-alive connections
IDLE_SETTLE_SECONDS = 2.0
USERS = 40


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (utime + stime of /proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_seconds_fine(pids: list[int]) -> float:
    """CPU seconds of these processes' live threads, to the nanosecond (the first field of
    /proc/PID/task/TID/schedstat): for the idle phase, where /proc/PID/stat's 10 ms ticks
    are too coarse. (A thread that exits takes its time with it: the processes measured
    idle keep theirs.)"""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total / 1e9


def processes(serve_pid: int, redis_pid: int) -> dict[str, list[int]]:
    """The gateway's processes by role: the HTTP worker(s) (and serve itself), the persist
    child (with the reaper), the notify child, Redis."""
    roles: dict[str, list[int]] = {"worker": [], "persister": [], "notifier": [],
                                   "redis": [redis_pid]}
    for pid in tree_pids(serve_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except FileNotFoundError:
            continue
        role = ("persister" if " persist" in cmd else "notifier" if " notify" in cmd
                else "worker")
        roles[role].append(pid)
    return roles


def snapshot(roles: dict[str, list[int]]) -> dict[str, float]:
    return {role: cpu_seconds(pids) for role, pids in roles.items()}


def run_rate(wrk_path: str, base: str, env: dict[str, str], roles: dict[str, list[int]],
             calls_per_s: int, connections: int, seconds: int) -> dict[str, Any]:
    before = snapshot(roles)
    cmd = [wrk_path, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "2s",
           "-s", LUA, base]
    out = subprocess.run(cmd, env={**env, "BENCH_RATE": str(2 * calls_per_s),
                                   "BENCH_RUN": f"{os.getpid()}-{calls_per_s}"},
                         check=True, capture_output=True, text=True).stdout
    after = snapshot(roles)
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
    r: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    calls = r["requests"] / 2
    r["calls_per_s"] = calls / (r["duration_us"] / 1e6)
    r["target_calls_per_s"] = calls_per_s
    r["cpu_us_per_call"] = {role: (after[role] - before[role]) / calls * 1e6 if calls else 0.0
                            for role in roles}
    r["errors"] = sum(r[k] for k in ("connect_errors", "read_errors", "write_errors",
                                     "status_errors", "timeouts"))
    return r


def run_hello(wrk_path: str, env: dict[str, str], calls_per_s: int, connections: int,
              seconds: int) -> float:
    """Hello world's CPU per two requests at the pace of ``calls_per_s`` calls."""
    from loadtest.bench import Hello

    hello = Hello(1, None)
    try:
        before = cpu_seconds(tree_pids(hello.proc.pid))
        out = subprocess.run(
            [wrk_path, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "2s",
             "-s", HELLO_LUA, f"http://127.0.0.1:{hello.port}"],
            env={**env, "BENCH_RATE": str(2 * calls_per_s)}, check=True, capture_output=True,
            text=True).stdout
        after = cpu_seconds(tree_pids(hello.proc.pid))
    finally:
        hello.close()
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
    requests = json.loads(line.removeprefix("BENCH_JSON "))["requests"]
    return (after - before) / requests * 2 * 1e6 if requests else 0.0


def run_idle(roles: dict[str, list[int]], seconds: float) -> dict[str, float]:
    time.sleep(IDLE_SETTLE_SECONDS)  # the last rate's tail (the persister's last round)
    before = {role: cpu_seconds_fine(pids) for role, pids in roles.items()}
    time.sleep(seconds)  # measuring what happens when nothing happens: the time is the point
    after = {role: cpu_seconds_fine(pids) for role, pids in roles.items()}
    return {role: (after[role] - before[role]) / seconds * 100 for role in roles}


def measure(rates: list[int], connections: int, seconds: int,
            idle_seconds: float) -> dict[str, Any]:
    wrk_path = ensure_tool("wrk", "wrk", "loadtest.pace")
    token = new_token()
    work = scratch_dir("pace")
    env = {**os.environ, "BENCH_TENANTS": str(TENANTS), "BENCH_USERS": str(USERS),
           "BENCH_TENANT_PREFIX": "pace-t", "BENCH_TOKEN": token}
    out: dict[str, Any] = {"connections": connections, "duration_s": seconds,
                           "loadavg_before": os.getloadavg()[0], "rates": []}
    with ExitStack() as stack:
        redis = RedisServer(work / "redis", appendonly=True, appendfsync="everysec",
                            name="pace-redis")
        redis.start()
        stack.callback(redis.stop)
        assert redis.pid is not None
        url = f"unix://{redis.unixsocket}" if redis.unixsocket else redis.url
        gw = stack.enter_context(gateway(work / "gw", url, token, workers=1))
        asyncio.run(create_tenants(gw.base, token, [f"pace-t{i}" for i in range(TENANTS)],
                                   USERS, topup="1000.00"))
        roles = processes(gw.pid, redis.pid)
        for rate in rates:
            print(f"{rate} calls/s over {connections} connections, {seconds} s ...", flush=True)
            r = run_rate(wrk_path, gw.base, env, roles, rate, connections, seconds)
            r["hello_cpu_us_per_two_requests"] = run_hello(wrk_path, env, rate, connections,
                                                           seconds)
            out["rates"].append(r)
        print(f"idle, {idle_seconds:.0f} s ...", flush=True)
        out["idle_percent_of_a_core"] = run_idle(roles, idle_seconds)
    return out


def table(res: dict[str, Any]) -> str:
    rows = ["| calls/s (target) | done | errors | p99 ms | worker µs/call | persister µs/call "
            "| Redis µs/call | hello world µs/2 requests |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rates"]:
        c = r["cpu_us_per_call"]
        rows.append(f"| {r['target_calls_per_s']} | {r['calls_per_s']:.0f} | {r['errors']} | "
                    f"{r['p99_us'] / 1000:.1f} | {c['worker']:.0f} | {c['persister']:.0f} | "
                    f"{c['redis']:.0f} | {r['hello_cpu_us_per_two_requests']:.0f} |")
    idle = res["idle_percent_of_a_core"]
    rows.append("")
    rows.append("idle, % of a core: " + ", ".join(f"{k} {v:.2f}" for k, v in idle.items())
                + f" (all {sum(idle.values()):.2f})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="100,300,1000",
                   help="calls/s, comma-separated ('' for the idle phase alone)")
    p.add_argument("--connections", type=int, default=CONNECTIONS)
    p.add_argument("--duration", type=int, default=10, help="seconds per rate")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of the idle phase")
    args = p.parse_args(argv)
    # --rates '': the idle phase alone.
    res = measure([int(r) for r in args.rates.split(",") if r.strip()], args.connections,
                  args.duration, args.idle)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pace.json").write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
