"""The Redis side of callgate: the `callgate` function library and one typed call per operation.

Every call-control operation is exactly one FCALL (one round trip). Keys come from
gateway.keys; arguments are strings and integers prepared here; the replies are turned
into small typed records. The library is (re)loaded on every primary at start-up and
transparently whenever a node answers that it does not know a function (a restarted or
newly promoted node without the library): callers never see that error.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

from gateway import metrics
from gateway.config import Settings
from gateway.keys import TenantKeys, call_fields, tenant_keys
from gateway.redisclient import Arg, Backend, ReplyError, backend_from_url, pack_command

# lua/ at the top of the repository; gateway/lua links to it so that it also ships inside the
# package (wheels copy the files) and is found the same way installed or not.
LUA_DIR = Path(__file__).resolve().parent / "lua"
LIBRARY_NAME = "callgate"


class Status(enum.IntEnum):
    """First element of every function reply; mirrors the constants of lua/00_lib.lua."""

    OK = 0
    TENANT_NOT_FOUND = -1
    TENANT_SETTINGS_CHANGED = -2
    CALL_NOT_FOUND = -3
    CALL_ENDED = -4
    NUMBER_CONFLICT = -5
    IDEMPOTENCY_CONFLICT = -6
    CURRENCY_LOCKED = -7
    NOT_FOUND = -8
    BALANCE_LIMIT = -9
    MONTH_NEEDED = -10
    LATE = -11
    USED_BACKWARDS = -12  # extend: used_seconds below those already reported; detail: them


class StoreError(Exception):
    """A function answered a non-OK status; ``status`` says which, ``detail`` any payload."""

    def __init__(self, status: Status, detail: Sequence[Any] = ()) -> None:
        self.status = status
        self.detail = list(detail)
        super().__init__(f"{status.name} {self.detail}")


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
    # The moment the caller answers without Redis, in wall-clock milliseconds since the
    # epoch (0: none), and the id of this attempt (void_call undoes the call for it only).
    deadline_ms: int = 0
    attempt: str = ""
    # Authorizations per second of a tenant without a rate of its own (0: no limit).
    default_authorizations_per_second: int = 0


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
        async with asyncio.timeout(self.admin_timeout_s):
            await self.backend.on_all_primaries("FUNCTION", "LOAD", "REPLACE", self._source)

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
        async with asyncio.timeout(self.admin_timeout_s):
            replies = await self.backend.on_all_primaries("PING")
        return all(r == "PONG" for r in replies)

    async def functions_loaded(self) -> bool:
        async with asyncio.timeout(self.admin_timeout_s):
            replies = await self.backend.on_all_primaries(
                "FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_NAME
            )
        return all(bool(r) for r in replies)

    async def fcall(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
        """One FCALL, routed by its first key; reloads the library once if a node lacks it."""
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
        """The call path's FCALL: as _checked, failing with TimeoutError at ``deadline``
        (loop time), with no coroutine or timer of its own between caller and reply."""
        packed = pack_command(("FCALL", name, len(keys), *keys, *args))
        t0 = time.perf_counter()
        try:
            reply = await self.backend.submit(keys[0], packed, deadline)
        except ReplyError as exc:
            if "Function not found" not in str(exc):
                raise
            await self.load_functions()
            reply = await self.backend.submit(keys[0], packed, deadline)
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
        if bounded:
            async with asyncio.timeout(self.admin_timeout_s):
                reply = await self.fcall(name, keys, args)
        else:
            reply = await self.fcall(name, keys, args)
        status = Status(int(reply[0]))
        if status is not Status.OK:
            raise StoreError(status, reply[1:])
        return reply

    async def raw(self, routing_key: str, *args: Arg) -> Any:
        """A plain command routed by key (reads of the admin API), under the admin timeout."""
        async with asyncio.timeout(self.admin_timeout_s):
            return await self.backend.execute(routing_key, *args)

    # -- tenants, users, numbers, credits -------------------------------------------------

    async def tenant_put(self, tenant_id: str, now: int, s: TenantSettings, actor: str) -> bool:
        k = self.keys(tenant_id)
        reply = await self._checked(
            "tenant_put",
            [k.tenant, k.partition.events, k.audit],
            [tenant_id, now, s.name, s.currency, s.timezone, int(s.charge_inbound_calls),
             _str(s.max_concurrent_calls), actor, _str(s.authorizations_per_second)],
        )
        return bool(reply[1])

    async def tenant_get(self, tenant_id: str) -> dict[str, str] | None:
        k = self.keys(tenant_id)
        flat = await self.raw(k.tenant, "HGETALL", k.tenant)
        return _flat_to_dict(flat) if flat else None

    def _user_keys(self, tenant_id: str) -> list[str]:
        k = self.keys(tenant_id)
        return [k.tenant, k.users, k.pools, k.numbers, k.tollfree, k.partition.events, k.audit]

    async def user_put(
        self, tenant_id: str, user_id: str, now: int, record_json: str, actor: str
    ) -> bool:
        reply = await self._checked(
            "user_put", self._user_keys(tenant_id), [tenant_id, user_id, now, record_json, actor]
        )
        return bool(reply[1])

    async def user_get(self, tenant_id: str, user_id: str) -> str | None:
        k = self.keys(tenant_id)
        value = await self.raw(k.users, "HGET", k.users, user_id)
        return None if value is None else str(value)

    async def user_delete(self, tenant_id: str, user_id: str, now: int, actor: str) -> None:
        await self._checked(
            "user_delete", self._user_keys(tenant_id), [tenant_id, user_id, now, actor]
        )

    async def topup(
        self, tenant_id: str, idempotency_key: str, amount_micro: int, now: int, actor: str
    ) -> tuple[int, bool]:
        k = self.keys(tenant_id)
        reply = await self._checked(
            "topup",
            [k.tenant, k.topups, k.partition.events, k.audit],
            [tenant_id, idempotency_key, amount_micro, now, actor],
        )
        return int(reply[1]), bool(reply[2])

    async def credits_get(self, tenant_id: str) -> tuple[str, int, int]:
        """(currency, balance, reserved) in micro-units."""
        k = self.keys(tenant_id)
        reply = await self._checked("credits_get", [k.tenant], [])
        return str(reply[1]), int(reply[2] or 0), int(reply[3] or 0)

    async def tollfree_put(self, tenant_id: str, number: str, now: int, actor: str) -> bool:
        k = self.keys(tenant_id)
        reply = await self._checked(
            "tollfree_put",
            [k.tenant, k.tollfree, k.numbers, k.partition.events, k.audit],
            [tenant_id, number, now, actor],
        )
        return bool(reply[1])

    async def tollfree_delete(self, tenant_id: str, number: str, now: int, actor: str) -> None:
        k = self.keys(tenant_id)
        await self._checked(
            "tollfree_delete",
            [k.tenant, k.tollfree, k.numbers, k.partition.events, k.audit],
            [tenant_id, number, now, actor],
        )

    async def tollfree_list(self, tenant_id: str) -> list[str]:
        k = self.keys(tenant_id)
        return sorted(str(n) for n in await self.raw(k.tollfree, "HKEYS", k.tollfree))

    async def pools_get(
        self, tenant_id: str, month: str
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(pools hash, month hash) of one consistent snapshot."""
        k = self.keys(tenant_id)
        reply = await self._checked("pools_get", [k.tenant, k.pools, k.month(month)], [])
        return _flat_to_dict(reply[1]), _flat_to_dict(reply[2])

    # -- call control: one FCALL each ----------------------------------------------------

    async def authorize(self, a: AuthorizeArgs, deadline: float | None = None) -> Decision:
        """``deadline`` (loop time): fail with TimeoutError then; None: unbounded."""
        k = self.hot_keys(a.tenant_id)
        reply = await self._call(
            "authorize",
            [k.tenant, k.users, k.call_prefix + a.call_id, k.pools, k.month_prefix + a.month,
             k.numbers, k.tollfree, k.user_active, k.active, k.events,
             k.rate_prefix + str(a.now), k.notify],
            # The fields are in ARGV order: the tuple is the argument list, but for the flag.
            (*a[:15], int(a.credits_only), *a[16:]),
            deadline,
        )
        return Decision(
            decision=reply[2], reason=reply[3], source=_str(reply[4]),
            granted_seconds=int(reply[5]), grant_expires_at=int(reply[6]),
            destination_class=_str(reply[7]), destination_country=_str(reply[8]),
            destination_type=_str(reply[9]), replayed=bool(reply[1]),
        )

    def _lifecycle_keys(self, tenant_id: str, call_id: str, months: Sequence[str]) -> list[str]:
        assert len(months) == 3, months
        k = self.hot_keys(tenant_id)
        return [k.tenant, k.call_prefix + call_id, k.pools,
                *(k.month_prefix + m for m in months), k.active, k.events, k.user_active]

    async def extend(
        self, tenant_id: str, call_id: str, now: int, used_seconds: int,
        months: Sequence[str], grant_max_seconds: int, deadline: float | None = None,
        deadline_ms: int = 0,
    ) -> Decision:
        """``deadline`` (loop time): fail with TimeoutError then; ``deadline_ms`` (wall
        clock): Redis changes nothing if it starts the function later (Status.LATE)."""
        reply = await self._call(
            "extend",
            [*self._lifecycle_keys(tenant_id, call_id, months), self.hot_keys(tenant_id).notify],
            [tenant_id, call_id, now, used_seconds, *months, grant_max_seconds, deadline_ms],
            deadline,
        )
        return Decision(
            decision=reply[1], reason=reply[2], source=_str(reply[3]),
            granted_seconds=int(reply[4]), grant_expires_at=int(reply[5]),
            destination_class=_str(reply[6]), destination_country=_str(reply[7]),
            destination_type=_str(reply[8]),
        )

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
            month = str(exc.detail[0])
            reply = await self._end(tenant_id, call_id, now, duration_seconds,
                                    (month, month, month), retention_seconds, expired,
                                    grace_seconds, deadline)
        return Bill(
            state=str(reply[1]), duration_seconds=int(reply[2]),
            domestic_pool_minutes=int(reply[3]), international_pool_minutes=int(reply[4]),
            credits_micro=int(reply[5]), overrun_seconds=int(reply[6]),
            replayed=bool(reply[7]),
        )

    async def _end(self, tenant_id: str, call_id: str, now: int, duration_seconds: int,
                   months: Sequence[str], retention_seconds: int, expired: bool,
                   grace_seconds: int, deadline: float | None) -> list[Any]:
        return await self._call(
            "end_call",
            self._lifecycle_keys(tenant_id, call_id, months),
            [tenant_id, call_id, now, duration_seconds, *months, retention_seconds,
             "expired" if expired else "switch", grace_seconds],
            deadline,
        )

    async def void_call(self, tenant_id: str, call_id: str, now: int, attempt: str,
                        months: Sequence[str], retention_seconds: int) -> bool:
        """Undo the call if ``attempt`` was the last to answer it allow and the switch has
        not extended or ended it (lua/65_void.lua); True if it was undone. Idempotent."""
        keys = self._lifecycle_keys(tenant_id, call_id, months)
        try:
            reply = await self._checked(
                "void_call", keys, [tenant_id, call_id, now, attempt, *months,
                                    retention_seconds])
        except StoreError as exc:
            if exc.status is not Status.MONTH_NEEDED:
                raise
            month = str(exc.detail[0])
            reply = await self._checked(
                "void_call", self._lifecycle_keys(tenant_id, call_id, (month,) * 3),
                [tenant_id, call_id, now, attempt, month, month, month, retention_seconds])
        return bool(reply[1])

    async def tenant_exists(self, tenant_id: str) -> bool:
        k = self.keys(tenant_id)
        return bool(await self.raw(k.tenant, "EXISTS", k.tenant))

    async def active_calls(self) -> int:
        """Calls holding a grant, over every partition (never on the hot path)."""
        return (await self.active_grants())[0]

    async def active_grants(self) -> tuple[int, int | None]:
        """Calls holding a grant over every partition, and the earliest grant expiry among
        them (seconds; None when there is none): for /metrics, never on the hot path."""
        from gateway.keys import all_partitions

        parts = all_partitions(self.partitions)
        async with asyncio.timeout(self.admin_timeout_s):
            replies = await asyncio.gather(*(
                self.backend.execute(p.active, cmd, p.active, *args)
                for p in parts
                for cmd, args in (("ZCARD", ()), ("ZRANGE", (0, 0, "WITHSCORES")))
            ))
        count = sum(int(c) for c in replies[0::2])
        firsts = [int(float(r[1])) for r in replies[1::2] if r]
        return count, min(firsts, default=None)

    async def call_get(self, tenant_id: str, call_id: str) -> dict[str, str] | None:
        k = self.keys(tenant_id)
        return await call_record_of(self, k.call(call_id))


async def call_record_of(store: Store, key: str) -> dict[str, str] | None:
    """The call at ``key`` by field name (keys.call_fields), None if there is none. An open
    call is a hash; a closed one a string, its compact record (lua/00_lib.lua close_call)."""
    try:
        flat = await store.raw(key, "HGETALL", key)
    except ReplyError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        closed = await store.raw(key, "GET", key)
        return call_fields({"z": _str(closed)}) if closed is not None else None
    return call_fields(_flat_to_dict(flat)) if flat else None
