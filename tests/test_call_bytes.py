"""Redis memory per call, measured (MEMORY USAGE is exact for these small keys): a closed
call keeps only what its repeats answer (D31, D32), so Redis grows with live calls, not with
history. The figures are those of docs/capacity.md (ids as long as these: a 14-character
tenant id, call ids of up to 24 characters)."""

from __future__ import annotations

from typing import cast

import redis

from gateway.redis.keys import tenant_keys
from tests.support.gwclient import Gateway

NEW_YORK = "+12125550123"
# A call id of the length a switch sends (a SIP Call-ID's random part is often 24 chars).
CALL = "a3f9c2e1b7d84c05a9e6f1b2"

# Bounds with a few bytes of slack over what Redis 7 reports (docs/capacity.md).
ACTIVE_BYTES_MAX = 700  # an open call: its whole record, one field
ENDED_BYTES_MAX = 200
DENIED_BYTES_MAX = 170
USER_BYTES_MAX = 230


def usage(redis_sync: redis.Redis, key: str) -> int:
    return int(cast(int, redis_sync.memory_usage(key, samples=0)))


async def test_bytes_of_an_active_an_ended_and_a_denied_call_and_of_a_user(
        gw: Gateway, tenant_id: str, redis_sync: redis.Redis) -> None:
    t = tenant_id
    await gw.tenant(t)
    k = tenant_keys(t, gw.settings.partitions)
    users_before = usage(redis_sync, k.users) if redis_sync.exists(k.users) else 0
    for u in range(100):
        await gw.user(t, f"user{u:04d}", "US", "domestic")
    per_user = (usage(redis_sync, k.users) - users_before) / 100

    assert (await gw.call(t, CALL, NEW_YORK, user="user0000"))["decision"] == "allow"
    active = usage(redis_sync, k.call(CALL))
    await gw.extend(t, CALL, 30)
    extended = usage(redis_sync, k.call(CALL))
    await gw.end(t, CALL, 45)
    ended = usage(redis_sync, k.call(CALL))
    denied_id = CALL[:-1] + "x"
    assert (await gw.call(t, denied_id, "+99912345", user="user0000"))["decision"] == "deny"
    denied = usage(redis_sync, k.call(denied_id))
    print({"active": active, "extended once": extended, "ended": ended, "denied": denied,
           "user": per_user})
    assert active <= ACTIVE_BYTES_MAX and extended <= ACTIVE_BYTES_MAX
    assert ended <= ENDED_BYTES_MAX
    assert denied <= DENIED_BYTES_MAX
    assert per_user <= USER_BYTES_MAX
    # Kept for the replay window, then nothing.
    ttl = cast(int, redis_sync.ttl(k.call(CALL)))
    assert 0 < ttl <= gw.settings.call_retention_seconds
    assert 0 < cast(int, redis_sync.ttl(k.call(denied_id))) <= gw.settings.call_retention_seconds
