"""Scale check: Redis memory per user and per active call, authorize latency from 1,000 to
1,000,000 users (10 users per tenant, so 100,000 tenants at 1M).

Loads a private redis-server directly through the gateway's own services (AdminService and
CallService over gateway.redis.store: one FCALL each, auto-pipelined by running thousands
concurrently), so what is measured is exactly what the API would write. At each step:
Redis used_memory, and the latency of sequential authorizations (in-process, Python +
one Redis round trip; no HTTP) plus Redis's own time per authorize FCALL. Then opens
--active calls and reports the bytes each one holds. The partitions' event streams
(audit and call events awaiting the persister, which trims them) are reported apart.

    python -m loadtest.bulk_load [--steps 1000,100000,1000000] [--active 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import replace
from typing import Any, cast

import redis

from gateway.config import load_settings
from gateway.redis.client import backend_from_url
from gateway.redis.keys import all_partitions
from gateway.redis.server import RedisServer
from gateway.redis.store import Store, TenantSettings
from gateway.rules.admin import AdminService, UserSpec
from gateway.rules.calls import AuthorizeRequest, CallService
from gateway.rules.clock import SystemClock
from gateway.vocab import DialOut
from loadtest.common import RESULTS, scratch_dir

USERS_PER_TENANT = 10
CONCURRENCY = 500
SPEC = UserSpec("US", "domestic", DialOut.INTERNATIONAL_AND_DOMESTIC, True, None, None, ())


async def _bounded(coros: Any, limit: int = CONCURRENCY) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> None:
        async with sem:
            await c

    await asyncio.gather(*(one(c) for c in coros))


def tenant(i: int) -> str:
    return f"bulk-t{i}"


async def load(admin: AdminService, settings: Any, start: int, end: int) -> None:
    """Users start..end-1 (tenant = user // 10), creating tenants as they first appear."""
    ts = TenantSettings("bulk", settings.default_currency, settings.default_timezone, False,
                        None)
    first_t = (start + USERS_PER_TENANT - 1) // USERS_PER_TENANT
    last_t = (end - 1) // USERS_PER_TENANT
    await _bounded(admin.put_tenant(tenant(t), ts, "bulk") for t in range(first_t, last_t + 1))
    await _bounded(admin.put_user(tenant(u // USERS_PER_TENANT), f"u{u}", SPEC, "bulk")
                   for u in range(start, end))


def events_bytes(r: redis.Redis, partitions: int) -> int:
    total = 0
    for p in all_partitions(partitions):
        total += int(cast(int | None, r.memory_usage(p.events, samples=0)) or 0)
    return total


def info(r: redis.Redis, section: str) -> dict[str, Any]:
    """INFO of one section (redis-py's stubs type it as maybe-awaitable: this client is
    synchronous)."""
    return cast(dict[str, Any], r.info(section))


async def latency(calls: CallService, users: int, n: int, tag: str) -> dict[str, float]:
    """Sequential authorizations of random existing users; ms percentiles."""
    import random

    rng = random.Random(users)
    samples = []
    for i in range(n):
        u = rng.randrange(users)
        req = AuthorizeRequest(f"lat-{tag}-{i}", "outbound", f"u{u}", "+12125550123", None,
                               None)
        t0 = time.perf_counter()
        d = await calls.authorize(tenant(u // USERS_PER_TENANT), req)
        samples.append(time.perf_counter() - t0)
        assert d["decision"] == "allow", d
    samples.sort()
    return {"p50_ms": samples[n // 2] * 1e3, "p99_ms": samples[int(n * 0.99)] * 1e3,
            "mean_ms": sum(samples) / n * 1e3}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = scratch_dir("bulk")
    server = RedisServer(work / "redis", appendonly=False, name="bulk-redis")
    server.start()
    try:
        sock = server.unixsocket
        # A generous Redis timeout: thousands of concurrent FCALLs queue up by design here.
        settings = replace(load_settings(env={}), redis_timeout_ms=5000,
                           redis_url=f"unix://{sock}" if sock else server.url)
        store = Store(backend_from_url(settings.redis_url or "", 1.0), settings.partitions,
                      admin_timeout_s=60.0)
        await store.load_functions()
        clock = SystemClock()
        admin = AdminService(settings, store, clock)
        calls = CallService(settings, store, clock)
        r = redis.Redis(unix_socket_path=str(sock)) if sock else redis.Redis(port=server.port)
        base = int(info(r, "memory")["used_memory"])
        out: dict[str, Any] = {"baseline_used_memory_bytes": base, "steps": []}
        loaded = 0
        for target in args.steps:
            t0 = time.monotonic()
            await load(admin, settings, loaded, target)
            loaded = target
            elapsed = time.monotonic() - t0
            mem = int(info(r, "memory")["used_memory"])
            ev = events_bytes(r, settings.partitions)
            r.config_resetstat()
            lat = await latency(calls, loaded, args.samples, str(target))
            fc = info(r, "commandstats").get("cmdstat_fcall", {})
            step = {
                "users": loaded, "tenants": (loaded + USERS_PER_TENANT - 1) // USERS_PER_TENANT,
                "load_seconds": round(elapsed, 1),
                "used_memory_bytes": mem, "event_streams_bytes": ev,
                "bytes_per_user": round((mem - base) / loaded),
                "bytes_per_user_without_event_streams": round((mem - base - ev) / loaded),
                "authorize_latency": lat,
                "redis_usec_per_authorize_fcall": fc.get("usec_per_call"),
            }
            out["steps"].append(step)
            print(json.dumps(step), flush=True)
        if args.active:
            before = int(info(r, "memory")["used_memory"])
            ev0 = events_bytes(r, settings.partitions)
            import random

            rng = random.Random(1)
            answers: list[dict[str, Any]] = []

            async def authorize(coro: Any) -> None:
                answers.append(await coro)

            picks = [rng.randrange(loaded) for _ in range(args.active)]
            await _bounded((authorize(calls.authorize(
                tenant(u // USERS_PER_TENANT),
                AuthorizeRequest(f"act-{i}", "outbound", f"u{u}", "+12125550123", None, None)))
                for i, u in enumerate(picks)), limit=500)
            allowed = sum(a["decision"] == "allow" for a in answers)
            after = int(info(r, "memory")["used_memory"])
            ev1 = events_bytes(r, settings.partitions)
            out["active_calls"] = {
                "calls": args.active, "allowed": allowed,
                "active_in_redis": await store.active_calls(),
                "bytes_per_active_call": round((after - before) / args.active),
                "bytes_per_active_call_without_event_streams": round(
                    (after - before - (ev1 - ev0)) / args.active),
            }
            print(json.dumps(out["active_calls"]), flush=True)
        await store.close()
        r.close()
        return out
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="1000,100000,1000000",
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--active", type=int, default=100_000)
    p.add_argument("--samples", type=int, default=2000, help="authorizations per latency step")
    args = p.parse_args(argv)
    import uvloop

    out = uvloop.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bulk_load.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"written: {RESULTS / 'bulk_load.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
