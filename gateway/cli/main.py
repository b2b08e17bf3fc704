"""The ``callgate`` command: ``serve`` and the operator's tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from gateway.cli.common import install_uvloop, settings_with_redis
from gateway.cli.notify import notify_supervisor
from gateway.cli.supervisor import PersistSupervisor, Supervisors, persist_enabled, persist_env
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.redis.server import die_with_parent_hook
from gateway.vocab import Role

if TYPE_CHECKING:
    from gateway.redis.store import Store

log = logging.getLogger("callgate")
T = TypeVar("T")

SHUTDOWN_TIMEOUT_SECONDS = 10.0
GC_GEN0_THRESHOLD = 20_000  # allocations between young collections (CPython default: 700)
# Private by default: everything callgate and its children create (data directory, ledger
# and its -wal/-shm, metrics files, the embedded Redis's files, token files) is the owner's
# only. Set by main() for every command (`persist` alone writes the ledger too).
PRIVATE_UMASK = 0o077
DATA_DIR_MODE = 0o700
REDIS_PROBE_TIMEOUT_SECONDS = 2.0


async def _serve_async(settings: Settings, reuse_port: bool, ready: str | None = None,
                       persister: PersistSupervisor | Supervisors | None = None) -> None:
    """One HTTP worker: call control only. With ``persister`` (one worker: this is the
    main process) the persist child is started once signals are handled here, and stopped
    after the in-flight requests are done."""
    from gateway.http.app import create_app
    from gateway.http.fastpath import CallgateRunner

    app = create_app(settings)
    runner = CallgateRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS)
    await runner.setup()
    _tune_gc()
    site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_port=reuse_port,
                       backlog=1024)
    await site.start()
    if ready:
        print(ready, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        stop.set()
        if persister is not None:
            persister.no_restart()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if persister is not None:
        persister.start()
    try:
        await stop.wait()
        # Graceful: stop accepting, let in-flight requests finish, then close Redis.
        await runner.cleanup()
    finally:
        if persister is not None:  # its wait would block the loop: in a thread
            await asyncio.to_thread(persister.stop)


def _tune_gc() -> None:
    """The cyclic GC rescanned the start-up heap (number metadata, rate decks,
    configuration) at every older-generation pass (measured in BENCHMARKS.md).
    Freeze it (never scanned again) and collect the young generation less often; request
    garbage is acyclic and freed by reference counting anyway."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def _worker(settings: Settings, reuse_port: bool) -> None:
    install_uvloop()
    asyncio.run(_serve_async(settings, reuse_port))


class _RedisSupervisor:
    """Runs the embedded redis-server (AOF on) and restarts it if it dies.

    Private: it listens on its unix socket only (no TCP port; the socket and its directory
    are 0700) and requires a password, generated on the first start and kept in
    ``redis/requirepass`` (0600) of the data directory. The URL returned by start() carries
    it to the workers and the persist child (through their environment, never a command
    line); it is never logged."""

    def __init__(self, data_dir: Path) -> None:
        from gateway.redis.server import RedisServer, private_secret

        redis_dir = data_dir / "redis"
        try:
            self.server = RedisServer(redis_dir, appendonly=True, appendfsync="everysec",
                                      name="callgate-redis", unix_only=True,
                                      password=private_secret(redis_dir / "requirepass"))
        except ValueError as exc:  # the socket's path would be too long
            raise ConfigError("CALLGATE_DATA_DIR", str(exc)) from None
        self._stop = threading.Event()

    def start(self) -> str:
        self.server.start()
        threading.Thread(target=self._watch, name="redis-supervisor", daemon=True).start()
        return self.server.url

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            if not self.server.is_running():
                log.error("embedded redis-server died; restarting it (AOF replays)")
                try:
                    self.server.restart()
                except Exception:  # keep supervising: the next tick tries again
                    log.exception("restarting redis-server failed")

    def stop(self) -> None:
        self._stop.set()
        self.server.stop()


async def _create_demo(settings: Settings) -> None:
    from gateway.cli.demo import create_demo_tenant

    await create_demo_tenant(settings)


def _metrics_dir(settings: Settings) -> None:
    """Point prometheus-client at a fresh multi-process directory before any worker creates
    a metric: samples of all workers (and of dead ones, for counters) add up at /metrics.
    A PROMETHEUS_MULTIPROC_DIR given by the environment is used as is."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    if "prometheus_client" in sys.modules:  # would be too late: values are already in-process
        log.warning("prometheus_client imported before serve: /metrics shows one worker")
    path = settings.data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path.resolve())


def _private_data_dir(path: Path) -> None:
    """Create the data directory 0700; one made before with looser permissions (0755 by
    earlier versions) is tightened: nothing inside is any other user's business."""
    path.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        try:
            os.chmod(path, DATA_DIR_MODE)
        except OSError as exc:
            log.warning("data directory %s is mode %o and cannot be made 0700: %s", path,
                        mode, exc.strerror)
        else:
            log.warning("data directory %s was mode %o: made 0700", path, mode)


