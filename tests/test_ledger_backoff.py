"""Ledger outages: the persister backs off exponentially (bounded attempts), logs a
handful of lines (down, still down with the backlog, recovered) without tracebacks, and
loses no event once the database is back. A PostgreSQL server of the test's own is
stopped and started for real; the back-off schedule itself is checked on a manual clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.ledger import Ledger, open_ledger
from gateway.ledger.background import run_persister
from gateway.ledger.backoff import DELAY_MAX_SECONDS, DELAY_MIN_SECONDS, JITTER_FRACTION, Outage
from gateway.ledger.persister import Persister
from gateway.ledger.reaper import Reaper
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock
from tests.support.gateway import make_settings, start_gateway
from tests.support.gwclient import AUTH, Gateway
from tests.support.ledger_fixtures import _as_pg_user, _free_port, _pg_bin
from tests.support.persist_helpers import entries_added, scalar, wait_drained

PARTITIONS = 4
DEADLINE_SECONDS = 30.0
# How long the test keeps PostgreSQL down; CALLGATE_LEDGER_OUTAGE_SECONDS=30 with -s prints
# the figures of docs/ledger-operations.md.
OUTAGE_SECONDS = float(os.environ.get("CALLGATE_LEDGER_OUTAGE_SECONDS", "3"))
STILL_DOWN_EVERY_SECONDS = OUTAGE_SECONDS / 3  # the test's report interval (30 s in production)
LOGGER = "gateway.ledger.persister"


class PgServer:
    """A PostgreSQL server of one test, which it may stop and start again."""

    def __init__(self, base: Path) -> None:
        self.base, self.data, self.port = base, base / "data", _free_port()
        if os.geteuid() == 0:
            shutil.chown(base, "postgres", "postgres")
        subprocess.run(_as_pg_user([_pg_bin("initdb"), "-D", str(self.data), "-U",
                                    "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_pg_user([_pg_bin("pg_ctl"), "-D", str(self.data), *args]),
                       check=True, capture_output=True, timeout=DEADLINE_SECONDS)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                "-c fsync=off")
        self._ctl("-o", opts, "-w", "-l", str(self.base / "log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")


@pytest.fixture
def pg() -> Iterator[PgServer]:
    server = PgServer(Path(tempfile.mkdtemp(prefix="callgate-pg-outage-")))
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop()
        shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture
async def gw(own_redis: RedisServer, clock: ManualClock, aiohttp_client: Any) -> Gateway:
    return await start_gateway(aiohttp_client, clock, own_redis.url, partitions=PARTITIONS)


@pytest.fixture
async def store(own_redis: RedisServer) -> AsyncIterator[Store]:
    s = Store.from_url(own_redis.url, PARTITIONS)
    yield s
    await s.close()


async def poll(what: str, cond: Any, deadline_s: float = DEADLINE_SECONDS) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def attempts_max(elapsed_s: float) -> int:
    """The most attempts the back-off allows in elapsed_s: each wait is at least
    (1 - JITTER_FRACTION) x min(DELAY_MIN_SECONDS x 2^i, DELAY_MAX_SECONDS)."""
    n, waited, delay = 1, 0.0, DELAY_MIN_SECONDS
    while True:
        waited += delay * (1 - JITTER_FRACTION)
        if waited > elapsed_s:
            return n
        n += 1
        delay = min(delay * 2, DELAY_MAX_SECONDS)


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


async def test_postgres_outage_backs_off_logs_a_handful_and_loses_nothing(
    pg: PgServer, gw: Gateway, store: Store, tenant_id: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    t = tenant_id
    ledger = await open_ledger(pg.url)
    outage = Outage("persister", logging.getLogger(LOGGER),
                    still_down_every_seconds=STILL_DOWN_EVERY_SECONDS)
    persister = Persister(store, ledger, consumer="p", outage=outage,
                          status_interval_seconds=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(persister.run(stop))
    try:
        await gw.tenant(t)
        await gw.topup(t, "1.00", "before")
        await wait_drained(store)
        caplog.clear()

        pg.stop()
        for i in range(20):  # events written while the ledger is down
            await gw.topup(t, "1.00", f"during-{i}")
        await poll("the outage", lambda: outage.down)
        down_at = outage.down_since
        assert down_at is not None and outage.part == "ledger"
        # The backlog reaches /metrics during the outage: the lag alerts can fire.
        await poll("the backlog on /metrics", lambda: (REGISTRY.get_sample_value(
            "callgate_persister_backlog_events") or 0) >= 20)
        await poll(f"{OUTAGE_SECONDS} s of outage",
                   lambda: time.monotonic() - down_at >= OUTAGE_SECONDS)
        failed, elapsed = outage.failures, time.monotonic() - down_at
        # Bounded by the back-off (the old loop made ~16 attempts a second).
        assert 2 <= failed <= attempts_max(elapsed), (failed, elapsed)
        pg.start()
        await poll("the recovery", lambda: not outage.down)
        await wait_drained(store)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_SECONDS)

    logged = records(caplog)
    texts = [r.getMessage() for r in logged]
    others = [r for r in caplog.records if r.name not in (LOGGER, "aiohttp.access")]
    assert not others, [r.getMessage() for r in others]  # nothing else complained
    log_bytes = sum(len(caplog.handler.format(r)) + 1 for r in logged)
    print(f"\nPostgreSQL down {elapsed:.1f} s: {failed} failed ledger attempts, "
          f"{len(logged)} log lines ({log_bytes} bytes):")
    print("\n".join(texts))
    # A handful: down, one "still down" per report interval at most, recovered.
    assert len(logged) <= 2 + (time.monotonic() - down_at) / STILL_DOWN_EVERY_SECONDS
    assert not any(r.exc_info for r in caplog.records), \
        f"no traceback for a refused connection: {[r.name for r in caplog.records]}"
    assert texts[0].startswith("persister: ledger down (") and "backing off to" in texts[0]
    still = [x for x in texts if "still down after" in x]
    assert still and all("failed attempts" in x and "backlog " in x for x in still)
    assert any("backlog 2" in x for x in still), still  # 20 or 21 entries waiting
    assert texts[-1].startswith("persister: ledger recovered after ")
    assert "wrote 20 entries" in texts[-1] or "wrote 21 entries" in texts[-1], texts[-1]
    assert sum("recovered" in x for x in texts) == 1

    # Nothing lost: every entry ever appended is in the ledger, each top-up once.
    check = await open_ledger(pg.url)
    try:
        assert await scalar(check, "SELECT COUNT(*) FROM events") == await entries_added(store)
        assert await scalar(check, "SELECT COUNT(*) FROM topups WHERE tenant = ?", t) == 21
        assert await scalar(check, "SELECT balance_micro FROM tenants WHERE tenant = ?",
                            t) == 21_000_000
    finally:
        await check.close()
        await ledger.close()


async def test_persister_started_while_postgres_is_down_waits_for_it(
    pg: PgServer, gw: Gateway, store: Store, tenant_id: str,
    caplog: pytest.LogCaptureFixture
) -> None:
    """`callgate persist` started with its database down waits with the same back-off
    and log lines (no crash loop through the supervisor), then persists everything."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    await gw.tenant(tenant_id)
    await gw.topup(tenant_id, "2.00", "k")
    pg.stop()
    assert gw.settings.redis_url
    settings = make_settings(gw.settings.redis_url, partitions=PARTITIONS,
                             database_url=pg.url)
    stop = asyncio.Event()
    task = asyncio.create_task(run_persister(settings, stop, reaper=False))
    try:
        await poll("the down line",
                   lambda: any("ledger down" in r.getMessage() for r in records(caplog)))
        assert not task.done()
        pg.start()
        await wait_drained(store)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_SECONDS)
    texts = [r.getMessage() for r in records(caplog)]
    assert sum("recovered" in x for x in texts) == 1
    ledger: Ledger = await open_ledger(pg.url)
    try:
        assert await scalar(ledger, "SELECT balance_micro FROM tenants WHERE tenant = ?",
                            tenant_id) == 2_000_000
    finally:
        await ledger.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_back_off_schedule_and_log_lines_on_a_manual_clock(
    caplog: pytest.LogCaptureFixture
) -> None:
    """0.1 s doubling to 5 s; down once, still down every 30 s with the backlog,
    recovered once; a traceback only for an unexpected error, and only at "down"."""
    caplog.set_level(logging.INFO, logger="t.backoff")
    clock = _Clock()
    outage = Outage("persister", logging.getLogger("t.backoff"), monotonic=clock,
                    jitter=lambda: 0.0)

    async def backlog() -> int:
        return 42

    waits = []
    for _ in range(40):
        wait = await outage.failed("ledger", ConnectionRefusedError(111, "refused"),
                                   backlog)
        waits.append(wait)
        clock.now += wait
    assert waits[:7] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert set(waits[7:]) == {5.0}
    elapsed = clock.now - 1000.0  # 6.3 + 33 x 5 = 171.3 s
    await outage.succeeded(backlog)
    texts = [r.getMessage() for r in caplog.records]
    assert texts[0] == ("persister: ledger down (ConnectionRefusedError: [Errno 111] "
                        "refused); retrying in 0.1 s, backing off to 5 s")
    still = [x for x in texts if "still down" in x]
    assert len(still) == int(elapsed // 30)
    assert still[0].startswith("persister: ledger still down after 3") and \
        "backlog 42 entries" in still[0]
    assert texts[-1] == (f"persister: ledger recovered after {elapsed:.1f} s (40 failed "
                         "attempts); backlog 42 entries")
    assert "(12 failed attempts, last ConnectionRefusedError" in still[0], still[0]
    assert len(texts) == 2 + len(still) and not any(r.exc_info for r in caplog.records)
    # The next outage starts again from the shortest delay.
    caplog.clear()
    assert await outage.failed("ledger", RuntimeError("bug")) == pytest.approx(0.1)
    (rec,) = caplog.records
    assert rec.levelno == logging.ERROR and rec.exc_info  # unexpected: the traceback, once
    assert await outage.failed("ledger", RuntimeError("bug")) == pytest.approx(0.2)
    assert len(caplog.records) == 1


async def test_cdrs_answer_503_while_postgres_is_down_and_200_after(
    pg: PgServer, own_redis: RedisServer, clock: ManualClock, aiohttp_client: Any,
    tenant_id: str
) -> None:
    gw = await start_gateway(aiohttp_client, clock, own_redis.url, partitions=PARTITIONS,
                             database_url=pg.url)
    await gw.tenant(tenant_id)
    path = f"/v1/tenants/{tenant_id}/cdrs"
    assert (await gw.req("GET", path))["cdrs"] == []
    pg.stop()
    doc = await gw.req("GET", path, status=503)
    assert doc["type"] == "urn:callgate:problem:service-unavailable"
    assert "ledger" in doc["detail"], doc  # not "Redis is unavailable"
    assert str(pg.port) not in str(doc)
    pg.start()
    end = time.monotonic() + DEADLINE_SECONDS
    while (resp := await gw.client.get(path, headers=AUTH)).status != 200:
        assert resp.status == 503 and time.monotonic() < end, resp.status
        await asyncio.sleep(0.05)


async def test_redis_outage_backs_off_persister_and_reaper_and_loses_nothing(
    own_redis: RedisServer, gw: Gateway, store: Store, tenant_id: str, tmp_path: Path,
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped and started again (same port, AOF): the persister and the reaper back
    off and log a handful of lines each, then every event reaches the ledger."""
    caplog.set_level(logging.INFO)
    ledger = await open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    persister = Persister(store, ledger, consumer="p", outage=Outage(
        "persister", logging.getLogger(LOGGER), still_down_every_seconds=1.0))
    reaper = Reaper(store, clock, 30, 5, 86400, outage=Outage(
        "reaper", logging.getLogger("gateway.ledger.reaper"), delay_min_seconds=1.0,
        still_down_every_seconds=1.0))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(persister.run(stop)), asyncio.create_task(reaper.run(stop))]
    try:
        await gw.tenant(tenant_id)
        await gw.topup(tenant_id, "1.00", "before")
        await wait_drained(store)
        own_redis.stop()
        await poll("both outages", lambda: persister.outage.down and reaper.outage.down)
        since = min(persister.outage.down_since or 0.0, reaper.outage.down_since or 0.0)
        await poll("3 s of outage", lambda: time.monotonic() - since >= 3.0)
        elapsed = time.monotonic() - since
        assert persister.outage.part == "redis"
        assert persister.outage.failures <= attempts_max(elapsed)
        assert reaper.outage.failures <= 1 + elapsed  # 1 s doubling: at most one a second
        own_redis.start()
        await poll("the recovery", lambda: not persister.outage.down and
                   not reaper.outage.down)
        await gw.topup(tenant_id, "1.00", "after")
        await wait_drained(store)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_SECONDS)
    mine = [r for r in caplog.records if r.name in (LOGGER, "gateway.ledger.reaper")]
    assert not any(r.exc_info for r in mine)
    assert len(mine) <= 4 + 2 * (time.monotonic() - since)  # down, recovered, 1 a second
    for who in ("persister", "reaper"):
        texts = [r.getMessage() for r in mine if r.getMessage().startswith(who)]
        assert texts[0].startswith(f"{who}: redis down ("), texts
        assert texts[-1].startswith(f"{who}: redis recovered after "), texts
    try:
        assert await scalar(ledger, "SELECT COUNT(*) FROM events") == await entries_added(store)
        assert await scalar(ledger, "SELECT balance_micro FROM tenants WHERE tenant = ?",
                            tenant_id) == 2_000_000
    finally:
        await ledger.close()
