"""The Kamailio configurations under integrations/kamailio parse (``kamailio -c``), and the
cnxcc baseline of ``make sipbench`` (cnxcc-baseline.cfg) carries a call with its Redis on a
port cnxcc can reach (below 32768)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
import redis as redis_py

from gateway.redis.server import RedisServer
from loadtest.common import free_port
from loadtest.sip import KAMAILIO_DIR, SCENARIOS, cnxcc_proxy, free_low_port, tools_missing

DEADLINE_SECONDS = 30


def need_tools() -> None:
    missing = tools_missing()
    if missing:
        pytest.fail(f"{' and '.join(missing)} needed: `make test` installs them")


CONFIGS = {
    "kamailio.cfg": {
        "CALLGATE_URL": "http://127.0.0.1:8080", "CALLGATE_TOKEN": "t",
        "CALLGATE_CLIENT": str(KAMAILIO_DIR / "callgate_client.py"),
        "CALLGATE_DEFAULT_TENANT": "", "CALLGATE_SOURCES": str(
            KAMAILIO_DIR / "example" / "sources.list"),
        "CALLGATE_TOKENS_DB": f"text://{KAMAILIO_DIR / 'example' / 'tokens-db'}",
        "EXTEND_BEFORE": "30", "CALLGATE_TIMEOUT": "2", "ASYNC_WORKERS": "4"},
    "cnxcc-baseline.cfg": {"CNXCC_REDIS": "addr=127.0.0.1;port=26379;db=1"},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_parses(name: str, tmp_path: Path) -> None:
    need_tools()
    env = {**os.environ, **CONFIGS[name], "CARRIER": "127.0.0.1:5090",
           "SIP_LISTEN": f"127.0.0.1:{free_port()}"}
    out = subprocess.run(
        ["kamailio", "-c", "-f", str(KAMAILIO_DIR / name),
         "-A", f'CTL_SOCKET="unix:{tmp_path / "ctl"}"'],
        env=env, capture_output=True, text=True, timeout=DEADLINE_SECONDS, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "config file ok" in out.stdout + out.stderr


def test_the_baseline_says_it_is_one() -> None:
    head = (KAMAILIO_DIR / "cnxcc-baseline.cfg").read_text().split("\n\n", 1)[0]
    assert "BENCHMARK BASELINE, NOT A DEPLOYMENT" in head


def test_free_low_port_fits_cnxcc() -> None:
    for _ in range(20):
        assert 20000 <= free_low_port() <= 32767


def test_cnxcc_baseline_carries_a_call(tmp_path: Path) -> None:
    need_tools()
    with RedisServer(tmp_path / "redis", port=free_low_port(), appendonly=False,
                     name="cnxcc-test-redis") as redis, \
            cnxcc_proxy(redis.port, tmp_path, deadline_s=DEADLINE_SECONDS) as port:
        out = subprocess.run(
            ["sipp", "-sf", str(SCENARIOS / "uac_talk.xml"), "-i", "127.0.0.1",
             "-p", str(free_port()), "-s", "+12125550123", "-key", "caller", "alice",
             "-d", "200", "-m", "1", "-nostdin", "-timeout", f"{DEADLINE_SECONDS}s",
             "-timeout_error", f"127.0.0.1:{port}"],
            cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True,
            timeout=DEADLINE_SECONDS + 10, check=False)
        log = (tmp_path / "kamailio.log").read_text(errors="replace")
        assert out.returncode == 0, out.stderr.decode(errors="replace") + log[-3000:]
        assert "Servname not supported" not in log
        assert "cnxcc refused" not in log
        # cnxcc kept the call's credit in its Redis (and removed it at the end).
        stats = cast(dict[str, Any], redis_py.Redis(port=redis.port).info("commandstats"))
        assert stats.get("cmdstat_hset", {}).get("calls", 0) > 0, stats
