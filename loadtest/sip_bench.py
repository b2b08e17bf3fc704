"""``make sipbench``: call setup through Kamailio and the gateway, measured by sipp, beside
the same load through Kamailio's own prepaid module, cnxcc.

Starts Redis, ``callgate serve`` (one worker), Kamailio with integrations/kamailio/
kamailio.cfg (the caller's trunk, 127.0.0.2, mapped to the bench tenant) and a sipp trunk
that answers at once; then, for each gateway delay and each rate, a sipp caller places
calls (INVITE, 200, ACK, hold, BYE) through the proxy and records, per call, the time from
its INVITE to the 200 OK: the post-dial delay the proxy and the gateway add (Kamailio
authorizes before it relays). Then the same sipp load, rate by rate, through a Kamailio
running integrations/kamailio/cnxcc-baseline.cfg (a benchmark baseline, not a deployment:
cnxcc with its own Redis, AOF everysec as callgate's) and the same trunk. Prints p50 / p90 /
p99 / max per run with the gateway's own authorize latency, the CPU per call of each
process and the machine's load; then both side by side: failed calls, INVITE→200
p50/p99/max, the credit side's CPU per 1,000 calls (callgate: serve and its Redis; cnxcc:
its Redis) and the highest rate with 0 failed calls. Writes
loadtest/results/sip_bench.{json,md}.

A gateway delay above 0 puts a slow link between Kamailio and the gateway: a TCP relay in
this process that holds every request for that long before passing it on (answers come
back at once). It is the gateway slowed by that much, seen from Kamailio; it exists only
here, nothing in the gateway can be slowed.

    python -m loadtest.sip_bench [--rates 250,500,750,1000] [--seconds 5] [--repeat 1]
                                 [--delays-ms 0] [--hold-ms 2000] [--async-workers 128]
                                 [--no-cnxcc]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import uvloop

from gateway.redis.server import RedisServer
from loadtest.bench import SERVER_SIDE, cpu_seconds, histogram, machine, quantiles
from loadtest.common import (
    RESULTS,
    create_tenants,
    free_port,
    gateway,
    new_token,
    scratch_dir,
    tree_pids,
)
from loadtest.sip import (
    SCENARIOS,
    Tenancy,
    cnxcc_proxy,
    free_low_port,
    sip_proxy,
    tools_missing,
)

TENANT = "sip"
USERS = 100
DESTINATION = "+12125550123"
TRUNK = "127.0.0.2"  # the caller's address: the trunk the proxy maps to TENANT
# Uncounted calls before a proxy's first run (warm_up).
WARM_UP_CALLS = 200


class _Relay(asyncio.Protocol):
    """One connection of the slow link: requests (client to gateway) leave ``delay`` seconds
    after they arrived, in order; answers go back at once."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_connection(lambda: _Back(self), *self.target)
        except OSError:
            if self.client is not None:
                self.client.close()
            return
        if self.client is None or self.client.is_closing():
            transport.close()  # the client left while this connected
            return
        self.upstream = transport
        self._drain()

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time() + self.delay, data))
        if self.timer is None:
            self.timer = loop.call_at(self.queue[0][0], self._drain)

    def _drain(self) -> None:
        self.timer = None
        if self.upstream is None:
            return  # _connect drains once connected
        if self.upstream.is_closing():
            self.queue.clear()  # the gateway hung up: nothing more to pass on
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.queue and self.queue[0][0] <= now:
            self.upstream.write(self.queue.popleft()[1])
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self._drain)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.upstream is not None:
            self.upstream.close()


