"""The gateway's own Redis client (gateway/redis/client.py) against a real redis-server:
how it batches the commands of one event-loop tick into writes."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.redis.client import FLUSH_EVERY, Address, NodeClient, RedisUnavailable, pack_command
from gateway.redis.server import RedisServer


class CountingTransport:
    """Forwards to the connection's transport and records how many commands each write
    carried (every command here is one RESP array of three bulk strings)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.commands_per_write: list[int] = []

    def write(self, data: bytes) -> None:
        self.commands_per_write.append(data.count(b"*3\r\n"))
        self.transport.write(data)

    def close(self) -> None:
        self.transport.close()


async def test_a_tick_of_commands_goes_out_in_writes_of_flush_every(
    own_redis: RedisServer
) -> None:
    """Commands sent in one tick are written as soon as FLUSH_EVERY wait, the rest at the
    end of the tick (so Redis starts on the first while the worker prepares the others),
    and every reply still reaches its own caller, in order."""
    client = NodeClient(Address(port=own_redis.port), connect_timeout_s=5.0)
    assert await client.execute("PING") == "PONG"
    proto = client._proto
    assert proto is not None and proto._transport is not None
    counting = CountingTransport(proto._transport)
    proto._transport = counting  # type: ignore[assignment]
    n = 2 * FLUSH_EVERY + FLUSH_EVERY // 2
    replies = await asyncio.gather(*(client.execute("INCRBY", "k", str(i)) for i in range(n)))
    assert counting.commands_per_write == [FLUSH_EVERY, FLUSH_EVERY, FLUSH_EVERY // 2]
    assert replies == [sum(range(i + 1)) for i in range(n)]
    # Below FLUSH_EVERY, one write per tick, as before.
    counting.commands_per_write.clear()
    await asyncio.gather(*(client.execute("INCRBY", "k", "1") for _ in range(3)))
    assert counting.commands_per_write == [3]
    proto.close()


async def test_a_command_sent_on_a_lost_connection_fails_at_once(
    own_redis: RedisServer
) -> None:
    """A caller can hold a connection that is lost before it sends (NodeClient resumes a
    caller some time after the connection was made, and Redis may die in between). Its
    command must fail with RedisUnavailable, not wait for a reply that cannot come: a
    caller without a deadline (the persister) would wait forever."""
    client = NodeClient(Address(port=own_redis.port), connect_timeout_s=5.0)
    assert await client.execute("PING") == "PONG"
    proto = client._proto
    assert proto is not None
    own_redis.kill()
    deadline = asyncio.get_running_loop().time() + 10.0
    while not proto.closed:
        assert asyncio.get_running_loop().time() < deadline, "connection loss not seen"
        await asyncio.sleep(0.01)
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    proto.send(pack_command(("PING",)), fut)
    assert fut.done() and isinstance(fut.exception(), RedisUnavailable)
