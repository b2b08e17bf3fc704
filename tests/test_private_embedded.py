"""Private by default (issue 12 §1): the embedded Redis of ``callgate serve`` listens on its
unix socket only, with a password kept in the data directory, and everything serve writes
there is its owner's alone.

Before, the embedded redis-server listened on a 127.0.0.1 TCP port without a password: any
local account could HINCRBY a tenant's balance. The data directory was 0755 and the ledger
0644: any local account could read every tenant's CDRs.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.cli.main import _private_data_dir
from gateway.redis.server import RedisServer, free_port, private_secret

TOKEN = "cg_" + secrets.token_urlsafe(32)
STARTUP_DEADLINE_S = 30.0


def tcp_listening_inodes() -> set[str]:
    """Socket inodes of every TCP socket in LISTEN state (IPv4 and IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A":  # TCP_LISTEN
                    inodes.add(cols[9])
    return inodes


def tcp_ports_of(pid: int) -> set[str]:
    """The listening TCP sockets (inodes) process ``pid`` holds."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[len("socket:["):-1])
    return held & tcp_listening_inodes()


def loose_modes(root: Path) -> list[str]:
    """Every path under root (root included) that another user could read or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            found.append(f"{stat.filemode(mode)} {path.relative_to(root.parent)}")
    return found


def request(base: str, method: str, path: str, body: bytes | None = None) -> int:
    req = urllib.request.Request(f"{base}{path}", data=body, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def wait_until(what: str, check: object, deadline_s: float = STARTUP_DEADLINE_S) -> None:
    assert callable(check)
    end = time.monotonic() + deadline_s
    while not check():
        assert time.monotonic() < end, f"not before the deadline: {what}"
        time.sleep(0.1)


def ledger_tenants(path: Path) -> set[str]:
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return {row[0] for row in db.execute("SELECT tenant FROM tenants")}
    except sqlite3.OperationalError:  # not created yet
        return set()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every local user may enter (0755), as /srv or /var/lib are: only the
    modes serve gives its own data directory then keep other users out. (pytest's tmp_path
    sits in a 0700 directory, which would keep them out by itself.)"""
    path = Path(tempfile.mkdtemp(prefix="cg-private-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(tmp_path: Path, shared_dir: Path
          ) -> Iterator[tuple[subprocess.Popen[bytes], str, Path, Path]]:
    """``callgate serve --workers 2`` with no CALLGATE_REDIS_URL: the embedded Redis."""
    port = free_port()
    data = shared_dir / "var"
    stderr = tmp_path / "serve.stderr"
    env = {**os.environ, "CALLGATE_DATA_DIR": str(data), "CALLGATE_OPERATOR_TOKEN": TOKEN,
           "CALLGATE_LOG_LEVEL": "INFO"}
    for k in ("PROMETHEUS_MULTIPROC_DIR", "CALLGATE_REDIS_URL", "CALLGATE_DATABASE_URL",
              "CALLGATE_LOG_FORMAT"):
        env.pop(k, None)
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--workers", "2",
                                 "--port", str(port)], env=env, stderr=err,
                                stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until("serve ready", lambda: proc.poll() is not None
                   or request(base, "GET", "/readyz") == 200)
        assert proc.poll() is None, stderr.read_text()
        yield proc, base, data, stderr
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_embedded_redis_is_private_and_serve_still_works(
    serve: tuple[subprocess.Popen[bytes], str, Path, Path]
) -> None:
    proc, base, data, stderr = serve
    sock = data / "redis" / "redis.sock"
    password = (data / "redis" / "requirepass").read_text(encoding="ascii").strip()
    assert len(password) == 64  # 32 random bytes, hex

    # The workers reach it (with the password): a tenant is created, and the persist
    # child too: the tenant reaches the ledger.
    assert request(base, "PUT", "/v1/tenants/p1", b'{"name": "p1"}') == 201
    wait_until("p1 in the ledger", lambda: "p1" in ledger_tenants(data / "ledger.db"))

    # No client gets in without the password, and there is no TCP port to try.
    with redis.Redis(unix_socket_path=str(sock)) as anonymous, \
            pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with redis.Redis(unix_socket_path=str(sock), password=password) as client:
        assert client.config_get("port") == {"port": "0"}
        redis_pid = int(client.info("server")["process_id"])
    assert tcp_ports_of(redis_pid) == set()

    # Owner-only, all of it: directories 0700, files 0600, the socket 0700.
    assert loose_modes(data) == []
    for name in ("ledger.db", "redis/requirepass", "redis/redis.conf", "redis/redis.log"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(data.stat().st_mode) == 0o700

    # Killed, the supervisor restarts it with the same password: workers and the persist
    # child carry on.
    os.kill(redis_pid, signal.SIGKILL)
    wait_until("a tenant created after the restart",
               lambda: request(base, "PUT", "/v1/tenants/p2", b'{"name": "p2"}') in (200, 201))
    wait_until("p2 in the ledger", lambda: "p2" in ledger_tenants(data / "ledger.db"))
    with redis.Redis(unix_socket_path=str(sock), password=password) as client:
        assert int(client.info("server")["process_id"]) != redis_pid

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    log = stderr.read_text()
    assert "unix socket only, password required" in log
    assert password not in log
    assert loose_modes(data) == []


# Run as another local user: what it can open of a data directory.
_AS_OTHER_USER = """
import json, os, socket, sys
data = sys.argv[1]
out = {}
for name in sys.argv[2:]:
    path = os.path.join(data, name)
    try:
        if name.endswith(".sock"):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
        elif os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        out[name] = "opened"
    except PermissionError:
        out[name] = "denied"
print(json.dumps(out))
"""
NOBODY = 65534


def as_nobody(data: Path, names: list[str]) -> dict[str, str]:
    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    proc = subprocess.run(["/usr/bin/python3", "-c", _AS_OTHER_USER, str(data), *names],
                          capture_output=True, text=True, timeout=30, preexec_fn=drop,
                          cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout)
    return result


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
                    reason="acting as another local user needs root (setuid to nobody)")
def test_another_local_user_can_open_nothing(
    serve: tuple[subprocess.Popen[bytes], str, Path, Path]
) -> None:
    """The issue's attack, as an unprivileged account: no TCP port to reach Redis on, and
    neither the socket nor the ledger, the password or the AOF can be opened."""
    _, base, data, _ = serve
    assert request(base, "PUT", "/v1/tenants/o1", b'{"name": "o1"}') == 201
    wait_until("o1 in the ledger", lambda: "o1" in ledger_tenants(data / "ledger.db"))
    (data.parent / "public.txt").write_text("a control: readable by all\n")
    (data.parent / "public.txt").chmod(0o644)
    names = ["", "ledger.db", "ledger.db-wal", "redis", "redis/requirepass", "redis/redis.conf",
             "redis/redis.sock", "redis/appendonlydir", "metrics"]
    assert as_nobody(data.parent, ["public.txt"]) == {"public.txt": "opened"}
    assert as_nobody(data, names) == dict.fromkeys(names, "denied")


def test_the_password_is_made_once_and_kept_0600(tmp_path: Path) -> None:
    path = tmp_path / "redis" / "requirepass"
    first = private_secret(path)
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert private_secret(path) == first  # a restart keeps it
    path.chmod(0o644)
    assert private_secret(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # loosened by hand: tightened
    assert [p.name for p in path.parent.iterdir()] == ["requirepass"]  # no temp file left


def test_a_unix_only_server_with_a_password(tmp_path: Path) -> None:
    password = "pw-" + secrets.token_hex(8)
    server = RedisServer(tmp_path / "r", unix_only=True, password=password, name="private")
    assert server.port == 0
    assert server.url == f"unix://:{password}@{server.unixsocket}"
    with server:
        assert password not in repr(server)
        with redis.Redis.from_url(server.url) as client:  # the URL carries the password
            assert client.ping()
            assert tcp_ports_of(int(client.info("server")["process_id"])) == set()
        with redis.Redis(unix_socket_path=str(server.unixsocket)) as anonymous, \
                pytest.raises(redis.AuthenticationError):
            anonymous.get("x")
        assert loose_modes(tmp_path / "r") == []
    assert password not in server.log_path.read_text()


def test_a_unix_only_server_needs_a_short_enough_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too long for a unix socket"):
        RedisServer(tmp_path / ("d" * 120), unix_only=True)


def test_a_looser_data_dir_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="callgate"):
        _private_data_dir(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert [r.getMessage() for r in caplog.records] == [f"data directory {data} was mode 755: "
                                                        "made 0700"]
    fresh = tmp_path / "a" / "b"
    _private_data_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
