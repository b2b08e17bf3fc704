"""Start and supervise local ``redis-server`` processes.

Used by ``callgate serve`` when no Redis URL is configured (one embedded server with AOF
in the data directory), by the test-suite fixtures (a session-scoped server, and the nodes
of the test cluster in tests/support/cluster.py) and by crash tests (``kill`` + ``restart``
replays the AOF).

Invariants:

* Every server binds 127.0.0.1 only, on a port chosen here (never a standard port), and
  keeps everything it writes — config, AOF, log, unix socket, ``nodes.conf`` — in its
  own data directory (0700), its files 0600 (the child runs with umask 077).
* A private server (``unix_only=True``, ``callgate serve``'s embedded one) listens on its
  unix socket alone (``port 0``: no TCP port at all), and with a ``password`` it refuses
  every client that has not sent AUTH. The password sits in ``redis.conf`` (0600), never
  on a command line, and only :attr:`RedisServer.url` carries it: never log that URL.
* A server is "ready" only when it answers PING *and* reports our child's pid: a port
  taken by someone else between :func:`free_port` and the bind can never be mistaken
  for ours.
* A torn AOF tail (a crash in the middle of a write) is cut before the transaction it
  tears, never inside it: servers run with ``aof-load-truncated no`` and a start that
  finds one runs ``redis-check-aof --fix`` and starts again (:meth:`RedisServer.repair_aof`).
* Children do not outlive the parent: on Linux the kernel sends them SIGTERM when the
  parent dies (``PR_SET_PDEATHSIG``, also after SIGKILL), and an ``atexit`` hook stops
  whatever is still running at a normal interpreter exit. Each child runs in its own
  process group so that a terminal Ctrl-C reaches the parent only; the parent then
  stops Redis last, after whatever still needs it has drained.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "REDIS_VERSION_MIN",
    "RedisServer",
    "find_redis_check_aof",
    "find_redis_cli",
    "find_redis_server",
    "free_port",
    "private_secret",
]

log = logging.getLogger(__name__)

# 7.0: Redis Functions, `cluster-port` (an explicit cluster bus port, see RedisServer).
REDIS_VERSION_MIN = (7, 0)

_INSTALL_HINT = (
    "install Redis >= 7.0: `apt-get install -y redis-server` on Debian/Ubuntu "
    "(or `make redis`), `brew install redis` on macOS, or put redis-server on PATH"
)
# Searched after PATH, for environments (cron, systemd units) that start with a bare PATH.
_FALLBACK_BIN_DIRS = ("/usr/local/bin", "/usr/bin", "/usr/sbin")
# sun_path is 108 bytes on Linux, including the terminating NUL.
_UNIX_SOCKET_PATH_MAX_BYTES = 107
_LOG_TAIL_LINES = 30
_POLL_INTERVAL_MIN_SECONDS = 0.005
_POLL_INTERVAL_MAX_SECONDS = 0.1
_PROBE_TIMEOUT_SECONDS = 0.5
_BIND_ATTEMPTS_MAX = 3
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_APPENDFSYNC_VALUES = ("always", "everysec", "no")
# Redis's defaults for where the AOF lives in its `dir` (appenddirname, appendfilename).
_AOF_MANIFEST = Path("appendonlydir") / "appendonly.aof.manifest"
# What Redis logs when, with `aof-load-truncated no`, its AOF ends short.
_AOF_SHORT_MARK = "Unexpected end of file reading the append only file"
# Redis children create their files (AOF, log, socket) readable by their owner only.
_CHILD_UMASK = 0o077
_PRIVATE_FILE_MODE = 0o600
_PRIVATE_DIR_MODE = 0o700


def _find_executable(name: str) -> str | None:
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *_FALLBACK_BIN_DIRS])
    return shutil.which(name, path=search_path)


@functools.lru_cache(maxsize=8)
def _redis_server_version(path: str) -> tuple[int, int, int]:
    output = subprocess.run(
        [path, "--version"], capture_output=True, text=True, timeout=10.0, check=True
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", output)
    if match is None:
        raise RuntimeError(f"cannot parse the version of {path}: {output.strip()!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` >= 7.0.

    Raises:
        RuntimeError: with an install hint when it is missing or too old.
    """
    path = _find_executable("redis-server")
    if path is None:
        raise RuntimeError(f"redis-server not found: {_INSTALL_HINT}")
    version = _redis_server_version(path)
    if version[:2] < REDIS_VERSION_MIN:
        found = ".".join(map(str, version))
        raise RuntimeError(f"{path} is Redis {found}, callgate needs >= 7.0: {_INSTALL_HINT}")
    return path


