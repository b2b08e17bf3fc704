"""Exact cost of the call-control functions inside Redis: instructions per FCALL.

Timing figures on a shared machine drift by tens of percent from one minute to the next;
instruction counts do not. This runs a private redis-server (AOF on, appendfsync everysec,
as deployed: the AOF rendering of what a function writes is part of its cost) under
valgrind's callgrind, creates tenants and users through the gateway's own AdminService,
then drives N authorizations, N extends and N ends through CallService (the very FCALLs the
API sends, pipelined 32 at a time) and counts the instructions Redis executes in each phase:
the function, the Lua calls inside it, the AOF feed, reading the command and writing the
reply. ``--lua DIR`` loads another copy of the library (e.g. a variant under study) after
the gateway's, to compare the two with the same requests.

    python -m loadtest.fcall_cost [--calls 2000] [--lua DIR] [--write-baseline] [--profile N]

``--profile N`` prints, for each phase, the N Redis C functions of most inclusive
instructions per call (callgrind_annotate): where a function's cost goes.

Needs valgrind (Debian package valgrind; installed with apt when missing). About a minute.

The gate: ``make test`` (tests/test_fcall_cost.py) measures the library with the baseline's
number of calls and fails when a function costs more than BASELINE_TOLERANCE above the
committed baseline (loadtest/fcall_cost_baseline.json). A change that moves the cost on
purpose updates the baseline in the same commit: ``python -m loadtest.fcall_cost
--write-baseline``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from gateway.config import load_settings
from gateway.redis.client import backend_from_url
from gateway.redis.server import find_redis_server
from gateway.redis.store import Store, TenantSettings, library_source
from gateway.rules.admin import AdminService, UserSpec
from gateway.rules.calls import AuthorizeRequest, CallService
from gateway.rules.clock import ManualClock
from gateway.vocab import DialOut
from loadtest.common import RESULTS, ensure_tool, scratch_dir

BASELINE = Path(__file__).resolve().parent / "fcall_cost_baseline.json"
BASELINE_CALLS = 1000
BASELINE_TOLERANCE = 0.03
FUNCTIONS = ("authorize", "extend", "end")

TENANTS = 50
USERS_PER_TENANT = 10
WARMUP_CALLS = 1000
CONCURRENCY = 32
SPEC = UserSpec("US", "domestic", DialOut.INTERNATIONAL_AND_DOMESTIC, True, None, None, ())


class CallgrindRedis:
    """redis-server under callgrind, instrumentation off until ``measure``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.sock = work / "redis.sock"
        self.dumps = work / "callgrind.out"
        self.phase_dumps: dict[str, Path] = {}
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={self.dumps}", find_redis_server(),
               "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700",
               "--dir", str(work), "--appendonly", "yes", "--appendfsync", "everysec",
               "--auto-aof-rewrite-percentage", "0", "--save", "", "--daemonize", "no",
               # Background tasks once a second, not ten times: what they do in a phase
               # depends on how long it lasts, not on the calls.
               "--hz", "1", "--dynamic-hz", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(unix_socket_path=str(self.sock))
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client.ping()
                break
            except (redis.ConnectionError, FileNotFoundError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server under valgrind did not start") from None
                time.sleep(0.2)

    def control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True,
                       capture_output=True)

    def instructions(self, phase: str) -> int:
        """Instructions counted since the last dump; dumps and zeroes the counters."""
        self.control("--dump=" + phase)
        newest = max(self.work.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
        self.phase_dumps[phase] = newest
        for line in newest.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {newest}")

    def close(self) -> None:
        self.client.shutdown(nosave=True)
        self.proc.wait(timeout=60)


async def _bounded(coros: Any, limit: int = CONCURRENCY) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def measure(args: argparse.Namespace, server: CallgrindRedis) -> dict[str, Any]:
    settings = replace(load_settings(env={}), redis_timeout_ms=60_000,
                       redis_url=f"unix://{server.sock}")
    store = Store(backend_from_url(settings.redis_url or "", 60.0), settings.partitions,
                  admin_timeout_s=600.0)
    await store.load_functions()
    if args.lua:
        server.client.function_load(library_source(Path(args.lua)), replace=True)
    # A clock that stands still: the work per call must not depend on how fast the run
    # goes (the per-second rate keys of authorize are created once per tenant this way).
    clock = ManualClock(int(time.time()))
    admin = AdminService(settings, store, clock)
    calls = CallService(settings, store, clock)
    ts = TenantSettings("cost", settings.default_currency, settings.default_timezone, False,
                        None)
    await _bounded(admin.put_tenant(f"cost-t{t}", ts, "cost") for t in range(TENANTS))
    await _bounded(admin.put_user(f"cost-t{t}", f"u{u}", SPEC, "cost")
                   for t in range(TENANTS) for u in range(USERS_PER_TENANT))

    def who(i: int) -> tuple[str, str]:
        return f"cost-t{i % TENANTS}", f"u{(i // TENANTS) % USERS_PER_TENANT}"

    def authorize(prefix: str, n: int) -> Any:
        return _bounded(calls.authorize(who(i)[0], AuthorizeRequest(
            f"{prefix}-{i}", "outbound", who(i)[1], "+12125550123", None, None))
            for i in range(n))

    await authorize("warm", WARMUP_CALLS)
    n = args.calls
    out: dict[str, Any] = {"calls": n}
    server.instructions("setup")  # zero the counters (instrumentation is off anyway)
    server.control("--instr=on")
    answers = await authorize("c", n)
    out["authorize"] = server.instructions("authorize") / n
    answers += await _bounded(calls.extend(who(i)[0], f"c-{i}", 30) for i in range(n))
    out["extend"] = server.instructions("extend") / n
    answers += await _bounded(calls.end(who(i)[0], f"c-{i}", 45) for i in range(n))
    out["end"] = server.instructions("end") / n
    server.control("--instr=off")
    denied = [a for a in answers if a.get("decision") == "deny"]
    if denied:
        raise RuntimeError(f"{len(denied)} calls denied, e.g. {denied[0]}")
    await store.close()
    return out


def profile(dump: Path, calls: int, top: int) -> list[str]:
    """The ``top`` functions of a phase's dump by inclusive instructions, per call."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(dump)], check=True,
                          capture_output=True, text=True).stdout
    rows = []
    for line in text.splitlines():
        head, _, name = line.strip().partition(" ")
        if not name or not head[:1].isdigit():
            continue
        try:
            count = int(head.replace(",", ""))
        except ValueError:
            continue
        rows.append(f"{count / calls:>10,.0f}  {name.strip()}")
    return rows[:top]


def run(calls: int, lua: str | None = None, top: int = 0) -> dict[str, Any]:
    """Instructions per FCALL of each function, measured over ``calls`` calls (and with
    ``top``, each phase's ``top`` C functions by inclusive instructions per call)."""
    ensure_tool("valgrind", "valgrind", "loadtest.fcall_cost")
    work = scratch_dir("fcall-cost")
    server = CallgrindRedis(work)
    try:
        out = asyncio.run(measure(argparse.Namespace(calls=calls, lua=lua), server))
        if top:
            out["profile"] = {f: profile(server.phase_dumps[f], calls, top)
                              for f in FUNCTIONS}
    finally:
        server.close()
    shutil.rmtree(work, ignore_errors=True)
    out["library"] = lua or "lua/"
    return out


def over_baseline(measured: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """The functions costing more than the tolerance above the baseline, said in words."""
    return [f"{f}: {measured[f]:,.0f} instructions per FCALL, baseline {baseline[f]:,.0f} "
            f"(+{measured[f] / baseline[f] - 1:.1%} > +{BASELINE_TOLERANCE:.0%})"
            for f in FUNCTIONS if measured[f] > baseline[f] * (1 + BASELINE_TOLERANCE)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="calls measured per phase")
    p.add_argument("--lua", help="a directory of lua/*.lua to load instead of the gateway's")
    p.add_argument("--write-baseline", action="store_true",
                   help=f"measure {BASELINE_CALLS} calls and write {BASELINE.name}")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="print each phase's N C functions of most inclusive instructions")
    args = p.parse_args(argv)
    if args.write_baseline:
        out = run(BASELINE_CALLS)
        BASELINE.write_text(json.dumps(
            {"calls": BASELINE_CALLS, **{f: round(out[f]) for f in FUNCTIONS}}, indent=2) + "\n")
        print(f"wrote {BASELINE.name}: " + ", ".join(f"{f} {out[f]:,.0f}" for f in FUNCTIONS))
        return 0
    out = run(args.calls, args.lua, args.profile)
    for f, rows in out.get("profile", {}).items():
        print(f"{f}: inclusive instructions per call", *rows, sep="\n  ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fcall_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"instructions per FCALL inside redis-server ({out['library']}, {args.calls} calls "
          f"each): authorize {out['authorize']:,.0f}, extend {out['extend']:,.0f}, "
          f"end {out['end']:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