class _Back(asyncio.Protocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        client = self.relay.client
        if client is not None and not client.is_closing():
            client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.relay.client is not None:
            self.relay.client.close()


@contextlib.contextmanager
def slow_link(base: str, delay_ms: int) -> Iterator[str]:
    """A base URL that reaches ``base`` (http://127.0.0.1:port) ``delay_ms`` later per
    request, served by a thread of this process until the block ends."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    loop = uvloop.new_event_loop()
    listen = free_port()
    ready = threading.Event()

    servers: list[asyncio.AbstractServer] = []

    def run() -> None:  # the relay's loop lives in its thread only
        asyncio.set_event_loop(loop)
        servers.append(loop.run_until_complete(loop.create_server(
            lambda: _Relay((host, int(port)), delay_ms / 1000), "127.0.0.1", listen,
            backlog=1024)))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the slow link did not start")
    try:
        yield f"http://127.0.0.1:{listen}"
    finally:
        loop.call_soon_threadsafe(servers[0].close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_rate(proxy_port: int, work: Path, rate: int, seconds: int, hold_ms: int,
             base: str | None, delay_ms: int, pids: dict[str, list[int]], *,
             side: str = "callgate", repeat: int = 0) -> dict[str, Any]:
    """sipp at ``rate`` calls/s for ``seconds``; INVITE-to-200 times from its rtt trace, and
    the CPU time each of ``pids`` (name: processes) used meanwhile. ``base``: the gateway,
    whose own authorize latency is read from its /metrics (None for the cnxcc baseline)."""
    calls = rate * seconds
    run_dir = work / f"{side}-delay-{delay_ms}-rate-{rate}-{repeat}"
    run_dir.mkdir()
    before = ({k: histogram(base, name, label) for k, name, label in SERVER_SIDE}
              if base is not None else {})
    load_before = os.getloadavg()[0]
    cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
    cmd = ["sipp", "-sf", str(SCENARIOS / "uac_talk.xml"), "-i", TRUNK,
           "-p", str(free_port()), "-s", DESTINATION, "-key", "caller", "u0",
           "-d", str(hold_ms), "-r", str(rate), "-m", str(calls), "-nostdin",
           "-timeout", f"{seconds + hold_ms // 1000 + 60}s", "-timeout_error",
           "-timer_resol", "1", "-trace_rtt", "-rtt_freq", "1", "-trace_stat", "-fd", "1",
           f"127.0.0.1:{proxy_port}"]
    proc = subprocess.run(cmd, cwd=run_dir, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    cpu = {name: cpu_seconds(p) - cpu_before[name] for name, p in pids.items()}
    rtts: list[float] = []
    for path in run_dir.glob("*_rtt.csv"):
        with path.open() as f:
            for row in csv.reader(f, delimiter=";"):
                if len(row) >= 2 and row[0][:1].isdigit():
                    rtts.append(float(row[1]))
    stats = {}
    for path in run_dir.glob("*_.csv"):  # -trace_stat: the last line holds the totals
        with path.open() as f:
            rows = list(csv.reader(f, delimiter=";"))
        if len(rows) >= 2:
            last = dict(zip(rows[0], rows[-1], strict=False))
            stats = {"successful": int(last.get("SuccessfulCall(C)", 0)),
                     "failed": int(last.get("FailedCall(C)", 0))}
    result: dict[str, Any] = {
        "side": side, "gateway_delay_ms": delay_ms, "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
        "cpu_ms_per_call": {name: round(v * 1000 / calls, 3) for name, v in cpu.items()},
        "rate_cps": rate, "calls": calls, "hold_ms": hold_ms, "sipp_exit": proc.returncode,
        **stats, "setup_samples": len(rtts),
    }
    if base is not None:
        result["gateway"] = {k: quantiles(histogram(base, name, label), before[k])
                             for k, name, label in SERVER_SIDE}
    if rtts:
        result["setup_ms_step"] = _step(rtts)
        result["setup_ms"] = {"p50": percentile(rtts, 0.50), "p90": percentile(rtts, 0.90),
                              "p99": percentile(rtts, 0.99), "max": max(rtts),
                              "mean": statistics.fmean(rtts)}
    if proc.returncode != 0:
        result["sipp_errors"] = proc.stderr.decode(errors="replace")[-2000:]
    return result


def warm_up(proxy_port: int, work: Path, side: str) -> None:
    """Calls that are not counted, before a proxy's first run: a proxy that has run for a
    while has its processes forked and initialised and, for callgate, each async worker's
    kept connection to the gateway open (integrations/kamailio/callgate_client.py). Same
    for both sides: WARM_UP_CALLS calls of 200 ms at 100 calls/s."""
    run_dir = work / f"{side}-warm-up"
    run_dir.mkdir()
    subprocess.run(["sipp", "-sf", str(SCENARIOS / "uac_talk.xml"), "-i", TRUNK,
                    "-p", str(free_port()), "-s", DESTINATION, "-key", "caller", "u0",
                    "-d", "200", "-r", "100", "-m", str(WARM_UP_CALLS), "-nostdin",
                    "-timeout", "60s", "-timeout_error", f"127.0.0.1:{proxy_port}"],
                   cwd=run_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def _step(values: list[float]) -> float:
    """The clock step sipp's samples show: the gcd of the non-zero ones (in µs)."""
    step = 0
    for v in values:
        step = math.gcd(step, round(v * 1000))
    return step / 1000


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}, "
        f"Redis {m['redis']}, Kamailio {res['kamailio']}; {res['when']}. sipp caller and "
        f"trunk, Kamailio (4 SIP workers, {res['async_workers']} async workers), callgate "
        f"serve ({res['workers']} worker{'s' if res['workers'] > 1 else ''}), Redis (AOF "
        "everysec) on one machine.",
        "",
        "| gateway delay ms | calls/s | calls | ok | failed | INVITE→200 p50 ms | p90 ms "
        "| p99 ms | max ms | gateway authorize p99 (bucket) | CPU ms/call Kamailio / gateway "
        "/ Redis | load 1m before/after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["runs"]:
        if r["side"] != "callgate":
            continue
        s = r.get("setup_ms", {})
        c = r["cpu_ms_per_call"]
        lines.append(
            f"| {r['gateway_delay_ms']} | {r['rate_cps']} | {r['calls']} "
            f"| {r.get('successful', '?')} "
            f"| {r.get('failed', '?')} | {s.get('p50', 0):.1f} | {s.get('p90', 0):.1f} "
            f"| {s.get('p99', 0):.1f} | {s.get('max', 0):.1f} "
            f"| ≤ {r['gateway']['request']['p99_ms_at_most']:g} ms "
            f"| {c['kamailio']:.2f} / {c['gateway']:.2f} / {c['redis']:.2f} "
            f"| {r['loadavg_1m_before']:.1f} / {r['loadavg_1m_after']:.1f} |")
    if any(r["side"] == "cnxcc" for r in res["runs"]):
        lines += ["", comparison(res["runs"])]
    steps = res.get("setup_ms_step")
    if steps:
        lines += ["", f"sipp's timestamps move in steps of {steps:g} ms here (every sample is a "
                  f"multiple): a reading of N ms means between N - {steps:g} and N + {steps:g} "
                  "ms. The gateway's column is its own histogram (parse to answer, bucket "
                  "bound); the gateway delay is added in front of it by a slow link. CPU time "
                  "per call (user + system, all processes: SIP and async workers, timers; "
                  "the gateway's workers) does not depend on what else the machine runs."]
    return "\n".join(lines) + "\n"


