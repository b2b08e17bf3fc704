"""Kamailio (integrations/kamailio/kamailio.cfg) and a sipp trunk behind it, as processes:
for tests/test_kamailio*.py and ``make sipbench``."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
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
    return [tool for tool in ("kamailio", "kamcmd", "sipp") if shutil.which(tool) is None]


@dataclass(frozen=True)
class Tenancy:
    """Where the proxy finds the tenant of a call and its switch token (kamailio.cfg).

    ``trunks``: source address -> tenant (group 1 of the address file); ``trusted``:
    addresses whose X-Callgate-Tenant header is believed (group 2); ``default_tenant``: the
    tenant of any other call ("" refuses it); ``tokens``: tenant -> its own switch token;
    ``token``: the token of every other tenant ("" for none)."""

    default_tenant: str = ""
    token: str = ""
    trunks: Mapping[str, str] = field(default_factory=dict)
    trusted: tuple[str, ...] = ()
    tokens: Mapping[str, str] = field(default_factory=dict)


def write_sources(path: Path, trunks: Mapping[str, str], trusted: Iterable[str]) -> None:
    """The address file (permissions module format) of ``trunks`` and ``trusted``."""
    lines = ["# group address netmask port tag"]
    lines += [f"1 {addr} 32 0 {tenant}" for addr, tenant in trunks.items()]
    lines += [f"2 {addr} 32 0" for addr in trusted]
    path.write_text("\n".join(lines) + "\n")


def write_tokens(directory: Path, tokens: Mapping[str, str]) -> None:
    """The db_text table ``tokens`` (htable columns) of per-tenant switch tokens."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = ["key_name(str) key_type(int) value_type(int) key_value(str) expires(int)"]
    rows += [f"{tenant}:0:0:{token}:0" for tenant, token in tokens.items()]
    target = directory / "tokens"
    target.touch(mode=0o600)
    target.write_text("\n".join(rows) + "\n")


def kamcmd(work: Path, *args: str) -> str:
    """An RPC command to the proxy started by sip_proxy in ``work``: its output, errors
    included."""
    out = subprocess.run(["kamcmd", "-s", f"unix:{work / 'kamailio_ctl'}", *args],
                         capture_output=True, text=True, timeout=10, check=False)
    return out.stdout + out.stderr


@contextlib.contextmanager
def sip_proxy(gateway_url: str, tenancy: Tenancy, work: Path, *,
              extend_before: int = 3, gateway_timeout_s: int = 5, children: int | None = None,
              async_workers: int = 8, shm_mb: int | None = None,
              deadline_s: float = 30.0) -> Iterator[int]:
    """Kamailio on ``gateway_url`` for ``tenancy`` and the sipp trunk behind it
    (sipp/uas_answer.xml), both listening; yields the proxy's UDP port. Kamailio's log is
    ``work/kamailio.log``, its main process id ``work/kamailio.pid``; its address file
    ``work/sources.list`` and tokens ``work/tokens-db/tokens`` (rewrite them and reload
    with kamcmd to change them live)."""
    proxy_port, trunk_port = free_port(), free_port()
    sources, tokens_db = work / "sources.list", work / "tokens-db"
    write_sources(sources, tenancy.trunks, tenancy.trusted)
    write_tokens(tokens_db, tenancy.tokens)
    env = {**os.environ,
           "CALLGATE_URL": gateway_url, "CALLGATE_TOKEN": tenancy.token,
           "CALLGATE_CLIENT": str(KAMAILIO_DIR / "callgate_client.py"),
           "CALLGATE_DEFAULT_TENANT": tenancy.default_tenant,
           "CALLGATE_SOURCES": str(sources), "CALLGATE_TOKENS_DB": f"text://{tokens_db}",
           "CARRIER": f"127.0.0.1:{trunk_port}", "SIP_LISTEN": f"127.0.0.1:{proxy_port}",
           "EXTEND_BEFORE": str(extend_before), "CALLGATE_TIMEOUT": str(gateway_timeout_s),
           "ASYNC_WORKERS": str(async_workers)}
    with _proxy_and_trunk(KAMAILIO_DIR / "kamailio.cfg", env, work, proxy_port, trunk_port,
                          children=children, shm_mb=shm_mb, deadline_s=deadline_s):
        yield proxy_port


def free_low_port(low: int = 20000, high: int = 32767) -> int:
    """A free loopback TCP port in [low, high]: for cnxcc, whose Redis port must fit in a
    signed 16-bit integer (above 32767 it wraps and the connection fails with "Servname not
    supported for ai_socktype"); free_port() draws from the ephemeral range, above it."""
    start = low + secrets.randbelow(high - low + 1)
    for i in range(high - low + 1):
        port = low + (start - low + i) % (high - low + 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


@contextlib.contextmanager
def cnxcc_proxy(redis_port: int, work: Path, *, children: int | None = None,
                shm_mb: int | None = None, deadline_s: float = 30.0) -> Iterator[int]:
    """The benchmark baseline: Kamailio with integrations/kamailio/cnxcc-baseline.cfg
    (cnxcc, its Redis on 127.0.0.1:``redis_port``, db 1) and the same sipp trunk behind it;
    yields the proxy's UDP port. Not a deployment: see the file's header."""
    if redis_port > 32767:
        raise ValueError(f"cnxcc cannot reach a Redis port above 32767: {redis_port}")
    proxy_port, trunk_port = free_port(), free_port()
    env = {**os.environ, "CNXCC_REDIS": f"addr=127.0.0.1;port={redis_port};db=1",
           "CARRIER": f"127.0.0.1:{trunk_port}", "SIP_LISTEN": f"127.0.0.1:{proxy_port}"}
    with _proxy_and_trunk(KAMAILIO_DIR / "cnxcc-baseline.cfg", env, work, proxy_port,
                          trunk_port, children=children, shm_mb=shm_mb,
                          deadline_s=deadline_s):
        yield proxy_port


@contextlib.contextmanager
def _proxy_and_trunk(cfg: Path, env: Mapping[str, str], work: Path, proxy_port: int,
                     trunk_port: int, *, children: int | None, shm_mb: int | None,
                     deadline_s: float) -> Iterator[None]:
    """Kamailio on ``cfg`` and the sipp trunk, until both listen; stopped after."""
    log_path = work / "kamailio.log"
    cmd = ["kamailio", "-f", str(cfg), "-DD", "-E",
           "-Y", str(work),
           "-A", f'CTL_SOCKET="unix:{work / "kamailio_ctl"}"']
    if children:
        cmd += ["-n", str(children)]
    if shm_mb:
        cmd += ["-m", str(shm_mb)]
    with log_path.open("wb") as log, open(os.devnull, "wb") as devnull:
        kamailio = subprocess.Popen(cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        (work / "kamailio.pid").write_text(f"{kamailio.pid}\n")  # -DD writes none
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
            yield
        finally:
            trunk.kill()
            trunk.wait()
            kamailio.terminate()
            try:
                kamailio.wait(10)
            except subprocess.TimeoutExpired:
                kamailio.kill()
                kamailio.wait()