def _find_redis_tool(name: str, package: str) -> str:
    """The path of Redis tool ``name``, preferring the one next to ``redis-server`` (the
    same version); RuntimeError naming the Debian ``package`` when it is missing."""
    sibling = Path(find_redis_server()).with_name(name)
    if os.access(sibling, os.X_OK):
        return str(sibling)
    path = _find_executable(name)
    if path is None:
        raise RuntimeError(f"{name} not found (package {package}): {_INSTALL_HINT}")
    return path


def find_redis_check_aof() -> str:
    """Return the path of ``redis-check-aof`` (RuntimeError with an install hint)."""
    return _find_redis_tool("redis-check-aof", "redis-server")


def find_redis_cli() -> str:
    """Return the path of ``redis-cli`` (RuntimeError with an install hint)."""
    return _find_redis_tool("redis-cli", "redis-tools")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice).

    Racy by nature: the caller must bind it soon and cope with losing it
    (:meth:`RedisServer.start` retries with another port when the port was its own pick).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies (also when
    called first thing in a child of ``os.fork``, the hook made in the parent before).

    Caveat (from prctl(2)): the signal fires when the *thread* that forked the child
    exits, so start servers from a long-lived thread (the main thread, typically).
    Returns None where ``prctl`` does not exist; ``atexit`` is then the only safety net.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()
    death_signal = int(signal.SIGTERM)

    def hook() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def embedded_url(data_dir: Path) -> str | None:
    """The URL of the Redis ``callgate serve`` embeds in ``data_dir`` (its unix socket and
    the password it keeps there), for the command-line tools run beside it; None when that
    data directory has none. It carries the password: never log it."""
    redis_dir = data_dir / "redis"
    sock, secret = redis_dir / "redis.sock", redis_dir / "requirepass"
    try:
        password = secret.read_text(encoding="ascii").strip()
    except OSError:  # none, or not ours to read
        return None
    if not password or not sock.exists():
        return None
    return f"unix://:{quote(password, safe='')}@{sock}"