def redis_accepts_anonymous(url: str, timeout_s: float = REDIS_PROBE_TIMEOUT_SECONDS
                            ) -> bool | None:
    """Whether the Redis of ``url`` answers a PING on a fresh connection that sent no AUTH
    (no password, no ACL user required); None when it cannot be reached now. For a
    cluster, its first seed node answers for all."""
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from gateway.redis.client import parse_url

    _, addresses = parse_url(url)
    address = addresses[0]
    client = redis_py.Redis(host=address.host, port=address.port,
                            unix_socket_path=address.unix_path,
                            socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                            retry=Retry(NoBackoff(), 0))  # one try: start-up must not wait
    try:
        return bool(client.ping())
    except redis_py.AuthenticationError:
        return False
    except redis_py.ResponseError as exc:  # NOAUTH / NOPERM: credentials required
        return False if str(exc).startswith(("NOAUTH", "NOPERM")) else None
    except (redis_py.ConnectionError, redis_py.TimeoutError, OSError):
        return None
    finally:
        client.close()


def _warn_if_open_redis(url: str) -> None:
    """One warning line when the Redis given to serve takes clients without credentials:
    anyone who reaches it can then change any balance. Names the server, never the URL
    (it may carry a password)."""
    from gateway.redis.client import parse_url

    if redis_accepts_anonymous(url):
        log.warning("Redis at %s accepts connections without a password or ACL user: set "
                    "one (requirepass, or an ACL user) and give it in CALLGATE_REDIS_URL",
                    parse_url(url)[1][0])


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings()  # main() has set PRIVATE_UMASK: workers and children inherit it
    if args.workers is not None:
        settings = replace(settings, workers=args.workers)
    if args.port is not None:
        settings = replace(settings, http_port=args.port)
    _private_data_dir(settings.data_dir)
    _metrics_dir(settings)
    supervisor: _RedisSupervisor | None = None
    if settings.redis_url:
        _warn_if_open_redis(settings.redis_url)
    else:
        supervisor = _RedisSupervisor(settings.data_dir)
        settings = replace(settings, redis_url=supervisor.start())
        log.info("embedded redis-server running (AOF on, unix socket only, password "
                 "required) in %s", settings.data_dir / "redis")
    try:
        if args.demo:
            install_uvloop()
            asyncio.run(_create_demo(settings))
        return _run_workers(settings)
    finally:
        if supervisor is not None:
            supervisor.stop()


def _run_workers(settings: Settings) -> int:
    workers = max(1, settings.workers)
    banner = f"callgate listening on http://{settings.http_host}:{settings.http_port} " \
             f"({workers} worker{'s' if workers > 1 else ''})"
    persister: PersistSupervisor | Supervisors | None = Supervisors(
        PersistSupervisor(persist_env(settings)) if persist_enabled() else None,
        notify_supervisor(settings))
    if workers == 1:
        install_uvloop()
        asyncio.run(_serve_async(settings, reuse_port=False, ready=banner, persister=persister))
        return 0
    children: list[int] = []
    # Each worker gets SIGTERM when serve dies, even by SIGKILL: an orphan would keep
    # serving on the shared port (SO_REUSEPORT) beside the next serve's workers.
    on_parent_death = die_with_parent_hook()
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # child: one event loop on the shared port (SO_REUSEPORT)
            # Stopped while still starting (its loop not yet handling signals): it has
            # served nothing, so it just exits, and with 0: serve was asked to stop.
            signal.signal(signal.SIGTERM, _exit_while_starting)
            if on_parent_death is not None:
                on_parent_death()
            code = 0
            try:
                _worker(settings, reuse_port=True)
            except BaseException:
                log.exception("worker failed")
                code = 1
            os._exit(code)
        children.append(pid)
    print(banner, flush=True)
    return _wait_children(children, persister)


def _exit_while_starting(_signum: int, _frame: object) -> None:
    os._exit(0)


def _wait_children(children: list[int],
                   persister: PersistSupervisor | Supervisors | None) -> int:
    """Wait for the HTTP workers (SIGTERM/SIGINT forwarded to them), then stop the persist
    child: it keeps persisting while the workers finish their in-flight requests."""
    def forward(signum: int, _frame: object) -> None:
        if persister is not None:
            persister.no_restart()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if persister is not None:
        persister.start()
    try:
        return _reap_workers(children)
    finally:
        if persister is not None:
            persister.stop()


