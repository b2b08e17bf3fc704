from tests.support.gwclient import Gateway


async def test_domestic_call_allowed_and_billed(gw: Gateway, tenant_id: str) -> None:
    t = tenant_id
    await gw.tenant(t)
    await gw.user(t, "alice", "US", "domestic")
    d = await gw.call(t, "c1", "+12125550123", user="alice")
    assert d["decision"] == "allow", d
    assert d["source"] == "domestic_pool"
    assert d["granted_seconds"] == 300
    b = await gw.end(t, "c1", 61)
    assert b["billed"]["domestic_pool_minutes"] == 2, b
    p = await gw.pool(t, "US", "domestic", "domestic")
    assert p["used_minutes"] == 2 and p["reserved_minutes"] == 0 and p["capacity_minutes"] == 3000


async def test_suite_runs_on_uvloop() -> None:
    import asyncio

    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
