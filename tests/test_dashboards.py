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
                   "callgate_reaper_overdue_seconds",
                   "callgate_decisions_total", "callgate_request_duration_seconds_bucket"):
        assert metric in exprs, f"no alert on {metric}"
    for r in rules:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
        assert re.fullmatch(r"\d+[smh]", r["for"]), r
        assert r["labels"]["severity"] in ("warning", "critical"), r
        assert r["annotations"]["summary"], r
        check_expr(r["expr"])


def test_promtool_check_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus): structure is "
                    "checked by test_alert_rules_structure only")
    out = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
