"""The Redis side of callgate: the `callgate` function library and one typed call per operation.

Every call-control operation is exactly one FCALL (one round trip). Keys come from
gateway.redis.keys; arguments are strings and integers prepared here; the replies are turned
into small typed records. The library is (re)loaded on every primary at start-up and
transparently whenever a node answers that it does not know a function (a restarted or
newly promoted node without the library): callers never see that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from gateway import metrics
from gateway.config import Settings
from gateway.errors import (
    NewerLibrary,
    StoreDisconnected,
    StoreErrorReply,
    StoreTimeout,
    StoreUnavailable,
)
from gateway.redis import contract as c
from gateway.redis.client import (
    Arg,
    Backend,
    RedisUnavailable,
    ReplyError,
    backend_from_url,
    pack_command,
)
from gateway.redis.contract import Status as Status  # re-exported: callers catch StoreError.status
from gateway.redis.keys import TenantKeys, call_fields, tenant_keys

# lua/ at the top of the repository; gateway/lua links to it so that it also ships inside the
# package (wheels copy the files) and is found the same way installed or not.
LUA_DIR = Path(__file__).resolve().parent.parent / "lua"
LIBRARY_NAME = "callgate"

R = TypeVar("R", bound=tuple[Any, ...])


class StoreError(Exception):
    """A function answered a non-OK status; ``status`` says which, ``detail`` any payload."""

    def __init__(self, status: Status, detail: Sequence[Any] = ()) -> None:
        self.status = status
        self.detail = list(detail)
        super().__init__(f"{status.name} {self.detail}")

    @property
    def named(self) -> dict[str, Any]:
        """The payload by name (gateway.redis.contract.ERROR_DETAIL)."""
        return dict(zip(c.ERROR_DETAIL.get(self.status, ()), self.detail, strict=False))


# What the transport raises when Redis does not answer; every Store method turns it into
# StoreUnavailable (gateway.errors), so nothing above this module sees the client's own.
_TRANSPORT_ERRORS = (TimeoutError, RedisUnavailable, ReplyError, OSError)


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The StoreUnavailable for a failure of the transport, keeping what matters of it:
    whether the command may have run (a timeout with it written, a connection broken with
    it in flight) and the text of an error reply."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, TimeoutError):
        return StoreTimeout(str(exc) or "no reply within the deadline")
    if isinstance(exc, ReplyError):
        return StoreErrorReply(str(exc))
    if isinstance(exc, RedisUnavailable):
        return StoreDisconnected(str(exc), exc.sent)
    return StoreDisconnected(f"{type(exc).__name__}: {exc}")


def library_source(lua_dir: Path = LUA_DIR) -> str:
    """The library: every lua/*.lua file in name order (00_lib.lua carries the shebang)."""
    files = sorted(lua_dir.glob("*.lua"))
    if not files or not files[0].read_text().startswith("#!lua name=" + LIBRARY_NAME):
        raise RuntimeError(f"{lua_dir}: the first Lua file must declare the library")
    return "\n".join(f.read_text() for f in files)


HOT_KEYS_MAX_TENANTS = 100_000


class _HotKeys(NamedTuple):
    tenant: str
    users: str
    pools: str
    numbers: str
    tollfree: str
    user_active: str
    active: str  # of the tenant's partition
    events: str  # of the tenant's partition
    month_prefix: str  # + YYYYMM
    call_prefix: str  # + call id
    rate_prefix: str  # + second
    notify: str  # of the tenant's partition: alert crossings for the notifier


@dataclass(frozen=True, slots=True)
class TenantSettings:
    name: str
    currency: str
    timezone: str
    charge_inbound_calls: bool
    max_concurrent_calls: int | None
    authorizations_per_second: int | None = None  # None: the deployment's default


class Decision(NamedTuple):
    """What authorize and extend answer (times in seconds since the epoch)."""

    decision: str
    reason: str
    source: str  # "" on deny
    granted_seconds: int
    grant_expires_at: int
    destination_class: str
    destination_country: str
    destination_type: str
    replayed: bool = False


class Bill(NamedTuple):
    state: str
    duration_seconds: int
    domestic_pool_minutes: int
    international_pool_minutes: int
    credits_micro: int
    overrun_seconds: int
    replayed: bool


class AuthorizeArgs(NamedTuple):
    """Everything the authorize function needs that Redis does not hold (see its header).

    A NamedTuple, not a frozen dataclass: built on every authorize, and a frozen 24-field
    dataclass costs ~5 us to construct (object.__setattr__ per field) against ~1 us."""

    tenant_id: str
    call_id: str
    now: int
    month: str
    currency: str
    timezone: str
    direction: str
    user_id: str
    to: str
    from_: str
    dest_country: str
    dest_type: str
    dest_zone: str
    emergency_regions: str
    predeny: str
    credits_only: bool
    rate_prefix: str
    rate_micro_per_minute: int
    connection_fee_micro: int
    initial_increment: int
    subsequent_increment: int
    grant_max_seconds: int
    retention_seconds: int
    started_at: int
    # The moment the caller answers without Redis, in wall-clock microseconds since the
    # epoch (0: none), and the id of this attempt (void_call undoes the call for it only).
    deadline_us: int = 0
    attempt: str = ""
    # Authorizations per second of a tenant without a rate of its own (0: no limit).
    default_authorizations_per_second: int = 0


# The authorize function's ARGV is AuthorizeArgs, field for field (checked here at import,
# and against lua/50_authorize.lua by tests/test_redis_contract.py); flags go as 1 / 0.
assert AuthorizeArgs._fields == c.AUTHORIZE.argv, "AuthorizeArgs must follow the contract"
_AUTHORIZE_FLAGS = tuple(c.AUTHORIZE.argv.index(n) for n in ("credits_only",))


def authorize_argv(a: AuthorizeArgs) -> list[Arg]:
    """The authorize FCALL's ARGV: the fields of ``a`` in contract order, packed."""
    argv: list[Any] = list(a)
    for i in _AUTHORIZE_FLAGS:
        argv[i] = int(argv[i])
    return c.pack_argv(argv)


_LIBRARY_VERSION_LINE = re.compile(r"^local LIBRARY_VERSION = (\d+)\s*$", re.MULTILINE)


def library_version(listed: Any) -> int:
    """The LIBRARY_VERSION declared by the code of the library a FUNCTION LIST ... WITHCODE
    reply shows (0: none listed, or one of a version before the declaration)."""
    for library in listed or ():
        fields = list(library)
        for i in range(0, len(fields) - 1, 2):
            if str(fields[i]) == "library_code":
                found = _LIBRARY_VERSION_LINE.search(str(fields[i + 1]))
                return int(found.group(1)) if found else 0
    return 0


def _str(v: Any) -> str:
    return "" if v is None or v is False else str(v)


def _flat_to_dict(flat: Sequence[Any]) -> dict[str, str]:
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}


# Bound on administrative and read operations; call control brings its own, tighter bound
# (CallService, redis_timeout_ms) so that a switch never waits.
ADMIN_TIMEOUT_SECONDS = 2.0


class Store:
    def __init__(self, backend: Backend, partitions: int,
                 admin_timeout_s: float = ADMIN_TIMEOUT_SECONDS) -> None:
        self.backend = backend
        self.partitions = partitions
        self.admin_timeout_s = admin_timeout_s
        self._source = library_source()
        self._hot_keys: dict[str, _HotKeys] = {}

    @classmethod
    def from_url(cls, url: str, partitions: int, connect_timeout_s: float = 1.0,
                 admin_timeout_s: float = ADMIN_TIMEOUT_SECONDS) -> Store:
        return cls(backend_from_url(url, connect_timeout_s), partitions, admin_timeout_s)

    @classmethod
    def for_settings(cls, settings: Settings) -> Store:
        """The store of a running gateway: administrative operations get at least ten times
        the call-control bound (never less than ADMIN_TIMEOUT_SECONDS)."""
        call_s = settings.redis_timeout_ms / 1000
        assert settings.redis_url, "the Redis URL is resolved before the store is opened"
        return cls.from_url(settings.redis_url, settings.partitions,
                            connect_timeout_s=max(1.0, call_s),
                            admin_timeout_s=max(ADMIN_TIMEOUT_SECONDS, 10 * call_s))

    def keys(self, tenant_id: str) -> TenantKeys:
        return tenant_keys(tenant_id, self.partitions)

    def hot_keys(self, tenant_id: str) -> _HotKeys:
        """The call path's keys of a tenant, built once (a dozen f-strings and a crc32 per
        request otherwise); the same strings as :meth:`keys` gives."""
        hk = self._hot_keys.get(tenant_id)
        if hk is None:
            k = self.keys(tenant_id)
            p = k.partition
            hk = _HotKeys(k.tenant, k.users, k.pools, k.numbers, k.tollfree, k.user_active,
                          p.active, p.events, k.month(""), k.call(""), k.rate(0)[:-1],
                          p.notify)
            if len(self._hot_keys) >= HOT_KEYS_MAX_TENANTS:
                self._hot_keys.clear()
            self._hot_keys[tenant_id] = hk
        return hk

    async def load_functions(self) -> None:
        """Load this version's function library on every primary, unless one holds a
        library of a higher version (a newer gateway has started): that raises NewerLibrary
        and changes nothing, since this version's code could not read what that library
        stores nor call it (docs/operations.md, "Upgrading")."""
        try:
            async with asyncio.timeout(self.admin_timeout_s):
                listed = await self.backend.on_all_primaries(
                    "FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME, "WITHCODE")
                newer = max((library_version(r) for r in listed), default=0)
                if newer > c.LIBRARY_VERSION:
                    raise NewerLibrary(newer, c.LIBRARY_VERSION)
                await self.backend.on_all_primaries("FUNCTION", "LOAD", "REPLACE", self._source)
        except _TRANSPORT_ERRORS as exc:
            raise unavailable(exc) from exc

    async def persistence_warnings(self) -> list[str]:
        """What in the Redis servers' persistence settings can lose or corrupt acknowledged
        changes in a crash (README, "What is guaranteed"); empty when nothing, or when a
        server does not let us read them (CONFIG disabled, as some hosted Redis do)."""
        try:
            async with asyncio.timeout(self.admin_timeout_s):
                replies = await self.backend.on_all_primaries(
                    "CONFIG", "GET", "appendonly", "aof-load-truncated")
        except ReplyError:
            return []
        except _TRANSPORT_ERRORS as exc:
            raise unavailable(exc) from exc
        warnings = []
        for reply in replies:
            conf = dict(zip(reply[::2], reply[1::2], strict=True))
            if conf.get("appendonly") == "no":
                warnings.append("Redis runs without its AOF (appendonly no): a restart loses "
                                "every change since its last snapshot")
            elif conf.get("aof-load-truncated") == "yes":
                warnings.append("Redis runs with aof-load-truncated yes: after a crash that "
                                "tears an AOF write, the next restart but one can apply half a "
                                "function's writes or drop acknowledged ones; set it to no and "
                                "repair a torn AOF with redis-check-aof --fix")
        return sorted(set(warnings))

    async def close(self) -> None:
        await self.backend.close()

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.admin_timeout_s):
                replies = await self.backend.on_all_primaries("PING")
        except _TRANSPORT_ERRORS as exc:
            raise unavailable(exc) from exc
        return all(r == "PONG" for r in replies)

    async def functions_loaded(self) -> bool:
        try:
            async with asyncio.timeout(self.admin_timeout_s):
                replies = await self.backend.on_all_primaries(
                    "FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME
                )
        except _TRANSPORT_ERRORS as exc:
            raise unavailable(exc) from exc
        return all(bool(r) for r in replies)

    async def fcall(self, name: str, keys: Sequence[str], args: Sequence[Arg], *,
                    bounded: bool = False) -> list[Any]:
        """One FCALL, routed by its first key; reloads the library once if a node lacks it.
        ``bounded``: under the admin timeout. Redis not answering raises StoreUnavailable."""
        try:
            if bounded:
                async with asyncio.timeout(self.admin_timeout_s):
                    return await self._fcall(name, keys, args)
            return await self._fcall(name, keys, args)
        except StoreUnavailable:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise unavailable(exc) from exc

    async def _fcall(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        cmd = ("FCALL", name, len(keys), *keys, *args)
        t0 = time.perf_counter()
        try:
            reply = await self.backend.execute(keys[0], *cmd)
            metrics.observe_redis(name, time.perf_counter() - t0)
        except ReplyError as exc:
            if "Function not found" not in str(exc):
                raise
            await self.load_functions()
            reply = await self.backend.execute(keys[0], *cmd)
        assert isinstance(reply, list), reply
        return reply

    async def _hot(self, name: str, keys: Sequence[str], args: Sequence[Arg],
                   deadline: float) -> list[Any]:
        """The call path's FCALL: as _checked, failing with StoreTimeout at ``deadline``
        (loop time), with no coroutine or timer of its own between caller and reply."""
        packed = pack_command(("FCALL", name, len(keys), *keys, *args))
        t0 = time.perf_counter()
        try:
            try:
                reply = await self.backend.submit(keys[0], packed, deadline)
            except ReplyError as exc:
                if "Function not found" not in str(exc):
                    raise
                await self.load_functions()
                reply = await self.backend.submit(keys[0], packed, deadline)
        except StoreUnavailable:
            raise
        except _TRANSPORT_ERRORS as exc:  # free when nothing is raised (Python 3.11)
            raise unavailable(exc) from exc
        metrics.observe_redis(name, time.perf_counter() - t0)
        if reply[0] != 0:
            raise StoreError(Status(int(reply[0])), reply[1:])
        return cast(list[Any], reply)

    async def _call(self, name: str, keys: Sequence[str], args: Sequence[Arg],
                    deadline: float | None) -> list[Any]:
        if deadline is not None:
            return await self._hot(name, keys, args, deadline)
        return await self._checked(name, keys, args, bounded=False)

    async def _checked(self, name: str, keys: Sequence[str], args: Sequence[Arg],
                       bounded: bool = True) -> list[Any]:
        """One FCALL whose non-OK status raises StoreError. ``bounded``: under the admin
        timeout; call control passes False and bounds the call itself."""
        reply = await self.fcall(name, keys, args, bounded=bounded)
        status = Status(int(reply[0]))
        if status is not Status.OK:
            raise StoreError(status, reply[1:])
        return reply

    async def run(self, f: c.Function[R], keys: Sequence[str], argv: Sequence[Arg]) -> R:
        """One FCALL of ``f`` under the admin timeout: its OK reply by name, else StoreError.
        Build ``keys`` and ``argv`` with ``f.keys_of`` / ``f.argv_of``."""
        return f.decode(await self._checked(f.name, keys, argv))

    async def raw(self, routing_key: str, *args: Arg) -> Any:
        """A plain command routed by key (reads of the admin API), under the admin timeout."""
        try:
            async with asyncio.timeout(self.admin_timeout_s):
                return await self.backend.execute(routing_key, *args)
        except _TRANSPORT_ERRORS as exc:
            raise unavailable(exc) from exc

    # -- tenants, users, numbers, credits -------------------------------------------------

    async def tenant_put(self, tenant_id: str, now: int, s: TenantSettings, actor: str) -> bool:
        k = self.keys(tenant_id)
        f = c.TENANT_PUT
        reply = await self._checked(
            f.name,
            f.keys_of(tenant=k.tenant, events=k.partition.events, audit=k.audit),
            f.argv_of(tenant_id=tenant_id, now=now, name=s.name, currency=s.currency,
                      timezone=s.timezone, charge_inbound_calls=int(s.charge_inbound_calls),
                      max_concurrent_calls=_str(s.max_concurrent_calls), actor=actor,
                      authorizations_per_second=_str(s.authorizations_per_second)),
        )
        return bool(f.decode(reply).created)

    async def tenant_get(self, tenant_id: str) -> dict[str, str] | None:
        k = self.keys(tenant_id)
        flat = await self.raw(k.tenant, "HGETALL", k.tenant)
        return _flat_to_dict(flat) if flat else None

    def _user_keys(self, f: c.Function[Any], tenant_id: str) -> list[str]:
        k = self.keys(tenant_id)
        return f.keys_of(tenant=k.tenant, users=k.users, pools=k.pools, numbers=k.numbers,
                         tollfree=k.tollfree, events=k.partition.events, audit=k.audit)

    async def user_put(
        self, tenant_id: str, user_id: str, now: int, record_json: str, actor: str
    ) -> bool:
        f = c.USER_PUT
        reply = await self._checked(
            f.name, self._user_keys(f, tenant_id),
            f.argv_of(tenant_id=tenant_id, user_id=user_id, now=now, record=record_json,
                      actor=actor),
        )
        return bool(f.decode(reply).created)

    async def user_get(self, tenant_id: str, user_id: str) -> str | None:
        k = self.keys(tenant_id)
        value = await self.raw(k.users, "HGET", k.users, user_id)
        return None if value is None else str(value)

    async def user_delete(self, tenant_id: str, user_id: str, now: int, actor: str) -> None:
        f = c.USER_DELETE
        await self._checked(
            f.name, self._user_keys(f, tenant_id),
            f.argv_of(tenant_id=tenant_id, user_id=user_id, now=now, actor=actor),
        )

    async def topup(
        self, tenant_id: str, idempotency_key: str, amount_micro: int, now: int, actor: str
    ) -> tuple[int, bool]:
        k = self.keys(tenant_id)
        f = c.TOPUP
        reply = f.decode(await self._checked(
            f.name,
            f.keys_of(tenant=k.tenant, topups=k.topups, events=k.partition.events,
                      audit=k.audit),
            f.argv_of(tenant_id=tenant_id, idempotency_key=idempotency_key,
                      amount_micro=amount_micro, now=now, actor=actor),
        ))
        return int(reply.balance_micro), bool(reply.replayed)

    async def credits_get(self, tenant_id: str) -> tuple[str, int, int]:
        """(currency, balance, reserved) in micro-units."""
        k = self.keys(tenant_id)
        f = c.CREDITS_GET
        reply = f.decode(await self._checked(f.name, f.keys_of(tenant=k.tenant), f.argv_of()))
        return str(reply.currency), int(reply.balance_micro or 0), int(reply.reserved_micro or 0)

    def _tollfree_call(self, f: c.Function[Any], tenant_id: str, number: str, now: int,
                       actor: str) -> tuple[str, list[str], list[Arg]]:
        k = self.keys(tenant_id)
        return (f.name,
                f.keys_of(tenant=k.tenant, tollfree=k.tollfree, numbers=k.numbers,
                          events=k.partition.events, audit=k.audit),
                f.argv_of(tenant_id=tenant_id, number=number, now=now, actor=actor))

    async def tollfree_put(self, tenant_id: str, number: str, now: int, actor: str) -> bool:
        f = c.TOLLFREE_PUT
        reply = await self._checked(*self._tollfree_call(f, tenant_id, number, now, actor))
        return bool(f.decode(reply).created)

    async def tollfree_delete(self, tenant_id: str, number: str, now: int, actor: str) -> None:
        await self._checked(*self._tollfree_call(c.TOLLFREE_DELETE, tenant_id, number, now,
                                                 actor))

    async def tollfree_list(self, tenant_id: str) -> list[str]:
        k = self.keys(tenant_id)
        return sorted(str(n) for n in await self.raw(k.tollfree, "HKEYS", k.tollfree))

    async def pools_get(
        self, tenant_id: str, month: str
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(pools hash, month hash) of one consistent snapshot."""
        k = self.keys(tenant_id)
        f = c.POOLS_GET
        reply = f.decode(await self._checked(
            f.name, f.keys_of(tenant=k.tenant, pools=k.pools, month=k.month(month)),
            f.argv_of()))
        return _flat_to_dict(reply.pools), _flat_to_dict(reply.month)

    # -- call control: one FCALL each ----------------------------------------------------

    async def authorize(self, a: AuthorizeArgs, deadline: float | None = None) -> Decision:
        """``deadline`` (loop time): fail with TimeoutError then; None: unbounded."""
        k = self.hot_keys(a.tenant_id)
        f = c.AUTHORIZE
        reply = f.decode(await self._call(
            f.name,
            f.keys_of(tenant=k.tenant, users=k.users, call=k.call_prefix + a.call_id,
                      pools=k.pools, month=k.month_prefix + a.month, numbers=k.numbers,
                      tollfree=k.tollfree, user_active=k.user_active, active=k.active,
                      events=k.events, rate=k.rate_prefix + str(a.now), notify=k.notify),
            authorize_argv(a),
            deadline,
        ))
        return _decision(reply, replayed=bool(reply.replayed))

    def _lifecycle_keys(self, f: c.Function[Any], tenant_id: str, call_id: str,
                        months: Sequence[str], **more: str) -> list[str]:
        month_1, month_2, month_3 = months
        k = self.hot_keys(tenant_id)
        p = k.month_prefix
        return f.keys_of(tenant=k.tenant, call=k.call_prefix + call_id, pools=k.pools,
                         month_1=p + month_1, month_2=p + month_2, month_3=p + month_3,
                         active=k.active, events=k.events, user_active=k.user_active,
                         **more)

    async def extend(
        self, tenant_id: str, call_id: str, now: int, used_seconds: int,
        months: Sequence[str], grant_max_seconds: int, deadline: float | None = None,
        deadline_us: int = 0,
    ) -> Decision:
        """``deadline`` (loop time): fail with TimeoutError then; ``deadline_us`` (wall
        clock): Redis changes nothing if it starts the function later (Status.LATE)."""
        f = c.EXTEND
        month_1, month_2, month_3 = months
        reply = f.decode(await self._call(
            f.name,
            self._lifecycle_keys(f, tenant_id, call_id, months,
                                 notify=self.hot_keys(tenant_id).notify),
            f.argv_of(tenant_id=tenant_id, call_id=call_id, now=now, used_seconds=used_seconds,
                      month_1=month_1, month_2=month_2, month_3=month_3,
                      grant_max_seconds=grant_max_seconds, deadline_us=deadline_us),
            deadline,
        ))
        return _decision(reply)

    async def end(
        self, tenant_id: str, call_id: str, now: int, duration_seconds: int,
        months: Sequence[str], retention_seconds: int, *, expired: bool = False,
        grace_seconds: int = 0, deadline: float | None = None,
    ) -> Bill:
        """One FCALL; a second, with the call's own start month, for a call that started
        before ``months`` and still holds reservations there (MONTH_NEEDED: a late end, or
        the reaper down for weeks). The hot path never takes it."""
        try:
            reply = await self._end(tenant_id, call_id, now, duration_seconds, months,
                                    retention_seconds, expired, grace_seconds, deadline)
        except StoreError as exc:
            if exc.status is not Status.MONTH_NEEDED:
                raise
            month = str(exc.named["month"])
            reply = await self._end(tenant_id, call_id, now, duration_seconds,
                                    (month, month, month), retention_seconds, expired,
                                    grace_seconds, deadline)
        bill = c.END_CALL.decode(reply)
        return Bill(
            state=str(bill.state), duration_seconds=int(bill.duration_seconds),
            domestic_pool_minutes=int(bill.domestic_pool_minutes),
            international_pool_minutes=int(bill.international_pool_minutes),
            credits_micro=int(bill.credits_micro), overrun_seconds=int(bill.overrun_seconds),
            replayed=bool(bill.replayed),
        )

    async def _end(self, tenant_id: str, call_id: str, now: int, duration_seconds: int,
                   months: Sequence[str], retention_seconds: int, expired: bool,
                   grace_seconds: int, deadline: float | None) -> list[Any]:
        f = c.END_CALL
        month_1, month_2, month_3 = months
        return await self._call(
            f.name,
            self._lifecycle_keys(f, tenant_id, call_id, months),
            f.argv_of(tenant_id=tenant_id, call_id=call_id, now=now,
                      duration_seconds=duration_seconds, month_1=month_1, month_2=month_2,
                      month_3=month_3, retention_seconds=retention_seconds,
                      how="expired" if expired else "switch", grace_seconds=grace_seconds),
            deadline,
        )

    async def void_call(self, tenant_id: str, call_id: str, now: int, attempt: str,
                        months: Sequence[str], retention_seconds: int) -> bool:
        """Undo the call if ``attempt`` was the last to answer it allow and the switch has
        not extended or ended it (lua/65_void.lua); True if it was undone. Idempotent."""
        try:
            reply = await self._void(tenant_id, call_id, now, attempt, months,
                                     retention_seconds)
        except StoreError as exc:
            if exc.status is not Status.MONTH_NEEDED:
                raise
            month = str(exc.named["month"])
            reply = await self._void(tenant_id, call_id, now, attempt, (month,) * 3,
                                     retention_seconds)
        return bool(c.VOID_CALL.decode(reply).voided)

    async def _void(self, tenant_id: str, call_id: str, now: int, attempt: str,
                    months: Sequence[str], retention_seconds: int) -> list[Any]:
        f = c.VOID_CALL
        month_1, month_2, month_3 = months
        return await self._checked(
            f.name, self._lifecycle_keys(f, tenant_id, call_id, months),
            f.argv_of(tenant_id=tenant_id, call_id=call_id, now=now, attempt=attempt,
                      month_1=month_1, month_2=month_2, month_3=month_3,
                      retention_seconds=retention_seconds))

    async def tenant_exists(self, tenant_id: str) -> bool:
        k = self.keys(tenant_id)
        return bool(await self.raw(k.tenant, "EXISTS", k.tenant))

    async def active_calls(self) -> int:
        """Calls holding a grant, over every partition (never on the hot path)."""
        return (await self.active_grants())[0]

    async def active_grants(self) -> tuple[int, int | None]:
        """Calls holding a grant over every partition, and the earliest grant expiry among
        them (seconds; None when there is none): for /metrics, never on the hot path."""
        from gateway.redis.keys import all_partitions

        parts = all_partitions(self.partitions)
        try:
            async with asyncio.timeout(self.admin_timeout_s):
                replies = await asyncio.gather(*(
                    self.backend.execute(p.active, cmd, p.active, *args)
                    for p in parts
                    for cmd, args in (("ZCARD", ()), ("ZRANGE", (0, 0, "WITHSCORES")))
                ))
        except _TRANSPORT_ERRORS as exc:
            raise unavailable(exc) from exc
        count = sum(int(c) for c in replies[0::2])
        firsts = [int(float(r[1])) for r in replies[1::2] if r]
        return count, min(firsts, default=None)

    async def call_get(self, tenant_id: str, call_id: str) -> dict[str, str] | None:
        k = self.keys(tenant_id)
        return await call_record_of(self, k.call(call_id))


def _decision(reply: c.AuthorizeReply | c.ExtendReply, replayed: bool = False) -> Decision:
    """The Decision of an authorize or extend reply."""
    return Decision(
        decision=reply.decision, reason=reply.reason, source=_str(reply.source),
        granted_seconds=int(reply.granted_seconds), grant_expires_at=int(reply.grant_expires_at),
        destination_class=_str(reply.destination_class),
        destination_country=_str(reply.destination_country),
        destination_type=_str(reply.destination_type), replayed=replayed,
    )


async def call_record_of(store: Store, key: str) -> dict[str, str] | None:
    """The call at ``key`` by field name (keys.call_fields), None if there is none. An open
    call is a hash; a closed one a string, its compact record (lua/00_lib.lua close_call)."""
    try:
        flat = await store.raw(key, "HGETALL", key)
    except StoreErrorReply as exc:
        if not exc.reply.startswith("WRONGTYPE"):
            raise
        closed = await store.raw(key, "GET", key)
        return call_fields({"z": _str(closed)}) if closed is not None else None
    return call_fields(_flat_to_dict(flat)) if flat else None


# How often a stopping process repeats CLIENT UNBLOCK while its blocking read is still out
# (the read may reach Redis just after the first one did).
UNBLOCK_RETRY_SECONDS = 0.05


async def read_new_entries(waiter: Store, blocking: BlockingRead | None, group: str,
                           consumer: str, count: int, streams: Sequence[str],
                           block_ms: int) -> Any:
    """One XREADGROUP of ``streams``' entries never delivered to ``group`` (at most
    ``count`` a stream) for ``consumer``, waiting up to ``block_ms`` for one (0: no wait):
    through ``blocking`` when there is one (a stop then ends the wait at once), else on
    ``waiter``'s connection. The raw reply (None when nothing came)."""
    head = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count)
    tail = ("STREAMS", *streams, *(">" for _ in streams))
    if blocking is not None:
        return await blocking.read(block_ms, head, tail)
    block = ("BLOCK", block_ms) if block_ms > 0 else ()
    return await waiter.backend.execute(streams[0], *head, *block, *tail)


class BlockingRead:
    """A blocking read on a connection of its own (``waiter``) that a stop ends at once:
    then the process may block for long when idle (few wake-ups of it and of Redis) and
    still stop without waiting for the read's timeout. CLIENT UNBLOCK, sent on ``store``'s
    connection, makes the read return empty as at its timeout: nothing is delivered, so no
    entry is left pending on a consumer about to go away. The waiter's client id is read
    before every blocking read, as a reconnect changes it."""

    def __init__(self, store: Store, waiter: Store, routing_key: str) -> None:
        self.store = store
        self.waiter = waiter
        self.routing_key = routing_key
        self.stopping = False
        self._client_id: int | None = None
        self._reading = False
        self._unblocker: asyncio.Task[None] | None = None

    def start(self, stop: asyncio.Event) -> None:
        """From now on, ``stop`` ends the read in flight (until ``close``)."""
        self._unblocker = asyncio.create_task(self.unblock_on(stop))

    async def close(self) -> None:
        """No longer watch ``stop`` (the reads are over)."""
        if self._unblocker is not None:
            self._unblocker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._unblocker
            self._unblocker = None

    async def read(self, block_ms: int, head: Sequence[Arg], tail: Sequence[Arg]) -> Any:
        """``head``, then ``BLOCK block_ms`` (none if 0 or stopping), then ``tail``: one
        command on the waiter."""
        block = block_ms > 0 and not self.stopping
        if block:
            self._client_id = int(await self.waiter.backend.execute(
                self.routing_key, "CLIENT", "ID"))
            block = not self.stopping  # a stop during that round trip: do not block
        self._reading = block
        try:
            return await self.waiter.backend.execute(
                self.routing_key, *head, *(("BLOCK", block_ms) if block else ()), *tail)
        finally:
            self._reading = False

    async def unblock_on(self, stop: asyncio.Event) -> None:
        """When ``stop`` is set, end the blocking read in flight (run beside the reads)."""
        await stop.wait()
        self.stopping = True
        while self._reading and self._client_id is not None:
            with contextlib.suppress(Exception):  # Redis away: the read fails by itself
                await self.store.backend.execute(self.routing_key, "CLIENT", "UNBLOCK",
                                                 self._client_id)
            await asyncio.sleep(UNBLOCK_RETRY_SECONDS)

