"""Changes pushed to the workers: a connection of its own, SUBSCRIBEd to the channels on which
the Lua functions PUBLISH a new version (a token created or revoked, a rate deck uploaded:
lua/80_deck_put.lua, 85, 86; each channel is named like the version key it announces),
which wakes its owner when a message comes. An idle worker then sleeps on one blocking
read instead of polling the versions several times a second.

Pub/sub delivers at most once: what is published while the connection is down is lost. So
every (re)connect calls ``on_connected`` once the subscription is confirmed, and the owner
reads the versions again there: a change made before the confirmation is seen by that read,
one made after is published to this connection. The owner also keeps a slow re-read of its
own as a safety net (gateway.polling.SharedPoll). Redis away: the listener reconnects with a
backoff, logs one warning per outage and never raises into its owner. On a cluster a PUBLISH
reaches every node, so any node will do; one that goes away is replaced by the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import hiredis

from gateway.redis.client import Address, RedisUnavailable, ReplyError, pack_command

log = logging.getLogger(__name__)

# Reconnect after a failure: this long first, doubled up to the cap. The cap bounds how long
# a worker stays deaf after Redis comes back (its re-read on reconnect then catches up), well
# inside the 1 s within which a revoked token must be refused everywhere (api.md).
LISTEN_BACKOFF_FIRST_SECONDS = 0.05
LISTEN_BACKOFF_MAX_SECONDS = 0.5
# A server that answers but refuses (an ACL user without the channels, a wrong password) is
# a configuration to fix, not an outage: asked again this seldom, not twice a second.
LISTEN_REFUSED_RETRY_SECONDS = 10.0
REFUSALS = ("NOPERM", "WRONGPASS", "NOAUTH")
# A server gone without a word (host down, no FIN nor RST) would leave the listener waiting
# forever on a dead TCP connection: the kernel's keepalive probes find it out, at no cost to
# the process (a Unix socket cannot go half-open).
KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_PROBES = 3
READ_BYTES = 65536


def _keepalive(sock: Any) -> None:
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
                            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
                            ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class ChangeListener:
    """Listens on ``channels`` until cancelled: ``on_change(channel)`` for every message,
    ``on_connected()`` after every confirmed subscription (the first one included). The
    callbacks must not block (they schedule work); an exception in one is logged."""

    def __init__(self, addresses: Callable[[], Sequence[Address]], channels: Sequence[str],
                 on_change: Callable[[str], None], on_connected: Callable[[], None],
                 connect_timeout_s: float = 1.0) -> None:
        self.addresses = addresses  # called at every attempt: a cluster's nodes change
        self.channels = tuple(channels)
        self._on_change = on_change
        self._on_connected = on_connected
        self._timeout = connect_timeout_s
        self.connected = False  # subscribed now
        self.connects = 0  # confirmed subscriptions so far
        self.failures = 0  # connections that failed or broke so far
        self._warned = False  # this outage is logged

    async def run(self) -> None:
        backoff = LISTEN_BACKOFF_FIRST_SECONDS
        turn = 0
        while True:
            candidates = list(self.addresses())
            address = candidates[turn % len(candidates)]
            try:
                await self._listen(address)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever broke, listen again: never into the worker
                reason: BaseException = exc
            else:
                reason = RedisUnavailable("connection closed by the server")
            self.failures += 1
            if self.connected:  # it worked until now: a new outage
                self.connected = False
                self._warned = False
                backoff = LISTEN_BACKOFF_FIRST_SECONDS
            if not self._warned:  # once per outage, not at every attempt
                log.warning("change listener lost Redis at %s (reconnecting quietly): %r",
                            address, reason)
                self._warned = True
            turn += 1  # the next address: on a cluster this node may be the one gone
            refused = isinstance(reason, ReplyError) and str(reason).startswith(REFUSALS)
            await asyncio.sleep(LISTEN_REFUSED_RETRY_SECONDS if refused else backoff)
            backoff = min(backoff * 2, LISTEN_BACKOFF_MAX_SECONDS)

    async def _listen(self, address: Address) -> None:
        """One connection: subscribe, then hand every message over until it breaks (an
        exception) or the server closes it (a return)."""
        if address.unix_path:
            opening = asyncio.open_unix_connection(address.unix_path, limit=READ_BYTES)
        else:
            opening = asyncio.open_connection(address.host, address.port, limit=READ_BYTES)
        try:
            reader, writer = await asyncio.wait_for(opening, self._timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"cannot connect to {address}: {exc}") from exc
        try:
            _keepalive(writer.get_extra_info("socket"))
            parser = hiredis.Reader(replyError=ReplyError, encoding="utf-8")
            setup: list[bytes] = []
            if address.password is not None:
                setup.append(pack_command(("AUTH", address.username, address.password)
                                          if address.username else ("AUTH", address.password)))
            setup.append(pack_command(("SUBSCRIBE", *self.channels)))
            writer.write(b"".join(setup))
            # AUTH's +OK, then one confirmation per channel, within the connect timeout.
            awaited = len(setup) - 1 + len(self.channels)
            async with asyncio.timeout(self._timeout):
                while awaited:
                    for reply in await self._replies(reader, parser):
                        if isinstance(reply, ReplyError):
                            raise reply
                        if isinstance(reply, list) and reply and reply[0] == "message":
                            self._changed(str(reply[1]))  # published during the setup
                        else:
                            awaited -= 1
            self.connected = True
            self.connects += 1
            if self._warned:
                log.info("change listener listens again at %s", address)
                self._warned = False
            self._call(self._on_connected)
            while True:
                for reply in await self._replies(reader, parser):
                    if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                        self._changed(str(reply[1]))
                    elif isinstance(reply, ReplyError):
                        raise reply
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _replies(reader: asyncio.StreamReader, parser: Any) -> list[Any]:
        data = await reader.read(READ_BYTES)
        if not data:
            raise RedisUnavailable("connection closed by the server")
        parser.feed(data)
        out = []
        while (reply := parser.gets()) is not False:
            out.append(reply)
        return out

    def _changed(self, channel: str) -> None:
        self._call(self._on_change, channel)

    @staticmethod
    def _call(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # the owner's bug must not turn into a reconnect loop
            log.exception("change listener: callback %r failed", callback)