def credit_cpu(r: dict[str, Any]) -> float:
    """CPU seconds per 1,000 calls of the credit side: callgate's serve tree and its Redis;
    cnxcc's Redis (cnxcc itself runs inside Kamailio's processes: the Kamailio column)."""
    c = r["cpu_ms_per_call"]  # ms per call = s per 1,000 calls
    return float(c.get("gateway", 0.0) + c["redis"])


def comparison(runs: list[dict[str, Any]]) -> str:
    """callgate beside the cnxcc baseline, rate by rate (the gateway undelayed)."""
    sides = ("callgate", "cnxcc")
    by: dict[tuple[str, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for r in runs:
        if r["gateway_delay_ms"] == 0:
            by[(r["side"], r["rate_cps"])].append(r)
    rates = sorted({rate for _, rate in by})
    lines = ["callgate beside Kamailio's cnxcc (integrations/kamailio/cnxcc-baseline.cfg, a "
             "benchmark baseline), the same sipp load; one line per run. Credit side: "
             "callgate serve + its Redis; cnxcc: its Redis (cnxcc runs inside Kamailio).",
             "",
             "| calls/s | side | calls | failed | INVITE→200 p50 ms | p99 ms | max ms "
             "| credit side CPU s / 1,000 calls | Kamailio CPU s / 1,000 calls |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for rate in rates:
        for side in sides:
            for r in by.get((side, rate), []):
                s = r.get("setup_ms", {})
                crashed = " (Kamailio crashed)" if r.get("kamailio_crashed") else ""
                lines.append(
                    f"| {rate} | {side} | {r['calls']} | {r.get('failed', '?')}{crashed} "
                    f"| {s.get('p50', 0):.1f} | {s.get('p99', 0):.1f} | {s.get('max', 0):.1f} "
                    f"| {credit_cpu(r):.2f} | {r['cpu_ms_per_call']['kamailio']:.2f} |")
    best = []
    for side in sides:
        clean = [rate for rate in rates if by.get((side, rate))
                 and all(r.get("failed", 1) == 0 and r.get("successful") == r["calls"]
                         and not r.get("kamailio_crashed") for r in by[(side, rate)])]
        best.append(f"{side} {max(clean)} calls/s" if clean else f"{side}: none")
    lines += ["", "Highest rate with 0 failed calls (every run at it): " + ", ".join(best)
              + f" (of {', '.join(str(r) for r in rates)})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rates", default="250,500,750,1000",
                   help="calls per second, comma-separated")
    p.add_argument("--seconds", type=int, default=5, help="seconds of calls per rate")
    p.add_argument("--hold-ms", type=int, default=2000, help="answered time of each call")
    p.add_argument("--delays-ms", default="0",
                   help="gateway delays (a slow link in front of it), comma-separated")
    p.add_argument("--repeat", type=int, default=1, help="runs of each rate and side")
    p.add_argument("--no-cnxcc", action="store_true",
                   help="skip the cnxcc baseline (integrations/kamailio/cnxcc-baseline.cfg)")
    p.add_argument("--async-workers", type=int, default=128,
                   help="Kamailio's async workers (ASYNC_WORKERS)")
    p.add_argument("--workers", type=int, default=1, help="callgate serve's HTTP workers")
    p.add_argument("--shm-mb", type=int, default=256, help="Kamailio's shared memory (-m)")
    args = p.parse_args(argv)
    missing = tools_missing()
    if missing:
        raise SystemExit(f"{' and '.join(missing)} needed: `make sipbench` installs them")
    rates = [int(r) for r in args.rates.split(",")]
    token = new_token()
    work = scratch_dir("sipbench")
    RESULTS.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["kamailio", "-v"], capture_output=True, text=True,
                             check=False).stdout.split("\n", 1)[0].replace("version: ", "")
    res: dict[str, Any] = {"machine": machine(), "kamailio": version.strip(), "runs": [],
                           "async_workers": args.async_workers, "workers": args.workers,
                           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with RedisServer(work / "redis", appendonly=True, appendfsync="everysec",
                     name="sipbench-redis") as redis, \
            gateway(work / "gw", redis.url, token, workers=args.workers) as gw:
        asyncio.run(create_tenants(gw.base, token, [TENANT], USERS))
        tenancy = Tenancy(token=token, trunks={TRUNK: TENANT})
        assert redis.pid is not None
        for delay in (int(d) for d in args.delays_ms.split(",")):
            proxy_work = work / f"proxy-{delay}"
            proxy_work.mkdir()
            with contextlib.ExitStack() as stack:
                url = gw.base if delay == 0 else stack.enter_context(slow_link(gw.base, delay))
                port = stack.enter_context(sip_proxy(
                    url, tenancy, proxy_work, extend_before=30,
                    async_workers=args.async_workers, shm_mb=args.shm_mb))
                kamailio = int((proxy_work / "kamailio.pid").read_text())
                warm_up(port, work, f"callgate-{delay}")
                for rate in rates:
                    for n in range(args.repeat):
                        # Read at each run: Kamailio may still be forking its workers
                        # when its SIP port first answers.
                        pids = {"kamailio": tree_pids(kamailio), "gateway": tree_pids(gw.pid),
                                "redis": [redis.pid]}
                        print(f"callgate, gateway +{delay} ms: {rate} calls/s for "
                              f"{args.seconds} s, {args.hold_ms} ms each ...", flush=True)
                        r = run_rate(port, work, rate, args.seconds, args.hold_ms, gw.base,
                                     delay, pids, repeat=n)
                        r["kamailio_crashed"] = kamailio_crashed(proxy_work)
                        res["runs"].append(r)
    if not args.no_cnxcc:
        res["runs"] += run_cnxcc(work, rates, args)
    res["setup_ms_step"] = max((r.get("setup_ms_step", 0) for r in res["runs"]), default=0)
    (RESULTS / "sip_bench.json").write_text(json.dumps(res, indent=2) + "\n")
    table = markdown(res)
    (RESULTS / "sip_bench.md").write_text(table)
    print()
    print(table)
    # sipp exits 1 when some call failed: that is a result (the tables count them); any
    # other non-zero exit is the run itself failing.
    failed = [r for r in res["runs"] if r["sipp_exit"] not in (0, 1)]
    for r in failed:
        print(f"sipp at {r['rate_cps']} calls/s ({r['side']}, gateway "
              f"+{r['gateway_delay_ms']} ms) exited {r['sipp_exit']}: "
              f"{r.get('sipp_errors', '')}", file=sys.stderr)
    return 1 if failed else 0


def run_cnxcc(work: Path, rates: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same sipp load through the cnxcc baseline and its own Redis (AOF everysec, as
    callgate's), on a port below 32768 (cnxcc keeps it in a signed 16-bit field). cnxcc's
    Kamailio can crash under this load (a SIGSEGV after cnxcc's "BUG: ... invalid credit
    type"): the run is marked so, and a new proxy takes the runs left."""
    runs: list[dict[str, Any]] = []
    plan = [(rate, n) for rate in rates for n in range(args.repeat)]
    with RedisServer(work / "cnxcc-redis", port=free_low_port(), appendonly=True,
                     appendfsync="everysec", name="sipbench-cnxcc-redis") as redis:
        assert redis.pid is not None
        proxy = 0
        while plan:  # a new proxy after each crash, for the runs left
            proxy += 1
            proxy_work = work / f"proxy-cnxcc-{proxy}"
            proxy_work.mkdir()
            with cnxcc_proxy(redis.port, proxy_work, shm_mb=args.shm_mb) as port:
                kamailio = int((proxy_work / "kamailio.pid").read_text())
                warm_up(port, work, f"cnxcc-{proxy}")
                while plan:
                    rate, n = plan.pop(0)
                    pids = {"kamailio": tree_pids(kamailio), "redis": [redis.pid]}
                    print(f"cnxcc: {rate} calls/s for {args.seconds} s, {args.hold_ms} ms "
                          "each ...", flush=True)
                    r = run_rate(port, work, rate, args.seconds, args.hold_ms, None, 0,
                                 pids, side="cnxcc", repeat=n)
                    runs.append(r)
                    if kamailio_crashed(proxy_work):
                        r["kamailio_crashed"] = True
                        print("cnxcc's Kamailio crashed: a new one for the runs left",
                              flush=True)
                        break
    return runs


def kamailio_crashed(proxy_work: Path) -> bool:
    """A Kamailio process of this proxy died of a signal (its main process logs it)."""
    log = (proxy_work / "kamailio.log").read_text(errors="replace")
    return "exited by a signal" in log


if __name__ == "__main__":
    sys.exit(main())
