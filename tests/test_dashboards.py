"""The Grafana dashboard and the Prometheus alert rules: structure, and every metric they
query exists in gateway/metrics.py (a renamed metric must not leave a blank panel or a
silent alert). ``promtool check rules`` runs too when promtool is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "config" / "grafana" / "callgate-dashboard.json"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
VENV_BIN = ROOT / ".venv" / "bin"

HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
NAME_RE = re.compile(r"\bcallgate_[a-z0-9_]+")
# label names in `by (...)` / `without (...)` and in `{label="..."}` matchers
BY_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def _families() -> dict[str, tuple[str, set[str]]]:
    """{name: (type, label names)} of every metric in gateway.metrics."""
    out: dict[str, tuple[str, set[str]]] = {}
    for obj in vars(metrics).values():
        describe = getattr(obj, "describe", None)
        if describe is None or not hasattr(obj, "_labelnames"):
            continue
        for fam in describe():
            name = fam.name + ("_total" if fam.type == "counter" else "")
            out[name] = (fam.type, set(obj._labelnames))
    return out


FAMILIES = _families()


def check_expr(expr: str) -> None:
    names = NAME_RE.findall(expr)
    assert names, f"no callgate metric in {expr!r}"
    for name in names:
        base = name
        if name not in FAMILIES:
            base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES
                         if name.endswith(s)), name)
            assert FAMILIES.get(base, ("", set()))[0] == "histogram", \
                f"{name} is not defined in gateway/metrics.py"
        assert base in metrics.METRIC_NAMES, f"{base} missing from metrics.METRIC_NAMES"
    labels = {"le"} | set().union(*(FAMILIES[n][1] for n in FAMILIES))
    used = {m for m in MATCHER_RE.findall(expr)}
    for group in BY_RE.findall(expr):
        used |= {x.strip() for x in group.split(",") if x.strip()}
    assert used <= labels, f"unknown labels {used - labels} in {expr!r}"


def test_metric_names_list_matches_definitions() -> None:
    assert set(FAMILIES) == set(metrics.METRIC_NAMES)


def test_dashboard_imports_as_is() -> None:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    assert dash["id"] is None  # a fixed id would clash on import
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = " | ".join(p["title"].lower() for p in panels)
    for wanted in ("decisions/s by outcome", "p99", "redis", "persister", "deny reasons"):
        assert wanted in titles, wanted
    for p in panels:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            check_expr(t["expr"])


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alert_rules_structure() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(set(names)) == len(names)
    exprs = " ".join(r["expr"] for r in rules)
    for metric in ("callgate_persister_lag_seconds", "callgate_redis_errors_total",
                   "callgate_reaper_overdue_seconds", "callgate_redis_memory_used_bytes",
                   "callgate_redis_memory_max_bytes", "callgate_redis_oom_errors_total",
                   "callgate_decisions_total", "callgate_request_duration_seconds_bucket"):
        assert metric in exprs, f"no alert on {metric}"
    for r in rules:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
        assert re.fullmatch(r"\d+[smh]", r["for"]), r
        assert r["labels"]["severity"] in ("warning", "critical"), r
        assert r["annotations"]["summary"], r
        check_expr(r["expr"])


def _promtool() -> str:
    """promtool from PATH, or the copy `make test` puts in the virtualenv."""
    found = shutil.which("promtool") or shutil.which("promtool", path=str(VENV_BIN))
    if found is None:
        pytest.skip("promtool not found (make test fetches it from Debian's prometheus "
                    "package): structure is checked by test_alert_rules_structure only")
    return found


def test_promtool_check_rules() -> None:
    out = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _scenario(series: dict[str, str], checks: list[tuple[str, str, str | None]],
              ) -> dict[str, Any]:
    """A promtool rule test: series at 1-minute steps; checks are (eval time, alert,
    expected severity or None for no alert)."""
    return {
        "interval": "1m",
        "input_series": [{"series": k, "values": v} for k, v in series.items()],
        "alert_rule_test": [
            {"eval_time": t, "alertname": name,
             "exp_alerts": [] if sev is None else [{"exp_labels": {"severity": sev}}]}
            for t, name, sev in checks],
    }


ALLOWED = ('callgate_decisions_total'
           '{decision="allow",reason="domestic_pool",source="domestic_pool"}')
DENIED = ('callgate_decisions_total'
          '{decision="deny",reason="pool_exhausted_no_credits",source="none"}')

# Each alert fires on the condition it names, after its `for`, and not below its threshold.
ALERT_SCENARIOS = [
    _scenario({"callgate_reaper_overdue_seconds": "0 0 90x20",
               'callgate_reaper_overdue_seconds{instance="b"}': "30x20"},
              [("6m", "CallgateReaperNotRunning", None),
               ("8m", "CallgateReaperNotRunning", "critical")]),
    _scenario({"callgate_reaper_overdue_seconds": "45x20"},
              [("15m", "CallgateReaperNotRunning", None)]),
    _scenario({"callgate_persister_lag_seconds": "400x20"},
              [("1m", "CallgatePersisterLagging", None),
               ("3m", "CallgatePersisterLagging", "warning"),
               ("3m", "CallgatePersisterStalled", None),
               ("6m", "CallgatePersisterStalled", "critical")]),
    _scenario({"callgate_persister_lag_seconds": "20x20"},
              [("15m", "CallgatePersisterLagging", None)]),
    # 1 failure per second against a threshold of 0.1; 0.05 per second does not fire.
    _scenario({'callgate_redis_errors_total{kind="timeout"}': "0+60x20"},
              [("10m", "CallgateRedisErrors", "critical")]),
    _scenario({'callgate_redis_errors_total{kind="timeout"}': "0+3x20"},
              [("10m", "CallgateRedisErrors", None)]),
    # Every authorize between 2.5 and 5 ms: p99 over budget; all under 1 ms: within it.
    _scenario({
        'callgate_request_duration_seconds_bucket{operation="authorize",le="0.001"}': "0x30",
        'callgate_request_duration_seconds_bucket{operation="authorize",le="0.0025"}': "0x30",
        'callgate_request_duration_seconds_bucket{operation="authorize",le="0.005"}':
            "0+600x30",
        'callgate_request_duration_seconds_bucket{operation="authorize",le="+Inf"}':
            "0+600x30",
        'callgate_request_duration_seconds_bucket{operation="end",le="0.001"}': "0+600x30",
        'callgate_request_duration_seconds_bucket{operation="end",le="+Inf"}': "0+600x30"},
        [("8m", "CallgateAuthorizeLatencyOverBudget", None),
         ("20m", "CallgateAuthorizeLatencyOverBudget", "warning")]),
    _scenario({
        'callgate_request_duration_seconds_bucket{operation="authorize",le="0.001"}':
            "0+600x30",
        'callgate_request_duration_seconds_bucket{operation="authorize",le="+Inf"}':
            "0+600x30"},
        [("20m", "CallgateAuthorizeLatencyOverBudget", None)]),
    # Denials go from 1 to 50 a minute (a third of the decisions) after a quiet day (the
    # hour a day before lies wholly in the data); as many denials the day before: no alert.
    _scenario({
        ALLOWED: "0+100x1600",
        DENIED: "0+1x1500 1550+50x99"},
        [("1505m", "CallgateDenyRateSpike", None),
         ("1530m", "CallgateDenyRateSpike", "warning")]),
    _scenario({
        ALLOWED: "0+100x1600",
        DENIED: "0+50x1600"},
        [("1530m", "CallgateDenyRateSpike", None)]),
    # Redis at 95 % of its maxmemory fires after 2 minutes; 80 %, or no limit, never.
    _scenario({'callgate_redis_memory_used_bytes{instance="a"}': "950x20",
               'callgate_redis_memory_max_bytes{instance="a"}': "1000x20",
               'callgate_redis_memory_used_bytes{instance="b"}': "100x20",
               'callgate_redis_memory_max_bytes{instance="b"}': "1000x20"},
              [("1m", "CallgateRedisMemoryHigh", None),
               ("3m", "CallgateRedisMemoryHigh", "critical")]),
    _scenario({'callgate_redis_memory_used_bytes{instance="a"}': "800x20",
               'callgate_redis_memory_max_bytes{instance="a"}': "1000x20",
               'callgate_redis_memory_used_bytes{instance="b"}': "5000x20",
               'callgate_redis_memory_max_bytes{instance="b"}': "0x20"},
              [("15m", "CallgateRedisMemoryHigh", None)]),
    # OOM error replies start at minute 5: firing a minute later; none, no alert.
    _scenario({"callgate_redis_oom_errors_total": "0x5 30+30x15"},
              [("5m", "CallgateRedisOutOfMemory", None),
               ("7m", "CallgateRedisOutOfMemory", "critical")]),
    _scenario({"callgate_redis_oom_errors_total": "7x20"},
              [("15m", "CallgateRedisOutOfMemory", None)]),
    # Two failed webhook attempts a minute and nothing delivered; the same with deliveries.
    _scenario({'callgate_webhook_deliveries_total{result="retry"}': "0+2x60"},
              [("5m", "CallgateWebhookDeliveriesFailing", None),
               ("50m", "CallgateWebhookDeliveriesFailing", "warning")]),
    _scenario({'callgate_webhook_deliveries_total{result="retry"}': "0+2x60",
               'callgate_webhook_deliveries_total{result="delivered"}': "0+10x60"},
              [("50m", "CallgateWebhookDeliveriesFailing", None)]),
]


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests over the alerts file (annotations left out of the copy
    under test: promtool would compare their rendered text; check rules validates them)."""
    promtool = _promtool()
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    tested = {t["alertname"] for sc in ALERT_SCENARIOS for t in sc["alert_rule_test"]}
    assert tested == {r["alert"] for r in _rules()}, "every alert needs a scenario"
    (tmp_path / "test.yml").write_text(yaml.safe_dump({
        "rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": ALERT_SCENARIOS}))
    out = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
