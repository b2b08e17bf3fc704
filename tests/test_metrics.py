"""/metrics: the text format, the call-control metrics and the naming conventions."""

from __future__ import annotations

import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.http.observe import OBSERVER
from gateway.ledger.reaper import Reaper
from gateway.redis.server import RedisServer
from gateway.redis.store import Store
from gateway.rules.clock import ManualClock, parse_rfc3339
from tests.support.gateway import start_gateway
from tests.support.gwclient import Gateway

NEW_YORK = "+12125550123"


async def test_metrics_endpoint_counts_decisions_and_latency(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic")
    await gw.call(t, "c1", NEW_YORK, user="u")
    await gw.extend(t, "c1", 200)
    await gw.end(t, "c1", 250)
    await gw.call(t, "c2", "+19005550100", user="u")

    resp = await gw.client.get("/metrics")  # no token
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    decisions = {
        (s.labels["decision"], s.labels["reason"], s.labels["source"]): s.value
        for s in families["callgate_decisions"].samples if s.name.endswith("_total")
    }
    assert decisions[("allow", "domestic_pool", "domestic_pool")] >= 2  # authorize + extend
    assert decisions[("deny", "destination_blocked", "none")] >= 1
    ops = {s.labels["operation"] for s in families["callgate_request_duration_seconds"].samples
           if s.name.endswith("_count")}
    assert {"authorize", "extend", "end"} <= ops
    fns = {s.labels["function"]
           for s in families["callgate_redis_duration_seconds"].samples
           if s.name.endswith("_count")}
    assert {"authorize", "extend", "end_call"} <= fns
    active = families["callgate_active_calls"].samples[0].value
    assert active >= 0


async def _gauges(gw: Gateway) -> dict[str, float]:
    resp = await gw.client.get("/metrics")
    assert resp.status == 200
    return {s.name: s.value for f in text_string_to_metric_families(await resp.text())
            for s in f.samples if s.name in ("callgate_active_calls",
                                             "callgate_reaper_overdue_seconds")}


async def test_reaper_overdue_shows_grants_nobody_reaps(own_redis: RedisServer,
                                                        clock: ManualClock,
                                                        aiohttp_client: Any) -> None:
    """With no reaper running (as when CALLGATE_PERSIST=0 and no `callgate persist --reap`
    runs elsewhere), the gauge measures how long past the grace the earliest expired grant
    is; a reaper pass brings it back to 0. A private Redis: the active sets are global."""
    gw = await start_gateway(aiohttp_client, clock, own_redis.url)
    # Every scrape samples Redis anew (still one round at a time): the gauges' meaning is
    # tested here, the once-a-second bound in test_observe_sampling.py.
    gw.client.server.app[OBSERVER].set_interval(0)
    grace = gw.settings.reaper_grace_seconds
    await gw.tenant("t")
    await gw.user("t", "u", "US", "domestic")
    assert await _gauges(gw) == {"callgate_active_calls": 0,
                                 "callgate_reaper_overdue_seconds": 0}
    first = await gw.call("t", "c1", NEW_YORK, user="u")
    clock.advance(10)
    await gw.call("t", "c2", NEW_YORK, user="u")
    expires = parse_rfc3339(first["grant_expires_at"])
    assert expires is not None

    clock.set(expires + grace)  # due now: not overdue yet
    assert await _gauges(gw) == {"callgate_active_calls": 2,
                                 "callgate_reaper_overdue_seconds": 0}
    clock.set(expires + grace + 125)
    assert await _gauges(gw) == {"callgate_active_calls": 2,
                                 "callgate_reaper_overdue_seconds": 125}

    s = gw.settings
    store = Store.from_url(own_redis.url, s.partitions)
    try:
        reaper = Reaper(store, clock, grace, s.clock_skew_seconds, s.call_retention_seconds)
        assert await reaper.run_once() == 2
    finally:
        await store.close()
    assert await _gauges(gw) == {"callgate_active_calls": 0,
                                 "callgate_reaper_overdue_seconds": 0}


def test_metric_names_follow_conventions() -> None:
    for name in metrics.METRIC_NAMES:
        assert re.fullmatch(r"callgate_[a-z_]+", name), name
    counters = {"callgate_decisions_total", "callgate_redis_errors_total",
                "callgate_redis_timeouts_total", "callgate_grants_reaped_total",
                "callgate_deck_reloads_total", "callgate_redis_oom_errors_total"}
    assert counters <= metrics.METRIC_NAMES
    for label in ("tenant", "tenant_id", "user", "user_id", "call_id"):
        for m in (metrics.DECISIONS, metrics.REQUEST_DURATION, metrics.REDIS_DURATION,
                  metrics.REDIS_ERRORS, metrics.DECK_RELOADS):
            assert label not in m._labelnames


def test_persister_and_reaper_hooks() -> None:
    metrics.set_persister_state(12, 0.5)
    metrics.count_grants_reaped(3)
    metrics.count_deck_reload(ok=False)
    body = metrics.render()[0].decode()
    assert "callgate_persister_backlog_events 12.0" in body
    assert "callgate_persister_lag_seconds 0.5" in body
    assert re.search(r"callgate_grants_reaped_total [1-9]", body)
    assert 'callgate_deck_reloads_total{result="error"}' in body
    assert "callgate_config_reloads" not in body  # never counted anything: removed
