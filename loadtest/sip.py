"""Kamailio (integrations/kamailio/kamailio.cfg) and a sipp trunk behind it, as processes:
for tests/test_kamailio.py and ``make sipbench``."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from loadtest.common import free_port

ROOT = Path(__file__).resolve().parent.parent
KAMAILIO_DIR = ROOT / "integrations" / "kamailio"
SCENARIOS = KAMAILIO_DIR / "sipp"


def udp_listening(port: int) -> bool:
    """Whether some socket is bound to 127.0.0.1:port/udp (from /proc, no probe packet)."""
    needle = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as table:
        return any(line.split()[1] == needle for line in list(table)[1:])


def tools_missing() -> list[str]:
    return [tool for tool in ("kamailio", "sipp") if shutil.which(tool) is None]


@contextlib.contextmanager
def sip_proxy(gateway_url: str, token: str, tenant: str, work: Path, *,
              extend_before: int = 3, gateway_timeout_s: int = 5, children: int | None = None,
              shm_mb: int | None = None, deadline_s: float = 30.0) -> Iterator[int]:
    """Kamailio for ``tenant`` on ``gateway_url`` and the sipp trunk behind it
    (sipp/uas_answer.xml), both listening; yields the proxy's UDP port. Kamailio's log is
    ``work/kamailio.log``."""
    proxy_port, trunk_port = free_port(), free_port()
    env = {**os.environ,
           "CALLGATE_URL": gateway_url, "CALLGATE_TOKEN": token, "CALLGATE_TENANT": tenant,
           "CARRIER": f"127.0.0.1:{trunk_port}", "SIP_LISTEN": f"127.0.0.1:{proxy_port}",
           "EXTEND_BEFORE": str(extend_before), "CALLGATE_TIMEOUT": str(gateway_timeout_s)}
    log_path = work / "kamailio.log"
    cmd = ["kamailio", "-f", str(KAMAILIO_DIR / "kamailio.cfg"), "-DD", "-E",
           "-Y", str(work), "-P", str(work / "kamailio.pid")]
    if children:
        cmd += ["-n", str(children)]
    if shm_mb:
        cmd += ["-m", str(shm_mb)]
    with log_path.open("wb") as log, open(os.devnull, "wb") as devnull:
        kamailio = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        trunk = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "uas_answer.xml"), "-i", "127.0.0.1",
             "-p", str(trunk_port), "-nostdin"],
            stdin=subprocess.DEVNULL, stdout=devnull, stderr=devnull)
        try:
            deadline = time.monotonic() + deadline_s
            while not (udp_listening(proxy_port) and udp_listening(trunk_port)):
                if kamailio.poll() is not None:
                    raise RuntimeError(f"kamailio exited:\n{log_path.read_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError("kamailio or the sipp trunk is not listening")
                time.sleep(0.05)
            yield proxy_port
        finally:
            trunk.kill()
            trunk.wait()
            kamailio.terminate()
            try:
                kamailio.wait(10)
            except subprocess.TimeoutExpired:
                kamailio.kill()
                kamailio.wait()