def private_secret(path: Path, nbytes: int = 32) -> str:
    """The secret kept in ``path``: read if the file holds one, else ``nbytes`` random bytes
    as hex, written once (mode 0600, atomically: a crash leaves no half-written secret).

    Used for the embedded Redis's ``requirepass``: generated on the first start, the same
    on every restart, so that AOF, clients and restarted children agree on it.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = ""
    if text:
        if path.stat().st_mode & 0o077:  # loosened by hand: tighten again
            os.chmod(path, _PRIVATE_FILE_MODE)
        return text
    path.parent.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    secret = secrets.token_hex(nbytes)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secret + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return secret


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by the owner only (also a file that was not)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), _PRIVATE_FILE_MODE)
        file.write(text)


def _conf_quote(value: str | Path) -> str:
    """Quote a value for redis.conf (a double-quoted string with C-like escapes)."""
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _read_tail(path: Path, offset: int, lines_max: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-lines_max:])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _as_dict(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise TypeError(f"expected a dict reply from redis-py, got {type(reply).__name__}")
    return reply


def _probe_client(port: int, unix_socket: Path | None = None,
                  password: str | None = None) -> redis.Redis:
    """A client that fails fast: the caller polls, so redis-py must not retry or back off
    (its default retries connection errors with a backoff of seconds). Over the unix
    socket when one is given (a server with no TCP port)."""
    if unix_socket is not None:
        return redis.Redis(
            unix_socket_path=str(unix_socket),
            password=password,
            socket_connect_timeout=_PROBE_TIMEOUT_SECONDS,
            socket_timeout=_PROBE_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_connect_timeout=_PROBE_TIMEOUT_SECONDS,
        socket_timeout=_PROBE_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )


# Servers started and not yet stopped by this process; stopped at interpreter exit.
_live_servers: set[RedisServer] = set()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        try:
            server.stop(timeout_s=5.0)
        except Exception:  # exit must go on; the death signal is the last resort
            log.exception("could not stop %r at exit", server)


class RedisStartError(RuntimeError):
    """redis-server did not become ready; the message ends with its log tail."""

    def __init__(self, message: str, log_tail: str) -> None:
        self.log_tail = log_tail
        tail = log_tail or "(log is empty)"
        super().__init__(f"{message}\n--- redis-server log tail ---\n{tail}")


REDIS_HZ = 2  # server cron frequency (Redis's default: 10)


class RedisServer:
    """One ``redis-server`` child process bound to 127.0.0.1, its files in ``data_dir``.

    The config is written to ``data_dir/redis.conf`` at each start; ``extra_args``
    (e.g. ``["--maxmemory", "64mb"]``) are passed on the command line and override it.
    With ``cluster=True`` the node is cluster-enabled with its own ``nodes.conf`` and an
    explicit cluster bus port (``cluster-port``): the default bus port, port + 10000,
    would overflow 65535 for ports from the kernel's ephemeral range.

    ``unix_only=True``: no TCP port (``port 0``), the unix socket only (ValueError when the
    data directory's path is too long for one). ``password``: the ``requirepass`` every
    client must AUTH with; :attr:`url` carries it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
        cluster: bool = False,
        name: str = "redis",
        cluster_port: int | None = None,
        die_with_parent: bool = True,
        unix_only: bool = False,
        password: str | None = None,
    ) -> None:
        if appendfsync not in _APPENDFSYNC_VALUES:
            raise ValueError(f"appendfsync must be one of {_APPENDFSYNC_VALUES}: {appendfsync!r}")
        if isinstance(extra_args, str):
            raise TypeError("extra_args must be a sequence of arguments, not one string")
        self.data_dir = Path(data_dir).resolve()
        self.name = name
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)
        self.cluster = cluster
        self.die_with_parent = die_with_parent
        self.unix_only = unix_only
        self._password = password
        if unix_only and (cluster or port):
            raise ValueError("a unix-only server has no TCP port and cannot be a cluster node")
        if unix_only and self.unixsocket is None:
            raise ValueError(f"{self.data_dir}: path too long for a unix socket "
                             f"({_UNIX_SOCKET_PATH_MAX_BYTES} bytes); use a shorter data "
                             "directory (CALLGATE_DATA_DIR)")
        # A port we picked may be swapped for another if it is lost before the bind; a
        # port given by the caller, or one a server already listened on, never is.
        self._port_pinned = port is not None or unix_only
        self._port = 0 if unix_only else port if port is not None else free_port()
        self._cluster_port_pinned = cluster_port is not None
        self._cluster_port: int | None = None
        if cluster:
            self._cluster_port = cluster_port if cluster_port is not None else free_port()
        self._process: subprocess.Popen[bytes] | None = None
        # Where this start's output begins in the (appended) log files, for error tails.
        self._log_offset = 0
        self._stdio_offset = 0

    def __repr__(self) -> str:  # never the password
        state = f"pid={self._process.pid}" if self.is_running() and self._process else "stopped"
        where = f"unix:{self.unixsocket}" if self.unix_only else f"127.0.0.1:{self._port}"
        return f"<RedisServer {self.name} {where} {state} dir={self.data_dir}>"

    @property
    def port(self) -> int:
        return self._port

    @property
    def cluster_port(self) -> int | None:
        """The cluster bus port, or None for a standalone server."""
        return self._cluster_port

    @property
    def url(self) -> str:
        """The URL clients connect with; it carries the password, if any: never log it."""
        auth = f":{quote(self._password, safe='')}@" if self._password else ""
        if self.unix_only:
            return f"unix://{auth}{self.unixsocket}"
        return f"redis://{auth}127.0.0.1:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "redis.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def unixsocket(self) -> Path | None:
        """The unix socket, or None when its path is too long for ``sun_path``."""
        path = self.data_dir / "redis.sock"
        if len(os.fsencode(path)) > _UNIX_SOCKET_PATH_MAX_BYTES:
            return None
        return path

    @property
    def _stdio_path(self) -> Path:
        # Errors from before the logfile is open (a bad config line) go to stdout/stderr.
        return self.data_dir / "redis.stdio.log"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and return once it answers PING (AOF loaded).

        Raises:
            RuntimeError: if it is already running.
            RedisStartError: if it exits or is not ready within ``timeout_s``; the
                process is killed and the message carries its log tail.
        """
        deadline = time.monotonic() + timeout_s
        attempts = 1 if self._port_pinned else _BIND_ATTEMPTS_MAX
        repaired = False
        attempt = 0
        while True:
            attempt += 1
            self._spawn()
            try:
                self._await_ready(deadline)
            except RedisStartError as error:
                if attempt < attempts and "already in use" in error.log_tail:
                    log.info("%s: port %d was taken, trying another", self.name, self._port)
                    self._port = free_port()
                    if self.cluster and not self._cluster_port_pinned:
                        self._cluster_port = free_port()
                    continue
                if not repaired and _AOF_SHORT_MARK in error.log_tail:
                    self.repair_aof()
                    repaired, attempt = True, 0
                    deadline = time.monotonic() + timeout_s  # the AOF is loaded again
                    continue
                raise
            self._port_pinned = self._cluster_port_pinned = True
            return

    def repair_aof(self) -> str:
        """Cut a torn tail off the AOF with ``redis-check-aof --fix``; returns its report.

        A crash in the middle of a write (kill -9 while write(2) copies, power loss) can
        leave the AOF's last command cut short. Redis's own remedy, ``aof-load-truncated
        yes``, is wrong when the cut falls inside the MULTI/EXEC that carries a function's
        writes (every FCALL of ours that writes twice): Redis 7.0 truncates after the last
        whole command, leaving MULTI and half of the function's writes in the file, without
        EXEC. The next restart then applies that half together with the next transaction,
        or, when none follows, reverts everything written after it, acknowledged writes
        included. ``redis-check-aof`` cuts before the MULTI, so servers started here run
        with ``aof-load-truncated no`` and are repaired by this before a second start.
        """
        manifest = self.data_dir / _AOF_MANIFEST
        result = subprocess.run(
            [find_redis_check_aof(), "--fix", str(manifest)], cwd=self.data_dir,
            input=b"y\n", capture_output=True, timeout=600, check=False,
        )
        report = result.stdout.decode("utf-8", "replace").strip()
        if result.returncode != 0:
            raise RedisStartError(f"{self.name}: redis-check-aof --fix failed "
                                  f"(exit {result.returncode})", report)
        summary = [line for line in report.splitlines() if "will shrink" in line]
        log.warning("%s: the AOF ended in a torn write; cut by redis-check-aof: %s", self.name,
                    "; ".join(summary) or report)
        return report

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the server and wait for it to exit; idempotent.

        On SIGTERM Redis flushes and fsyncs the AOF before exiting. If it is still
        running after ``timeout_s`` it is killed (and a warning logged).
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not exit %.1fs after SIGTERM, killing it", self, timeout_s)
                process.kill()
                process.wait()
        _live_servers.discard(self)

    def kill(self) -> None:
        """SIGKILL the server (a crash: no AOF flush beyond ``appendfsync``) and reap it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        _live_servers.discard(self)

    def restart(self, timeout_s: float = 10.0) -> None:
        """Stop if running, then start on the same port and data dir; the AOF replays."""
        self.stop(timeout_s)
        self.start(timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------

    def _config_lines(self) -> list[str]:
        lines = self._base_config_lines()
        if self._password is not None:
            lines.append(f"requirepass {_conf_quote(self._password)}")
        return lines

    def _base_config_lines(self) -> list[str]:
        lines = [
            f"# Written by gateway.redis.server for {self.name}; rewritten at every start.",
            "bind 127.0.0.1",
            f"port {self._port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {_conf_quote(self.data_dir)}",
            f"logfile {_conf_quote(self.log_path)}",
            # Durability comes from the AOF alone; no RDB snapshots.
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f"appendfsync {self.appendfsync}",
            # A torn AOF tail stops the start; start() cuts it correctly (repair_aof).
            "aof-load-truncated no",
            # Grants and balances must never be evicted: fail writes instead.
            "maxmemory-policy noeviction",
            # Background tasks (active expiry, cron) REDIS_HZ times a second rather than
            # Redis's default 10, for what an idle server costs (measured in docs/pace.md).
            # Expiry stays proportional to what expires; the clients' own blocking reads
            # and polls wake the event loop more often than this anyway.
            f"hz {REDIS_HZ}",
        ]
        unixsocket = self.unixsocket
        if unixsocket is not None:
            lines += [f"unixsocket {_conf_quote(unixsocket)}", "unixsocketperm 700"]
        if self.cluster:
            lines += [
                "cluster-enabled yes",
                'cluster-config-file "nodes.conf"',
                f"cluster-port {self._cluster_port}",
            ]
        return lines

    def _spawn(self) -> None:
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        executable = find_redis_server()
        self.data_dir.mkdir(mode=_PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        if self.data_dir.stat().st_mode & 0o077:  # made before, with looser permissions
            os.chmod(self.data_dir, _PRIVATE_DIR_MODE)
        # 0600: it may hold the requirepass.
        _write_private(self.conf_path, "\n".join(self._config_lines()) + "\n")
        self._log_offset = _file_size(self.log_path)
        self._stdio_offset = _file_size(self._stdio_path)
        preexec_fn = die_with_parent_hook() if self.die_with_parent else None
        stdio_fd = os.open(self._stdio_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                           _PRIVATE_FILE_MODE)
        with os.fdopen(stdio_fd, "ab") as stdio:
            self._process = subprocess.Popen(
                [executable, str(self.conf_path), *self.extra_args],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=subprocess.STDOUT,
                close_fds=True,
                process_group=0,
                preexec_fn=preexec_fn,
                umask=_CHILD_UMASK,
            )
        _live_servers.add(self)

    def _log_tail(self) -> str:
        parts = [
            _read_tail(self._stdio_path, self._stdio_offset),
            _read_tail(self.log_path, self._log_offset),
        ]
        return "\n".join(part for part in parts if part)

    def _fail(self, message: str) -> RedisStartError:
        self.kill()
        return RedisStartError(f"{self.name}: {message}", self._log_tail())

    def _await_ready(self, deadline: float) -> None:
        process = self._process
        assert process is not None, "_await_ready before _spawn"
        client = _probe_client(self._port, self.unixsocket if self.unix_only else None,
                               self._password)
        interval = _POLL_INTERVAL_MIN_SECONDS
        try:
            while True:
                returncode = process.poll()
                if returncode is not None:
                    raise self._fail(f"redis-server exited with code {returncode} during start")
                if self._probe(client, process.pid):
                    return
                if time.monotonic() >= deadline:
                    where = self.unixsocket if self.unix_only else f"127.0.0.1:{self._port}"
                    raise self._fail(f"not ready on {where} before the deadline")
                time.sleep(interval)
                interval = min(interval * 2, _POLL_INTERVAL_MAX_SECONDS)
        finally:
            client.close()

    def _probe(self, client: redis.Redis, pid: int) -> bool:
        """True when PING succeeds and the answering server is our child."""
        try:
            if not client.ping():
                return False
            server_pid = int(_as_dict(client.info("server"))["process_id"])
        except (redis.ConnectionError, redis.TimeoutError):  # includes BusyLoadingError
            return False
        # Another pid means someone else owns the port; our child will fail to bind and exit.
        return server_pid == pid
