"""``make bench``: authorize throughput and latency against the hello-world ceiling.

One run, same generator (wrk + loadtest/authorize.lua), same settings, same machine:

1. pinned: gateway (1 worker) on CPU 0; wrk and redis-server on CPU 1, and there too the
   gateway's persist child process (moved there after start, SCHED_IDLE), so that the HTTP
   worker has CPU 0 to itself.
   a. closed loops, in turns (--repeat, default 3): gateway, then hello world
      (loadtest/hello.py, 1 process on CPU 0), each the same length; ratio = the median of
      the pairs' ratios (gateway run / the hello-world run right after it); the table
      shows the median run of each;
   b. at a fixed rate of 50 % of (a), in turns as well (--repeat): gateway, then hello
      world at the same rate (the generator's latency floor); the run of median p99 of
      each is reported.
   c. scrapers (--scrapers, default 64; 0 skips): at the same fixed rate as (b), in turns
      (--repeat): the gateway alone, then with that many concurrent /metrics scrapers
      (a second wrk, one connection each, scraping back to back; on CPU 1): authorize
      latency beside the same run without them, the scrapes/s served, and the Redis
      sampling rounds they caused (ZCARD calls / partitions, from INFO commandstats).
2. unpinned: 2 gateway workers, 2 hello workers, wrk with 2 threads, nothing pinned.
3. at a switch's pace (loadtest/pace.py; --pace-rates, "" skips): whole calls (authorize,
   then end) at 100, 300 and 1,000 calls/s over 8 keep-alive connections to a fresh
   gateway (1 worker), CPU per call of the HTTP worker, the persister and Redis beside the
   hello world's CPU per two requests at the same pace; then the CPU share of each when
   idle.

Server CPU per request counts the HTTP worker processes only; the persist child's CPU per
request is reported apart, and after each closed-loop run the persister backlog and the
seconds it takes to drain to 0.

Results: loadtest/results/bench.json and bench.md; the table is printed. The requests are
authorizations of real users (many tenants, large pools) with unique call ids, so every
request is one FCALL that reserves minutes; the allow fraction is read from /metrics.

    python -m loadtest.bench [--duration 10] [--connections 64] [--tenants 50 --users 40]
                             [--scrapers 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import redis as redis_py

from gateway.cli.supervisor import persist_enabled
from gateway.config import load_settings
from gateway.ledger.persister import persister_status
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from loadtest import pace
from loadtest.common import (
    BIN,
    RESULTS,
    ROOT,
    Server,
    child_processes,
    create_tenants,
    ensure_tool,
    free_port,
    gateway,
    new_token,
    pinned,
    scratch_dir,
    stop,
    tree_pids,
    wait_http,
)

LUA = ROOT / "loadtest" / "authorize.lua"
TARGET_RATIO = 0.75
# What the gateway may add to hello world's p99 at half load (same fixed rate, same run):
# the absolute p99 depends on the host; the difference is the gateway's own.
TARGET_TAIL_MS = 1.0
# The persist child runs SCHED_IDLE: on this 2-CPU box it would otherwise take a third of
# the CPU that wrk and Redis share (~65 us per event) and the figures would measure the
# ledger, not call control. The events wait in Redis streams, as designed; the backlog
# left at the end of each run and its drain time are reported.
DRAIN_DEADLINE_SECONDS = 120.0


class Wrk:
    def __init__(self, path: str, env: dict[str, str], connections: int) -> None:
        self.path = path
        self.env = env
        self.connections = connections
        self.runs = 0

    def run(self, url: str, seconds: int, *, threads: int = 1, cpus: str | None = "1",
            rate_per_thread: float = 0.0, connections: int | None = None,
            server_pids: list[int] | None = None, redis_pid: int | None = None,
            persist_pid: int | None = None) -> dict[str, Any]:
        """``server_pids``: the processes whose CPU is the server's (the HTTP workers)."""
        self.runs += 1
        pids = server_pids or []
        cpu0 = cpu_seconds(pids)
        rcpu0 = cpu_seconds([redis_pid]) if redis_pid else 0.0
        pcpu0 = cpu_seconds([persist_pid]) if persist_pid else 0.0
        load0 = os.getloadavg()[0]
        env = {**self.env, "BENCH_RUN": f"{os.getpid()}-{self.runs}",
               "BENCH_RATE": f"{rate_per_thread:.1f}"}
        cmd = pinned([self.path, "-t", str(threads), "-c", str(connections or self.connections),
                      "-d", f"{seconds}s", "--timeout", "2s", "-s", str(LUA), url], cpus)
        wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
        r: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r["errors"] = sum(r[k] for k in ("connect_errors", "read_errors", "write_errors",
                                         "status_errors", "timeouts"))
        r["command"] = " ".join(cmd)
        r["loadavg_1m_before"] = load0
        if r["requests"]:
            # wrk is the only child that ends meanwhile: the children's rusage delta is its.
            r["generator_cpu_us_per_request"] = (
                (wrk1.ru_utime + wrk1.ru_stime - wrk0.ru_utime - wrk0.ru_stime)
                / r["requests"] * 1e6)
            if pids:
                r["server_cpu_us_per_request"] = (cpu_seconds(pids) - cpu0) / r["requests"] * 1e6
            if redis_pid:
                r["redis_cpu_us_per_request"] = (
                    (cpu_seconds([redis_pid]) - rcpu0) / r["requests"] * 1e6)
            if persist_pid:
                r["persist_cpu_us_per_request"] = (
                    (cpu_seconds([persist_pid]) - pcpu0) / r["requests"] * 1e6)
        return r