def _reap_workers(children: list[int]) -> int:
    status = 0
    for pid in children:
        while True:
            try:
                _, code = os.waitpid(pid, 0)
                status = status or os.waitstatus_to_exitcode(code)
                _worker_exited(pid)
                break
            except ChildProcessError:
                break
            except InterruptedError:
                continue
    return status


def token_entry_toml(token_id: str, role: str, tenants: Sequence[str], digest: str) -> str:
    """The ``[[tokens]]`` table of one token, as the configuration file holds it."""
    listed = ", ".join(f'"{t}"' for t in tenants)
    return (f'[[tokens]]\nid = "{token_id}"\nrole = "{role}"\ntenants = [{listed}]\n'
            f'sha256 = "{digest}"\n')


def _token_args_error(args: argparse.Namespace) -> str | None:
    from gateway.validate import ID_HINT, ID_RE

    for name in [args.id or "", *args.tenant]:
        if name and ID_RE.fullmatch(name) is None:
            return f"{name!r}: an id {ID_HINT}"
    if args.role == Role.OPERATOR and args.tenant:
        return "an operator token acts for every tenant: give no --tenant"
    if args.role != Role.OPERATOR and not args.tenant:
        return f"a {args.role} token needs at least one --tenant it may act for"
    return None


def _append_entry(config: Path, entry: str) -> None:
    """Append `entry` to `config` only if the result is a valid configuration."""
    old = config.read_text(encoding="utf-8")
    new = old + ("" if not old or old.endswith("\n") else "\n") + "\n" + entry
    tmp = config.with_name(f".{config.name}.{os.getpid()}.tmp")
    tmp.write_text(new, encoding="utf-8")
    try:
        load_settings(env={}, path=tmp)  # e.g. a duplicate id: refused, file untouched
        os.chmod(tmp, config.stat().st_mode & 0o7777)
        os.replace(tmp, config)
    finally:
        tmp.unlink(missing_ok=True)


def _worker_exited(pid: int) -> None:
    from gateway.metrics import worker_exited

    worker_exited(pid)


def cmd_token_create(args: argparse.Namespace) -> int:
    """Mint a token. By default it is stored in Redis (its SHA-256 only) and usable on every
    worker within a second; the create answer, with the token, goes to stdout once.

    With --write CONFIG or --config-entry (or when no Redis is configured) it becomes a
    bootstrap token of the configuration file instead: its entry (SHA-256, role, tenants) is
    appended to CONFIG, or else printed to stdout after it for the operator to paste (token
    on stderr then, so that a redirection of stdout captures only the entry)."""
    from gateway.http.auth import token_sha256

    to_config = bool(args.write or args.config_entry)
    if not to_config:
        settings = load_settings()
        if settings.redis_url:
            return _token_create_redis(args, settings)
        print("callgate token create: no Redis configured (CALLGATE_REDIS_URL): making a "
              "configuration entry instead", file=sys.stderr)
    problem = _token_args_error(args)
    if not problem and (args.description or args.expires_at):
        problem = "--description and --expires-at are for tokens in Redis, not the file's"
    if problem:
        print(f"callgate token create: {problem}", file=sys.stderr)
        return 2
    token = "cg_" + secrets.token_urlsafe(32)
    token_id = args.id or f"{args.role}-{secrets.token_hex(4)}"
    entry = token_entry_toml(token_id, args.role, args.tenant, token_sha256(token))
    if args.write:
        _append_entry(Path(args.write), entry)
        print(f"# token {token_id!r} added to {args.write}; restart callgate to use it",
              file=sys.stderr)
        print(token)
        return 0
    print(f"token (shown once, store it now): {token}", file=sys.stderr)
    print("# add to the configuration file (tokens are kept as SHA-256 only):")
    print(entry, end="")
    return 0


def _token_store(settings: Settings) -> Store:
    from gateway.redis.store import Store

    assert settings.redis_url
    return Store.from_url(settings.redis_url, settings.partitions)


def _token_create_redis(args: argparse.Namespace, settings: Settings) -> int:
    """The same as POST /v1/tokens: the answer (with the token, shown once) on stdout."""
    import time

    import orjson

    from gateway.errors import ValidationError
    from gateway.http.tokens import create_token, parse_token_spec

    if args.id:
        print("callgate token create: --id: tokens in Redis get an id of their own (tok_…); "
              "describe the token with --description", file=sys.stderr)
        return 2
    body: dict[str, object] = {"role": args.role, "tenants": args.tenant or None,
                               "description": args.description, "expires_at": args.expires_at}
    now = int(time.time())
    try:
        spec = parse_token_spec(body, now)
    except ValidationError as exc:
        for e in exc.errors:
            print(f"callgate token create: {_option_of(e.field)}: {e.message}", file=sys.stderr)
        return 2

    async def create() -> dict[str, object]:
        # (Store.fcall loads the function library into a Redis no gateway has used yet.)
        record, secret = await create_token(store, spec, now, "cli")
        return record.created(secret)

    store = _token_store(settings)
    answer = _run_closing(store, create())
    print(orjson.dumps(answer).decode())
    return 0


