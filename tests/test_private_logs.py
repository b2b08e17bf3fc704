"""CALLGATE_LOG_FORMAT=json (issue 12 §4): serve, its workers and its persist child write one
JSON object a line to stderr (time, level, logger, message, pid, and the request's fields
where the call site knows them). Checked on a real ``callgate serve --workers 2`` whose Redis
goes away, so that a worker and the persist child both have something to say."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.main import setup_logging
from gateway.errors import ConfigError
from gateway.logjson import JsonFormatter
from gateway.redis.server import RedisServer, free_port
from tests.support.gwclient import AUTH, OPERATOR_TOKEN
from tests.support.proctree import wait_persist_child


def send(base: str, method: str, path: str, body: dict[str, Any]) -> int:
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 method=method, headers=AUTH)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the file, each parsed as one JSON object (a line that is not fails)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        assert isinstance(doc, dict), line
        out.append(doc)
    return out


def test_serve_workers_and_persist_child_log_json(tmp_path: Path, own_redis: RedisServer
                                                  ) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stderr = tmp_path / "serve.stderr"
    env = {**os.environ, "CALLGATE_DATA_DIR": str(tmp_path / "var"),
           "CALLGATE_OPERATOR_TOKEN": OPERATOR_TOKEN, "CALLGATE_REDIS_URL": own_redis.url,
           "CALLGATE_LOG_FORMAT": "json", "CALLGATE_LOG_LEVEL": "INFO"}
    for k in ("PROMETHEUS_MULTIPROC_DIR", "CALLGATE_DATABASE_URL"):
        env.pop(k, None)
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--workers", "2",
                                 "--port", str(port)], env=env, stderr=err,
                                stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while send(base, "PUT", "/v1/tenants/lj", {"name": "lj"}) not in (200, 201):
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
        persist_pid = wait_persist_child(proc.pid)
        own_redis.kill()  # from now on a worker and the persister log warnings
        call = {"call_id": "c1", "user_id": "u", "to": "+12125550123"}
        deadline = time.monotonic() + 30
        while True:
            assert send(base, "POST", "/v1/tenants/lj/calls", call) == 200
            lines = json_lines(stderr)
            if (any(d.get("operation") == "authorize" for d in lines)
                    and any(d["pid"] == persist_pid for d in lines)):
                break
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, stderr.read_text()
    lines = json_lines(stderr)
    for doc in lines:
        assert {"time", "level", "logger", "message", "pid"} <= set(doc), doc
        assert doc["time"].endswith("Z") and doc["level"] in ("INFO", "WARNING", "ERROR"), doc
    # serve itself: the warning about a Redis that takes clients without credentials, once.
    open_redis = [d for d in lines if "accepts connections without a password" in d["message"]]
    assert len(open_redis) == 1 and open_redis[0]["pid"] == proc.pid, open_redis
    assert open_redis[0]["level"] == "WARNING" and open_redis[0]["logger"] == "callgate"
    # a worker (a forked child, not serve): the request's fields as fields of their own.
    worker = next(d for d in lines if d.get("operation") == "authorize")
    assert worker["pid"] not in (proc.pid, persist_pid)
    assert (worker["tenant_id"], worker["call_id"], worker["level"]) == ("lj", "c1", "WARNING")
    # the persist child (a process started anew, configured by the same variables).
    assert any(d["pid"] == persist_pid and d["logger"].startswith("gateway.") for d in lines)


def test_a_multi_line_record_stays_one_line() -> None:
    record = logging.LogRecord("gateway.x", logging.ERROR, __file__, 1, "two\nlines %s",
                               ("x",), None, func="f")
    record.tenant_id = "t1"
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    doc = json.loads(text)
    assert (doc["message"], doc["logger"], doc["level"], doc["tenant_id"]) == (
        "two\nlines x", "gateway.x", "ERROR", "t1")
    assert "ValueError: boom" in doc["exc"]
    assert doc["time"].endswith("Z")


def test_an_unknown_log_format_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="CALLGATE_LOG_FORMAT") as info:
        setup_logging({"CALLGATE_LOG_FORMAT": "xml"})
    assert info.value.key == "CALLGATE_LOG_FORMAT"
    proc = subprocess.run([sys.executable, "-m", "gateway", "serve"], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "CALLGATE_LOG_FORMAT": "xml"})
    assert proc.returncode == 2 and "CALLGATE_LOG_FORMAT" in proc.stderr