def persist_child(serve_pid: int, deadline_s: float = 20.0) -> int | None:
    """The gateway's ``callgate persist --reap`` child, found by /proc/PID/cmdline (serve
    starts it once it listens); None with CALLGATE_PERSIST=0."""
    if not persist_enabled():
        return None
    end = time.monotonic() + deadline_s
    while True:
        for pid, argv in child_processes(serve_pid).items():
            if "persist" in argv:
                return pid
        if time.monotonic() > end:
            raise RuntimeError(f"serve ({serve_pid}) started no persist child")
        time.sleep(0.1)


def place(pid: int, cpus: set[int], idle: bool = False) -> None:
    """CPU affinity (and, with ``idle``, the SCHED_IDLE policy: CPU time only when nothing
    else wants it) for every thread of ``pid``: both act per thread on Linux, and threads
    started before (redis-server's bio threads, the persister's SQLite thread) keep
    their own."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        try:
            os.sched_setaffinity(tid, cpus)
            if idle:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # the thread ended meanwhile
            continue


def cpu_set(spec: str) -> set[int]:
    return {int(c) for c in spec.split(",")}


class Backlog:
    """The persister's backlog read from the streams (pending + not yet delivered entries,
    as ``callgate persist --status``): exact at any moment, unlike the /metrics gauge
    callgate_persister_backlog_events that the persister refreshes every few seconds."""

    def __init__(self, redis_url: str, partitions: int) -> None:
        self.redis_url = redis_url
        self.partitions = partitions

    def drain(self, deadline_s: float = DRAIN_DEADLINE_SECONDS) -> tuple[int, float | None]:
        """(events in the backlog now, seconds until it was 0; None: not within deadline_s)."""
        return asyncio.run(self._drain(deadline_s))

    async def _drain(self, deadline_s: float) -> tuple[int, float | None]:
        store = Store.from_url(self.redis_url, self.partitions)
        try:
            t0 = time.monotonic()
            first: int | None = None
            while True:
                left = int((await persister_status(store))["backlog_entries"])
                first = left if first is None else first
                if left == 0:
                    return first, time.monotonic() - t0
                if time.monotonic() - t0 > deadline_s:
                    return first, None
                await asyncio.sleep(0.1)
        finally:
            await store.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes: unlike req/s, CPU time per request does
    not depend on what else the machine runs (colleagues' test-suites share these cores)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def decisions(base: str) -> dict[str, float]:
    """{decision: count} summed from /metrics (all workers)."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("callgate_decisions_total{"):
            labels, value = line.rsplit(" ", 1)
            d = labels.split('decision="', 1)[1].split('"', 1)[0]
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            key = d if d == "allow" else f"deny:{reason}"
            out[key] = out.get(key, 0.0) + float(value)
    return out


def histogram(base: str, name: str, label: str) -> dict[float, float]:
    """{bucket upper bound: cumulative count} of one histogram series from /metrics."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and label in line:
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(value)
    return out


def quantiles(after: dict[float, float], before: dict[float, float]) -> dict[str, float]:
    """p50 / p99 of the observations between two readings, as the upper bound (ms) of the
    bucket holding them (the gateway's own view: parse to answer, and its Redis call)."""
    counts = sorted((b, n - before.get(b, 0.0)) for b, n in after.items())
    total = counts[-1][1] if counts else 0.0
    out: dict[str, float] = {}
    for q in (0.5, 0.99):
        bound = next((b for b, n in counts if total and n >= q * total), float("inf"))
        out[f"p{int(q * 100)}_ms_at_most"] = bound * 1000
    return out


SERVER_SIDE = (("request", "callgate_request_duration_seconds", 'operation="authorize"'),
               ("redis", "callgate_redis_duration_seconds", 'function="authorize"'))


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


class Hello:
    def __init__(self, workers: int, cpus: str | None) -> None:
        self.port = free_port()
        cmd = pinned([str(BIN / "python"), "-m", "loadtest.hello", "--port", str(self.port),
                      "--workers", str(workers)], cpus)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{self.port}/x", proc=self.proc, method="POST")

    def close(self) -> None:
        stop(self.proc)


def measure_gateway(wrk: Wrk, gw: Server, seconds: int, warmup: int, *, threads: int,
                    cpus: str | None, redis_pid: int, persist_pid: int | None,
                    rate_per_thread: float = 0.0, connections: int | None = None,
                    backlog: Backlog | None = None) -> dict[str, Any]:
    """One run; with ``backlog`` (closed-loop runs), then the persister backlog left at
    the end and the seconds the persist child takes to drain it."""
    url = f"{gw.base}/v1"
    if warmup:
        wrk.run(url, warmup, threads=threads, cpus=cpus)
    before = decisions(gw.base)
    hists = {k: histogram(gw.base, name, label) for k, name, label in SERVER_SIDE}
    forks = redis_forks(redis_pid)
    http_pids = [p for p in tree_pids(gw.pid) if p != persist_pid]
    r = wrk.run(url, seconds, threads=threads, cpus=cpus, server_pids=http_pids,
                redis_pid=redis_pid, persist_pid=persist_pid,
                rate_per_thread=rate_per_thread, connections=connections)
    r["decisions"] = delta(decisions(gw.base), before)
    r["server_side"] = {k: quantiles(histogram(gw.base, name, label), hists[k])
                        for k, name, label in SERVER_SIDE}
    r["redis_forks"] = redis_forks(redis_pid) - forks  # AOF rewrites during the run
    if backlog is not None:
        r["persister_backlog_events"], r["persister_drain_s"] = backlog.drain()
    return r


_REDIS_CLIENTS: dict[int, redis_py.Redis] = {}


def redis_client(pid: int, url: str | None = None) -> redis_py.Redis:
    if url is not None:
        _REDIS_CLIENTS[pid] = redis_py.Redis.from_url(url)
    return _REDIS_CLIENTS[pid]


def redis_forks(pid: int) -> int:
    stats = cast(dict[str, Any], redis_client(pid).info("stats"))  # stubs: maybe-awaitable
    return int(stats["total_forks"])


def measure_hello(wrk: Wrk, hello: Hello, seconds: int, warmup: int, threads: int,
                  wrk_cpus: str | None, rate_per_thread: float = 0.0) -> dict[str, Any]:
    """Closed loop; with ``rate_per_thread``, at that fixed rate instead (32 connections, as
    the gateway's half-load run): the latency floor of this generator on this machine."""
    url = f"http://127.0.0.1:{hello.port}/v1"
    if warmup:
        wrk.run(url, warmup, threads=threads, cpus=wrk_cpus)
    return wrk.run(url, seconds, threads=threads, cpus=wrk_cpus,
                   server_pids=tree_pids(hello.proc.pid), rate_per_thread=rate_per_thread,
                   connections=32 if rate_per_thread else None)


def median_run(runs: list[dict[str, Any]], key: str = "rps") -> dict[str, Any]:
    """The run of median ``key`` (the lower middle one of an even count), with the value of
    every run, in running order, as ``<key>_of_each_run``."""
    ordered = sorted(runs, key=lambda r: r[key])
    return {**ordered[(len(ordered) - 1) // 2], f"{key}_of_each_run": [r[key] for r in runs]}


class Scrapers:
    """``n`` concurrent /metrics scrapers, back to back, for ``seconds`` (a second wrk, one
    connection each, no script): bounded by its duration."""

    def __init__(self, wrk_path: str, base: str, n: int, seconds: int,
                 cpus: str | None) -> None:
        self.cmd = pinned([wrk_path, "-t", "1", "-c", str(n), "-d", f"{seconds}s",
                           "--timeout", "5s", f"{base}/metrics"], cpus)
        self.seconds = seconds
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    def result(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=self.seconds + 60)
        done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                           r"timeout (\d+)", out)
        r: dict[str, Any] = {"command": " ".join(self.cmd)}
        if done:
            secs = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
            r["scrapes"] = int(done.group(1))
            r["scrapes_per_s"] = int(done.group(1)) / secs
        r["errors"] = (int(bad.group(1)) if bad else 0) + (
            sum(int(g) for g in errors.groups()) if errors else 0)
        return r


def zcard_calls(redis_pid: int) -> int:
    """ZCARD commands Redis has run: one per partition per /metrics sampling round (and
    nothing else runs ZCARD during the bench)."""
    stats = cast(dict[str, Any], redis_client(redis_pid).info("commandstats"))
    return int(stats.get("cmdstat_zcard", {}).get("calls", 0))


def measure_scraped(wrk: Wrk, gw: Server, wrk_path: str, seconds: int, *, scrapers: int,
                    partitions: int, redis_pid: int, persist_pid: int | None,
                    rate_per_thread: float, backlog: Backlog | None) -> dict[str, Any]:
    """A fixed-rate gateway run (as the half-load one) with ``scrapers`` concurrent
    /metrics scrapers (0: none) running from just before to just after it."""
    z0 = zcard_calls(redis_pid)
    scraping = Scrapers(wrk_path, gw.base, scrapers, seconds + 2, "1") if scrapers else None
    r = measure_gateway(wrk, gw, seconds, 0, threads=1, cpus="1", redis_pid=redis_pid,
                        persist_pid=persist_pid, rate_per_thread=rate_per_thread,
                        connections=32, backlog=None)
    if scraping is not None:
        r["scrapers"] = {"n": scrapers, **scraping.result()}
    # Rounds over the run and the bench's own /metrics reads (3 before, 3 after).
    r["redis_sampling_rounds"] = (zcard_calls(redis_pid) - z0) / partitions
    if backlog is not None:
        r["persister_backlog_events"], r["persister_drain_s"] = backlog.drain()
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--tenants", type=int, default=50)
    p.add_argument("--users", type=int, default=40, help="users per tenant")
    p.add_argument("--repeat", type=int, default=3,
                   help="closed-loop runs of each, interleaved; the median run is reported")
    p.add_argument("--skip-unpinned", action="store_true")
    p.add_argument("--aof-rewrite", action="store_true",
                   help="leave Redis's automatic AOF rewrite on during the runs (see README)")
    p.add_argument("--redis-cpus", default="1",
                   help="CPUs for redis-server in the pinned runs (default: the generator's)")
    p.add_argument("--scrapers", type=int, default=64,
                   help="concurrent /metrics scrapers of the scraper phase (0: skip it)")
    p.add_argument("--pace-rates", default="100,300,1000",
                   help="calls/s of the fixed-rate few-connection phase ('' skips it)")
    p.add_argument("--pace-seconds", type=int, default=10, help="seconds per pace rate")
    p.add_argument("--pace-idle", type=float, default=20.0,
                   help="seconds of the pace phase's idle measurement")
    args = p.parse_args(argv)

    wrk_path = ensure_tool("wrk", "wrk", "make bench")
    token = new_token()
    work = scratch_dir("bench")
    tenants = [f"bench-t{i}" for i in range(args.tenants)]
    wrk = Wrk(wrk_path, {**os.environ, "BENCH_TENANTS": str(args.tenants),
                         "BENCH_USERS": str(args.users), "BENCH_TENANT_PREFIX": "bench-t",
                         "BENCH_TOKEN": token}, args.connections)
    result: dict[str, Any] = {
        "machine": machine(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "connections": args.connections, "tenants": args.tenants,
                     "users_per_tenant": args.users, "generator": "wrk + loadtest/authorize.lua",
                     "redis_auto_aof_rewrite": args.aof_rewrite},
        "placement": {"pinned": "gateway (1 worker) and hello on CPU 0; wrk (1 thread) on "
                                f"CPU 1; redis-server on CPU {args.redis_cpus}; "
                                + (f"the gateway's persist child on CPU {args.redis_cpus}, "
                                   "SCHED_IDLE" if persist_enabled()
                                   else "no persist child (CALLGATE_PERSIST=0)"),
                      "unpinned": "2 gateway workers / 2 hello workers, wrk 2 threads, "
                                  "redis-server and the persist child: no affinity; the "
                                  "persist child SCHED_IDLE"},
    }
    partitions = load_settings(env={**os.environ, "CALLGATE_OPERATOR_TOKEN": token}).partitions
    with ExitStack() as stack:
        redis = RedisServer(work / "redis", appendonly=True, appendfsync="everysec",
                            name="bench-redis")
        redis.start()
        stack.callback(redis.stop)
        assert redis.pid is not None
        redis_pid = redis.pid
        place(redis.pid, cpu_set(args.redis_cpus))
        sock = redis.unixsocket
        redis_url = f"unix://{sock}" if sock else redis.url
        if not args.aof_rewrite:
            # The AOF stays on (appendfsync everysec). Its automatic rewrite, a fork plus a
            # child re-writing the whole data set on the CPU Redis shares with wrk, would
            # fire every few seconds here (the data set grows from nothing by ~300 MB a
            # run) and then measure Redis maintenance; it is reported apart (--aof-rewrite,
            # redis_forks, README).
            redis_client(redis.pid, redis_url).config_set("auto-aof-rewrite-percentage", 0)
        else:
            redis_client(redis.pid, redis_url)
        backlog = Backlog(redis_url, partitions) if persist_enabled() else None

        # -- 1. pinned -----------------------------------------------------------------
        with gateway(work / "gw1", redis_url, token, workers=1, cpus="0") as gw:
            persist_pid = persist_child(gw.pid)
            if persist_pid:  # off the HTTP worker's CPU 0, inherited from taskset
                place(persist_pid, cpu_set(args.redis_cpus), idle=True)
            asyncio.run(create_tenants(gw.base, token, tenants, args.users))
            # Closed loops, gateway and hello world in turns (--repeat each): on a machine
            # shared with others the throughput drifts by tens of percent within a minute,
            # and a gateway run and the hello-world run right after it see the same drift;
            # the ratio is the median of these pairs' ratios.
            hello = stack.enter_context(contextlib.closing(Hello(1, "0")))

            def in_turns(what: str, rate: float = 0.0) -> tuple[list[dict[str, Any]],
                                                                  list[dict[str, Any]]]:
                """--repeat runs of each, gateway then hello world, pinned; closed loops,
                or with ``rate`` at that fixed rate (32 connections)."""
                gws: list[dict[str, Any]] = []
                hellos: list[dict[str, Any]] = []
                for i in range(args.repeat):
                    print(f"{what} {i + 1}/{args.repeat}, {args.duration} s each: gateway "
                          "pinned to CPU 0, then hello world pinned to CPU 0 ...", flush=True)
                    warmup = 0 if rate else args.warmup if i == 0 else 1
                    gws.append(measure_gateway(
                        wrk, gw, args.duration, warmup, threads=1, cpus="1",
                        redis_pid=redis_pid, persist_pid=persist_pid, rate_per_thread=rate,
                        connections=32 if rate else None, backlog=backlog))
                    hellos.append(measure_hello(wrk, hello, args.duration, warmup, 1, "1",
                                                rate_per_thread=rate))
                return gws, hellos

            gw_runs, hello_runs = in_turns("closed loop")
            gw_max, hello_max = median_run(gw_runs), median_run(hello_runs)
            half = gw_max["rps"] / 2
            # The tail at a fixed rate drifts with the machine as the throughput does: the
            # same turns, and the run of median p99 of each is reported.
            gw_halves, hello_halves = in_turns(f"fixed {half:.0f} req/s (50 %)", half)
            gw_half = median_run(gw_halves, "p99_us")
            gw_half["target_rps"] = half
            hello_max["at_fixed_rate"] = median_run(hello_halves, "p99_us")
            # Scrapers: the same fixed rate, alone then with --scrapers /metrics scrapers,
            # in turns; the run of median p50 of each is reported.
            quiet: list[dict[str, Any]] = []
            scraped: list[dict[str, Any]] = []
            for i in range(args.repeat if args.scrapers else 0):
                print(f"scrapers {i + 1}/{args.repeat}: fixed {half:.0f} req/s without, then "
                      f"with {args.scrapers} /metrics scrapers ...", flush=True)
                for runs, n in ((quiet, 0), (scraped, args.scrapers)):
                    runs.append(measure_scraped(
                        wrk, gw, wrk_path, args.duration, scrapers=n, partitions=partitions,
                        redis_pid=redis_pid, persist_pid=persist_pid, rate_per_thread=half,
                        backlog=backlog))
        result["pinned"] = {
            "gateway": gw_max, "hello": hello_max, "gateway_half_load": gw_half,
            "ratio": statistics.median(g["rps"] / h["rps"]
                                       for g, h in zip(gw_runs, hello_runs, strict=True)),
            "ratio_of_median_runs": gw_max["rps"] / hello_max["rps"],
            "cpu_ratio": hello_max["server_cpu_us_per_request"]
            / gw_max["server_cpu_us_per_request"],
        }
        if scraped:
            result["pinned"]["scrapers"] = {
                "n": args.scrapers, "target_rps": half,
                "without": median_run(quiet, "p50_us"), "with": median_run(scraped, "p50_us")}

        # -- 2. unpinned, two workers ------------------------------------------------------
        if not args.skip_unpinned:
            place(redis.pid, set(range(os.cpu_count() or 1)))
            with gateway(work / "gw2", redis_url, token, workers=2, cpus=None) as gw:
                persist_pid = persist_child(gw.pid)
                if persist_pid:  # no affinity, but SCHED_IDLE as in the pinned runs
                    place(persist_pid, set(range(os.cpu_count() or 1)), idle=True)
                print("gateway, 2 workers, unpinned ...", flush=True)
                gw2 = measure_gateway(wrk, gw, args.duration, args.warmup, threads=2,
                                      cpus=None, redis_pid=redis.pid,
                                      persist_pid=persist_pid, backlog=backlog)
            print("hello world, 2 workers, unpinned ...", flush=True)
            with contextlib.closing(Hello(2, None)) as hello2_server:
                hello2 = measure_hello(wrk, hello2_server, args.duration, args.warmup, 2, None)
            result["unpinned_2_workers"] = {"gateway": gw2, "hello": hello2,
                                            "ratio": gw2["rps"] / hello2["rps"]}
    shutil.rmtree(work, ignore_errors=True)

    # -- 3. at a switch's pace: few connections, fixed rates, then idle ------------------
    if args.pace_rates:
        result["pace"] = pace.measure([int(r) for r in args.pace_rates.split(",")],
                                      pace.CONNECTIONS, args.pace_seconds, args.pace_idle)

    pin = result["pinned"]
    result["targets"] = {
        "ratio_min": TARGET_RATIO, "ratio": round(pin["ratio"], 3),
        "ratio_met": pin["ratio"] >= TARGET_RATIO,
        "p99_half_load_ms": pin["gateway_half_load"]["p99_us"] / 1000,
        "hello_p99_half_load_ms": pin["hello"]["at_fixed_rate"]["p99_us"] / 1000,
        "tail_added_ms_max": TARGET_TAIL_MS,
        "tail_added_ms": (pin["gateway_half_load"]["p99_us"]
                          - pin["hello"]["at_fixed_rate"]["p99_us"]) / 1000,
    }
    result["targets"]["tail_met"] = result["targets"]["tail_added_ms"] <= TARGET_TAIL_MS
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    if "pace" in result:
        md += ("\nAt a switch's pace (whole calls over "
               f"{result['pace']['connections']} keep-alive connections, "
               f"{result['pace']['duration_s']} s per rate; loadtest/pace.py):\n\n"
               + pace.table(result["pace"]) + "\n")
    (RESULTS / "bench.md").write_text(md)
    print()
    print(md)
    print(f"written: {RESULTS / 'bench.json'}, {RESULTS / 'bench.md'}")
    t = result["targets"]
    print(f"ratio {t['ratio']:.2f} (median of {args.repeat} paired runs; the median runs' "
          f"ratio {pin['ratio_of_median_runs']:.2f}) (target >= {TARGET_RATIO}): "
          f"{'MET' if t['ratio_met'] else 'NOT MET'}; tail at half load: gateway p99 "
          f"{t['p99_half_load_ms']:.2f} ms - hello world's {t['hello_p99_half_load_ms']:.2f} ms "
          f"= {t['tail_added_ms']:+.2f} ms (medians of {args.repeat} runs at the same rate) "
          f"(target <= +{TARGET_TAIL_MS} ms): {'MET' if t['tail_met'] else 'NOT MET'}")
    return 0


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.strip()
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "redis": redis_v.split(" ")[2]
            if redis_v else ""}


def _row(name: str, r: dict[str, Any], ratio: str = "") -> str:
    cpus = [r.get(f"{k}_cpu_us_per_request")
            for k in ("server", "persist", "redis", "generator")]
    cells = " | ".join(f"{c:.0f}" if c is not None else "" for c in cpus)
    return (f"| {name} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f} | {r['p90_us'] / 1000:.2f} "
            f"| {r['p99_us'] / 1000:.2f} | {r['errors']} | {ratio} | {cells} "
            f"| {r['loadavg_1m_before']:.1f} |")


def _drain_line(name: str, r: dict[str, Any]) -> str:
    if "persister_backlog_events" not in r:
        return ""
    left, drain_s = r["persister_backlog_events"], r["persister_drain_s"]
    drained = f"drained in {drain_s:.1f} s" if drain_s is not None \
        else f"NOT drained within {DRAIN_DEADLINE_SECONDS:.0f} s"
    return f"- {name}: {left:,} events not yet in the ledger at the end of the run, {drained}"


def _server_side(r: dict[str, Any]) -> str:
    s = r.get("server_side", {})
    parts = [f"{what} p50 <= {q['p50_ms_at_most']:g} ms, p99 <= {q['p99_ms_at_most']:g} ms"
             for what, q in (("request (parse to answer)", s.get("request")),
                             ("its Redis round trip", s.get("redis"))) if q]
    return "; ".join(parts) or "n/a"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    pin = res["pinned"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}, "
        f"Redis {m['redis']}; {res['started_at']}; wrk, {res['settings']['connections']} "
        f"connections, {res['settings']['duration_s']} s per run, "
        f"{res['settings']['tenants']} tenants x {res['settings']['users_per_tenant']} users.",
        "",
        "| run | req/s | p50 ms | p90 ms | p99 ms | errors | ratio to hello "
        "| HTTP worker CPU µs/req | persister CPU µs/req | Redis CPU µs/req "
        "| wrk CPU µs/req | load avg before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        _row("gateway authorize, 1 worker pinned (CPU 0)", pin["gateway"],
             f"{pin.get('ratio_of_median_runs', pin['ratio']):.2f}"),
        _row("hello world, 1 process pinned (CPU 0)", pin["hello"], "1.00"),
        _row(f"gateway at fixed {pin['gateway_half_load']['target_rps']:,.0f} req/s (50 %)",
             pin["gateway_half_load"]),
    ]
    if "at_fixed_rate" in pin["hello"]:
        lines.append(_row(f"hello world at the same fixed "
                          f"{pin['gateway_half_load']['target_rps']:,.0f} req/s (latency floor)",
                          pin["hello"]["at_fixed_rate"]))
    if "unpinned_2_workers" in res:
        un = res["unpinned_2_workers"]
        lines += [
            _row("gateway authorize, 2 workers unpinned", un["gateway"], f"{un['ratio']:.2f}"),
            _row("hello world, 2 workers unpinned", un["hello"], "1.00"),
        ]
    if "scrapers" in pin:
        sc = pin["scrapers"]
        w = sc["with"]
        lines += [
            _row(f"gateway at fixed {sc['target_rps']:,.0f} req/s, no scrapers", sc["without"]),
            _row(f"same, with {sc['n']} concurrent /metrics scrapers "
                 f"({w['scrapers'].get('scrapes_per_s', 0):,.0f} scrapes/s served)", w),
        ]
    drains = [_drain_line("pinned, closed loop", pin["gateway"]),
              _drain_line("pinned, 50 % load", pin["gateway_half_load"])]
    if "unpinned_2_workers" in res:
        drains.append(_drain_line("2 workers unpinned, closed loop",
                                  res["unpinned_2_workers"]["gateway"]))
    gw_each = pin["gateway"].get("rps_of_each_run", [])
    hello_each = pin["hello"].get("rps_of_each_run", [])
    if len(gw_each) > 1:
        pairs = ", ".join(f"{g / h:.2f}" for g, h in zip(gw_each, hello_each, strict=True))
        lines += ["", f"Closed-loop runs in turns (req/s): gateway "
                  f"{', '.join(f'{r:,.0f}' for r in gw_each)}; hello world "
                  f"{', '.join(f'{r:,.0f}' for r in hello_each)}; ratio of each pair "
                  f"(gateway run / the hello-world run right after it): {pairs}; **ratio = "
                  f"their median, {pin['ratio']:.2f}**. The table shows the median run of "
                  f"each (their ratio: {pin['ratio_of_median_runs']:.2f})."]
    gw_p99s = pin["gateway_half_load"].get("p99_us_of_each_run", [])
    hello_p99s = pin["hello"].get("at_fixed_rate", {}).get("p99_us_of_each_run", [])
    if len(gw_p99s) > 1:
        lines += ["", f"Fixed-rate runs in turns (p99 ms): gateway "
                  f"{', '.join(f'{p / 1000:.2f}' for p in gw_p99s)}; hello world "
                  f"{', '.join(f'{p / 1000:.2f}' for p in hello_p99s)}; the table shows the "
                  "run of median p99 of each."]
    if "scrapers" in pin:
        sc = pin["scrapers"]
        p50s = ", ".join(f"{r / 1000:.2f}" for r in sc["without"].get("p50_us_of_each_run", []))
        p50w = ", ".join(f"{r / 1000:.2f}" for r in sc["with"].get("p50_us_of_each_run", []))
        lines += ["", f"Scraper runs in turns (authorize p50 ms): without {p50s}; with "
                  f"{sc['n']} scrapers {p50w}; the table shows the run of median p50 of "
                  f"each. Redis sampling rounds during the run with scrapers: "
                  f"{sc['with']['redis_sampling_rounds']:.0f} (without: "
                  f"{sc['without']['redis_sampling_rounds']:.0f}; the bench itself reads "
                  f"/metrics 6 times per run); scrape errors: "
                  f"{sc['with']['scrapers'].get('errors')}."]
    lines += ["", f"CPU-time ratio (hello CPU per request / gateway HTTP worker CPU per "
              f"request, independent of other load on the machine): {pin['cpu_ratio']:.2f}",
              f"Decisions in the closed-loop run: {pin['gateway']['decisions']}",
              "Inside the gateway at 50 % load (its own histograms, bucket bounds): "
              + _server_side(pin["gateway_half_load"]),
              f"Redis forks (AOF rewrites) during the closed-loop / half-load runs: "
              f"{pin['gateway'].get('redis_forks')} / {pin['gateway_half_load'].get('redis_forks')}"
              f" (automatic AOF rewrite "
              f"{'on' if res['settings'].get('redis_auto_aof_rewrite') else 'off'}; the AOF "
              f"itself is on, appendfsync everysec)",
              f"Placement: {res['placement']['pinned']}.", ""]
    if any(drains):
        lines += ["Persister (its own process) after each gateway run:",
                  *[d for d in drains if d], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
