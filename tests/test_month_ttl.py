"""The month hash (a tenant's pool and spend usage of one month) expires long after its
month, without a cron job: its time to live is set when a pool's first minutes of the month
are reserved, and by every end and credit reservation; a later pool grant does not renew
it (an EXPIRE per authorize was 4 % of the function)."""

from __future__ import annotations

from typing import cast

import redis

from gateway.redis.contract import MONTH_TTL_SECONDS
from gateway.redis.keys import tenant_keys
from tests.support.gwclient import Gateway

NEW_YORK = "+12125550123"
TTL_SECONDS = MONTH_TTL_SECONDS


def ttl(redis_sync: redis.Redis, key: str) -> int:
    return cast(int, redis_sync.ttl(key))


async def month_of_a_pool_user(gw: Gateway, t: str) -> str:
    """Tenant t with user u on a domestic pool; the key of the month of the tests' clock."""
    await gw.tenant(t)
    await gw.user(t, "u", "US", "domestic")
    return tenant_keys(t, gw.settings.partitions).month("202611")


async def test_first_grant_of_the_month_sets_the_ttl_later_ones_leave_it(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    t = tenant_id
    month = await month_of_a_pool_user(gw, t)
    assert not redis_sync.exists(month)

    await gw.call(t, "c1", NEW_YORK, user="u")
    assert TTL_SECONDS - 60 <= ttl(redis_sync, month) <= TTL_SECONDS

    redis_sync.expire(month, 1000)  # as if set long ago
    await gw.call(t, "c2", NEW_YORK, user="u")
    assert ttl(redis_sync, month) <= 1000  # not renewed by a later grant

    # Every call ends: the pool's reserved field goes, the used one stays (written before
    # the reservation is released, the hash is never emptied and written again), and the
    # time to live the first write set stands: end need not renew it.
    await gw.end(t, "c1", 30)
    await gw.end(t, "c2", 30)
    assert 0 < ttl(redis_sync, month) <= 1000
    assert cast(bytes, redis_sync.hget(month, "u:US:domestic:domestic")) == b"2"


async def test_a_month_hash_emptied_and_written_again_gets_a_ttl(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis
) -> None:
    """An unanswered call ends with nothing used: its month's fields are all deleted, and
    so the hash; the next grant creates it again, with its time to live."""
    t = tenant_id
    month = await month_of_a_pool_user(gw, t)
    await gw.call(t, "c1", NEW_YORK, user="u")
    await gw.end(t, "c1", 0)
    assert not redis_sync.exists(month)
    await gw.call(t, "c2", NEW_YORK, user="u")
    assert TTL_SECONDS - 60 <= ttl(redis_sync, month) <= TTL_SECONDS