def _option_of(field: str) -> str:
    name = field.split("[", 1)[0]
    return {"tenants": "--tenant", "expires_at": "--expires-at"}.get(name, f"--{name}")


def _run_closing(store: Store, coro: Coroutine[Any, Any, T]) -> T:
    async def run() -> T:
        try:
            return await coro
        finally:
            await store.close()

    install_uvloop()
    return asyncio.run(run())


def _token_settings() -> Settings:
    return settings_with_redis()


def cmd_token_list(args: argparse.Namespace) -> int:
    """The same as GET /v1/tokens (never a secret), optionally only those acting for one
    tenant."""
    import orjson

    from gateway.http.tokens import list_tokens

    store = _token_store(_token_settings())
    tokens = _run_closing(store, list_tokens(store))
    if args.tenant:
        tokens = [t for t in tokens if args.tenant in t["tenants"]]
    print(orjson.dumps({"tokens": tokens}, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """The same as DELETE /v1/tokens/{token_id}: 0 revoked, 1 no such token."""
    from gateway.http.tokens import revoke_token

    store = _token_store(_token_settings())

    if not _run_closing(store, revoke_token(store, args.token_id, actor="cli")):
        print(f"callgate token revoke: no token {args.token_id!r}", file=sys.stderr)
        return 1
    print(f"token {args.token_id} revoked: it answers 401 on every worker within 1 s",
          file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="callgate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTP gateway")
    s.add_argument("--workers", type=int, help="HTTP worker processes (CALLGATE_WORKERS)")
    s.add_argument("--port", type=int, help="HTTP port (CALLGATE_HTTP_PORT)")
    s.add_argument("--demo", action="store_true",
                   help="create the demo tenant of the configuration and print curl examples")
    s.set_defaults(func=cmd_serve)
    t = sub.add_parser("token", help="API tokens")
    tsub = t.add_subparsers(dest="token_command", required=True)
    tc = tsub.add_parser("create", help="mint a token, stored in Redis (or, with --write or "
                                        "--config-entry, a configuration file entry)")
    tc.add_argument("--role", choices=[r.value for r in Role], required=True)
    tc.add_argument("--tenant", action="append", default=[], help="tenant it acts for")
    tc.add_argument("--description", help="what the token is for (Redis tokens)")
    tc.add_argument("--expires-at", metavar="RFC3339",
                    help="when it stops working, e.g. 2027-01-31T00:00:00Z (Redis tokens)")
    tc.add_argument("--id", help="token id shown in audit records (configuration entries)")
    tc.add_argument("--write", metavar="CONFIG",
                    help="append the entry to this configuration file (validated first) and "
                         "print only the token")
    tc.add_argument("--config-entry", action="store_true",
                    help="print a configuration file entry instead of storing in Redis")
    tc.set_defaults(func=cmd_token_create)
    tl = tsub.add_parser("list", help="the tokens in Redis, without their secrets")
    tl.add_argument("--tenant", help="only the tokens acting for this tenant")
    tl.set_defaults(func=cmd_token_list)
    tr = tsub.add_parser("revoke", help="revoke a token in Redis (401 everywhere within 1 s)")
    tr.add_argument("token_id", help="its id, tok_…")
    tr.set_defaults(func=cmd_token_revoke)
    from gateway.cli import notify as cli_notify
    from gateway.cli import persist as cli_persist

    cli_persist.register(sub)
    cli_notify.register(sub)
    return p


def setup_logging(env: Mapping[str, str] = os.environ) -> None:
    """Logs go to stderr as text, or with CALLGATE_LOG_FORMAT=json as one JSON object a
    line (gateway.logjson). Set up before serve forks: workers inherit it, and the persist
    child reads the same variables."""
    from gateway.logjson import LOG_FORMATS, handler_for

    log_format = env.get("CALLGATE_LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in LOG_FORMATS:
        raise ConfigError("CALLGATE_LOG_FORMAT", f"must be one of {', '.join(LOG_FORMATS)}")
    logging.basicConfig(level=env.get("CALLGATE_LOG_LEVEL", "INFO"),
                        handlers=[handler_for(log_format)])


def main(argv: Sequence[str] | None = None) -> int:
    try:
        setup_logging()
    except ConfigError as exc:
        print(f"callgate: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    umask = os.umask(PRIVATE_UMASK)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"callgate: {exc}", file=sys.stderr)
        return 2
    finally:
        os.umask(umask)  # for a caller in the same process (tests)


if __name__ == "__main__":
    sys.exit(main())
