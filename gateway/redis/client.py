"""A lean asyncio Redis client for the call path: one connection per node, auto-pipelined.

Why not redis-py's asyncio client here: it takes a connection from a pool per command and,
on Redis Cluster, asks the server for the keys of every FCALL (COMMAND GETKEYS) — a second
round trip. Under load the gateway's cost is dominated by per-command overhead, so this
client writes every command issued during one event-loop tick in a single ``write`` on one
connection (replies come back in order, RESP guarantees it) and parses with hiredis.
redis-py stays in use for tooling and tests.

A caller that times out simply abandons its future: the reply still arrives, in order, and
is discarded, so the connection never desynchronises. What the abandoned command did in
Redis is the caller's to undo (gateway.rules.voids), or Redis's to refuse (a function that checks
the caller's deadline).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis.crc import key_slot

Arg = str | int | bytes

# hiredis' stub types the argument as a 1-tuple; it takes any tuple of arguments.
pack_command = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


class ReplyError(Exception):
    """An error reply from Redis (``-ERR …``)."""


class RedisUnavailable(Exception):
    """Redis could not be reached or the connection broke with the command in flight.

    ``sent``: the command may have reached Redis and run (the connection broke while it was
    in flight); False when it was never written."""

    def __init__(self, message: str, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


# After a failed connect, fail fast for this long instead of hammering a dead server.
RECONNECT_BACKOFF_SECONDS = 0.05

# Commands are written once per event-loop tick, together, and also as soon as this many
# wait: under load one tick parses dozens of requests, and Redis would sit idle until the
# last was parsed, then the worker idle while Redis runs them all; the two would move in
# one convoy. Writing every 16 lets Redis start on the first ones (~1 write per 16
# commands more; below that rate nothing changes).
FLUSH_EVERY = 16


class _Protocol(asyncio.Protocol):
    def __init__(self, on_lost: Any) -> None:
        self._reader = hiredis.Reader(replyError=ReplyError, encoding="utf-8")
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._flush_scheduled = False
        self._on_lost = on_lost
        self.closed = False
        # Futures sent with a deadline, in sending order, and one timer at the earliest
        # deadline among them that fails those overdue with TimeoutError: cheaper than a
        # timeout object and a timer per call.
        self._watched: collections.deque[tuple[float, asyncio.Future[Any]]] = (
            collections.deque())
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, packed: bytes, fut: asyncio.Future[Any], deadline: float | None = None,
             ) -> None:
        if self.closed:
            # Lost between the caller's lookup of the connection and this send (NodeClient
            # resumes a caller after the connect, and Redis may die in between): no reply
            # can come, and connection_lost has already failed what it held.
            fut.set_exception(RedisUnavailable("connection lost before the command was sent"))
            return
        self._out.append(packed)
        self._pending.append(fut)
        if len(self._out) >= FLUSH_EVERY:
            self._flush()  # a flush already scheduled for the tick writes what follows
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            fut.get_loop().call_soon(self._flush_at_end_of_tick)
        if deadline is not None:
            self._watched.append((deadline, fut))
            if self._timer is None or deadline < self._timer_at:
                self._arm(fut.get_loop(), deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(at, self._expire, loop), at

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the futures past their deadline; their replies, when they come, are
        discarded like those of any abandoned future. Rare (at most once per deadline that
        passes with its reply outstanding, or once per bound under load), so a full scan."""
        self._timer = None
        now = loop.time()
        kept: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        for deadline, fut in self._watched:
            if fut.done():
                continue
            if deadline <= now:
                fut.set_exception(TimeoutError())
            else:
                kept.append((deadline, fut))
        self._watched = kept
        if kept:
            self._arm(loop, min(d for d, _ in kept))

    def _flush_at_end_of_tick(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        if self._transport is None or self.closed or not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self._pending
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            fut = pending.popleft()
            if self._watched and self._watched[0][1] is fut:
                self._watched.popleft()
            if fut.done():  # abandoned by a caller that timed out
                continue
            if isinstance(reply, ReplyError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._watched.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        err = RedisUnavailable(f"connection lost: {exc or 'closed by server'}", sent=True)
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(err)
        self._on_lost(self)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


@dataclass(frozen=True, slots=True)
class Address:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    db: int = 0
    password: str | None = None
    username: str | None = None

    def __str__(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


class NodeClient:
    """One pipelined connection to one Redis server, reconnected lazily."""

    def __init__(self, address: Address, connect_timeout_s: float) -> None:
        self.address = address
        self._connect_timeout_s = connect_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._failed_at = 0.0

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        addr = self.address

        def factory() -> _Protocol:
            return _Protocol(self._lost)

        try:
            if addr.unix_path:
                conn = loop.create_unix_connection(factory, addr.unix_path)
            else:
                conn = loop.create_connection(factory, addr.host, addr.port)
            _, proto = await asyncio.wait_for(conn, self._connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot connect to {addr}: {exc}") from exc
        setup: list[tuple[Arg, ...]] = []
        if addr.password is not None:
            auth: tuple[Arg, ...] = (addr.username, addr.password) if addr.username else (
                addr.password,
            )
            setup.append(("AUTH", *auth))
        if addr.db:
            setup.append(("SELECT", addr.db))
        for cmd in setup:
            fut: asyncio.Future[Any] = loop.create_future()
            proto.send(pack_command(cmd), fut)
            await asyncio.wait_for(fut, self._connect_timeout_s)
        return proto

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None

    async def _connection(self) -> _Protocol:
        if self._proto is not None and not self._proto.closed:
            return self._proto
        if self._connecting is None:
            if time.monotonic() - self._failed_at < RECONNECT_BACKOFF_SECONDS:
                raise RedisUnavailable(f"{self.address} unreachable (backing off)")
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            proto = await asyncio.shield(connecting)
        except RedisUnavailable:
            self._failed_at = time.monotonic()
            raise
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._proto = proto
        return proto

    async def execute(self, *args: Arg) -> Any:
        return await self.execute_packed(pack_command(args))

    async def execute_packed(self, packed: bytes) -> Any:
        proto = await self._connection()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.send(packed, fut)
        return await fut

    def submit(self, packed: bytes, deadline: float) -> Awaitable[Any]:
        """The reply of one packed command, failing with TimeoutError at ``deadline``
        (loop time). Connected: just a future, no coroutine (the call path's case)."""
        proto = self._proto
        if proto is None or proto.closed:
            return self._submit_connecting(packed, deadline)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.send(packed, fut, deadline)
        return fut

    async def _submit_connecting(self, packed: bytes, deadline: float) -> Any:
        async with asyncio.timeout_at(deadline):
            proto = await self._connection()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.send(packed, fut, deadline)
        return await fut

    async def close(self) -> None:
        if self._proto is not None:
            self._proto.close()
            self._proto = None


class Backend:
    """What the store needs of Redis, whatever the topology."""

    async def execute(self, routing_key: str, *args: Arg) -> Any:
        raise NotImplementedError

    def submit(self, routing_key: str, packed: bytes, deadline: float) -> Awaitable[Any]:
        """One packed command routed by key, failing with TimeoutError at ``deadline``."""
        raise NotImplementedError

    async def on_all_primaries(self, *args: Arg) -> list[Any]:
        raise NotImplementedError

    def listen_addresses(self) -> list[Address]:
        """Where a connection of its own may SUBSCRIBE: any server of the deployment (on a
        cluster a PUBLISH reaches every node), the likeliest first."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SingleBackend(Backend):
    def __init__(self, address: Address, connect_timeout_s: float) -> None:
        self.node = NodeClient(address, connect_timeout_s)

    async def execute(self, routing_key: str, *args: Arg) -> Any:
        return await self.node.execute(*args)

    def submit(self, routing_key: str, packed: bytes, deadline: float) -> Awaitable[Any]:
        return self.node.submit(packed, deadline)

    async def on_all_primaries(self, *args: Arg) -> list[Any]:
        return [await self.node.execute(*args)]

    def listen_addresses(self) -> list[Address]:
        return [self.node.address]

    async def close(self) -> None:
        await self.node.close()


class ClusterBackend(Backend):
    """Routes each command by the hash slot of its routing key; follows MOVED and ASK.

    Every callgate key of one tenant carries the same hash tag, so one command never
    spans slots. The slot map is refreshed from CLUSTER SLOTS on start and on MOVED.
    """

    def __init__(self, seeds: Sequence[Address], connect_timeout_s: float) -> None:
        self._seeds = list(seeds)
        self._timeout = connect_timeout_s
        self._nodes: dict[tuple[str, int], NodeClient] = {}
        self._slots: list[tuple[str, int] | None] = [None] * 16384
        self._refreshing: asyncio.Future[None] | None = None
        self._background: asyncio.Future[None] | None = None  # slot-map refresh after MOVED

    def _node(self, host: str, port: int) -> NodeClient:
        key = (host, port)
        node = self._nodes.get(key)
        if node is None:
            seed = self._seeds[0]
            node = NodeClient(
                Address(host, port, password=seed.password, username=seed.username),
                self._timeout,
            )
            self._nodes[key] = node
        return node

    async def refresh(self) -> None:
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._refresh())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if self._refreshing is refreshing and refreshing.done():
                self._refreshing = None

    async def _refresh(self) -> None:
        last: Exception | None = None
        candidates = [self._node(a.host, a.port) for a in self._seeds] + list(
            self._nodes.values()
        )
        for node in candidates:
            try:
                ranges = await node.execute("CLUSTER", "SLOTS")
            except (RedisUnavailable, ReplyError) as exc:
                last = exc
                continue
            for start, end, primary, *_ in ranges:
                owner = (str(primary[0]) or node.address.host, int(primary[1]))
                self._node(*owner)
                for slot in range(int(start), int(end) + 1):
                    self._slots[slot] = owner
            return
        raise RedisUnavailable(f"no cluster node answered CLUSTER SLOTS: {last}")

    async def execute(self, routing_key: str, *args: Arg) -> Any:
        return await self._execute_packed(routing_key, pack_command(args))

    async def submit(self, routing_key: str, packed: bytes, deadline: float) -> Any:
        async with asyncio.timeout_at(deadline):
            return await self._execute_packed(routing_key, packed)

    async def _execute_packed(self, routing_key: str, packed: bytes) -> Any:
        slot = key_slot(routing_key.encode())
        owner = self._slots[slot]
        if owner is None:
            await self.refresh()
            owner = self._slots[slot]
            if owner is None:
                raise RedisUnavailable(f"slot {slot} is not served")
        try:
            return await self._nodes[owner].execute_packed(packed)
        except RedisUnavailable:
            # The node is gone (crash, failover): learn the new owners in the background so
            # that the next call reaches the promoted replica; this one fails fast.
            if self._refreshing is None:
                self._background = asyncio.ensure_future(self._refresh_quietly())
            raise
        except ReplyError as exc:
            msg = str(exc)
            if msg.startswith("MOVED "):
                host, _, port = msg.split()[2].rpartition(":")
                self._slots[slot] = (host, int(port))
                self._background = asyncio.ensure_future(self._refresh_quietly())
                return await self._node(host, int(port)).execute_packed(packed)
            if msg.startswith("ASK "):
                host, _, port = msg.split()[2].rpartition(":")
                target = self._node(host, int(port))
                asking = target.execute("ASKING")
                result = target.execute_packed(packed)
                await asking
                return await result
            raise

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(RedisUnavailable):
            await self.refresh()

    async def on_all_primaries(self, *args: Arg) -> list[Any]:
        await self.refresh()
        owners = sorted({o for o in self._slots if o is not None})
        return [await self._nodes[o].execute(*args) for o in owners]

    def listen_addresses(self) -> list[Address]:
        # The nodes known from the slot map (a seed may be gone since), then the seeds.
        out = [n.address for n in self._nodes.values()]
        known = {(a.host, a.port) for a in out}
        return out + [a for a in self._seeds if (a.host, a.port) not in known]

    async def close(self) -> None:
        for node in self._nodes.values():
            await node.close()


def parse_url(url: str) -> tuple[str, list[Address]]:
    """Topology and addresses of a Redis URL: ``redis://``, ``rediss://`` (not supported
    by the lean client: TLS belongs in front of Redis here), ``unix://`` or
    ``redis+cluster://host:port,host:port``."""
    parsed = urlparse(url)
    password = unquote(parsed.password) if parsed.password else None
    username = unquote(parsed.username) if parsed.username else None
    if parsed.scheme == "unix":
        db = int(parse_qs(parsed.query).get("db", ["0"])[0])
        return "single", [Address(unix_path=parsed.path, db=db, password=password)]
    if parsed.scheme == "redis":
        db = int(parsed.path.strip("/") or 0)
        return "single", [
            Address(
                parsed.hostname or "127.0.0.1",
                parsed.port or 6379,
                db=db,
                password=password,
                username=username,
            )
        ]
    if parsed.scheme == "redis+cluster":
        hosts = parsed.netloc.rpartition("@")[2]
        seeds = []
        for hp in hosts.split(","):
            host, _, port = hp.rpartition(":")
            seeds.append(Address(host or "127.0.0.1", int(port or 6379), password=password,
                                 username=username))
        return "cluster", seeds
    raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")


def backend_from_url(url: str, connect_timeout_s: float) -> Backend:
    topology, addresses = parse_url(url)
    if topology == "cluster":
        return ClusterBackend(addresses, connect_timeout_s)
    return SingleBackend(addresses[0], connect_timeout_s)
