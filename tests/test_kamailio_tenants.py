"""One Kamailio for many tenants (integrations/kamailio/kamailio.cfg, docs/kamailio.md).

Two trunks on distinct loopback addresses (127.0.0.2 for acme, 127.0.0.3 for globex), a
trusted upstream (127.0.0.4) that names the tenant in X-Callgate-Tenant, and no default
tenant. acme calls with a token of its own that only it may use; globex and initech share
one switch token listing both, the proxy's default token. The same user id, alice, exists
in every tenant, with a minute pool in acme and initech and prepaid credits in globex, so a
call billed to the wrong tenant shows.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.config import TokenEntry
from gateway.redis.server import RedisServer
from gateway.rules.clock import ManualClock
from loadtest.sip import Tenancy, kamcmd, write_sources, write_tokens
from loadtest.sip_bench import slow_link
from tests.support.gateway import T0, start_gateway
from tests.support.gwclient import OPERATOR_TOKEN, Gateway
from tests.test_kamailio import DEADLINE_SECONDS, GRANT_SECONDS, TALK_MS, dial, ended_call, proxy

ACME_TRUNK, GLOBEX_TRUNK, UPSTREAM, STRANGER = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
UMBRELLA_TRUNK = "127.0.0.6"
ACME_TOKEN = "acme-switch-token-0123456789abcdef"
UMBRELLA_TOKEN = "umbrella-switch-token-0123456789abcdef"
SHARED_TOKEN = "shared-switch-token-0123456789abcdef"  # globex and initech


def token_entry(token_id: str, token: str, *tenants: str) -> TokenEntry:
    return TokenEntry(token_id, hashlib.sha256(token.encode()).hexdigest(), "switch", tenants)


TENANCY = Tenancy(
    default_tenant="", token=SHARED_TOKEN,
    trunks={ACME_TRUNK: "acme", GLOBEX_TRUNK: "globex"}, trusted=(UPSTREAM,),
    tokens={"acme": ACME_TOKEN})


@dataclass
class Proxy:
    gw: Gateway
    port: int
    work: Path

    async def call(self, source: str, scenario: str, call_id: str, *extra: str
                   ) -> tuple[int, str]:
        return await dial(self.port, self.work, scenario, "alice", call_id, *extra,
                          source=source)

    async def talk(self, source: str, call_id: str, ms: int = 1000,
                   tenant_header: str | None = None) -> None:
        if tenant_header is None:
            rc, errors = await self.call(source, "uac_talk.xml", call_id, "-d", str(ms))
        else:
            rc, errors = await self.call(source, "uac_talk_tenant.xml", call_id, "-d", str(ms),
                                         "-key", "tenant", tenant_header)
        assert rc == 0, errors

    async def refused_as_unknown(self, source: str, call_id: str, tenant_header: str) -> None:
        """The call is answered 403 "Unknown source" (uac_unknown.xml checks the phrase)."""
        rc, errors = await self.call(source, "uac_unknown.xml", call_id,
                                     "-key", "tenant", tenant_header)
        assert rc == 0, errors

    def log(self) -> str:
        return (self.work / "kamailio.log").read_text(errors="replace")


@pytest.fixture
async def sip(own_redis: RedisServer, aiohttp_client: Any, tmp_path: Path
              ) -> AsyncIterator[Proxy]:
    tokens = (token_entry("acme-switch", ACME_TOKEN, "acme"),
              token_entry("shared-switch", SHARED_TOKEN, "globex", "initech"),
              token_entry("umbrella-switch", UMBRELLA_TOKEN, "umbrella"))
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url,
                             grant_seconds=GRANT_SECONDS, tokens=tokens,
                             database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    for tenant in ("acme", "globex", "initech", "umbrella"):
        await gw.tenant(tenant)
    await gw.user("acme", "alice", "US", "domestic")
    await gw.user("umbrella", "alice", "US", "domestic")
    await gw.user("initech", "alice", "US", "domestic")
    await gw.user("globex", "alice", "US", "pay_as_you_go")
    await gw.topup("globex", "5.00", "globex-seed")
    with proxy(f"http://127.0.0.1:{gw.client.server.port}", tmp_path, TENANCY) as port:
        yield Proxy(gw, port, tmp_path)


async def no_call(gw: Gateway, tenant: str, call_id: str) -> None:
    await gw.req("GET", f"/v1/tenants/{tenant}/calls/{call_id}", status=404)


async def test_calls_from_each_trunk_are_billed_to_its_tenant(sip: Proxy) -> None:
    """acme's trunk: acme's pool, through acme's own token (the shared one may not act for
    acme); globex's trunk: globex's credits, through the token globex shares with initech."""
    await asyncio.gather(sip.talk(ACME_TRUNK, "from-acme"), sip.talk(GLOBEX_TRUNK, "from-globex"))
    acme = await ended_call(sip.gw, "from-acme", "acme")
    assert acme["billed"]["domestic_pool_minutes"] == 1, acme
    assert Decimal(acme["billed"]["credits"]) == 0, acme
    globex = await ended_call(sip.gw, "from-globex", "globex")
    assert globex["billed"]["domestic_pool_minutes"] == 0, globex
    assert Decimal(globex["billed"]["credits"]) > 0, globex
    await no_call(sip.gw, "globex", "from-acme")
    await no_call(sip.gw, "acme", "from-globex")
    pools = await sip.gw.req("GET", "/v1/tenants/acme/pools")
    assert [(p["used_minutes"], p["reserved_minutes"]) for p in pools["pools"]] == [(1, 0)]
    credits = await sip.gw.req("GET", "/v1/tenants/globex/credits")
    assert Decimal(credits["balance"]) == Decimal("5.00") - Decimal(globex["billed"]["credits"])
    assert Decimal(credits["reserved"]) == 0, credits


async def test_unknown_source_is_refused_and_logged(sip: Proxy) -> None:
    """No trunk, not trusted, no default tenant: 403 Unknown source, whatever tenant the
    call names, and nothing reaches the gateway."""
    await sip.refused_as_unknown(STRANGER, "stranger", tenant_header="acme")
    for tenant in ("acme", "globex", "initech"):
        await no_call(sip.gw, tenant, "stranger")
    assert f"refused: unknown source {STRANGER}:" in sip.log()


async def test_tenant_header_counts_only_from_a_trusted_upstream(sip: Proxy) -> None:
    """From globex's trunk, a header naming acme changes nothing: the trunk's tenant wins.
    From the trusted upstream, the header names the tenant; without it, the upstream is just
    an unknown source (there is no default tenant). The trunk behind the proxy answers 500
    to an INVITE that still carries the header (sipp/uas_answer.xml): relayed calls show
    that the proxy removed it."""
    await asyncio.gather(
        sip.talk(GLOBEX_TRUNK, "forged", tenant_header="acme"),
        sip.talk(UPSTREAM, "via-upstream", tenant_header="initech"),
        sip.refused_as_unknown(UPSTREAM, "upstream-no-header", tenant_header=""))
    forged = await ended_call(sip.gw, "forged", "globex")
    assert Decimal(forged["billed"]["credits"]) > 0, forged
    await no_call(sip.gw, "acme", "forged")
    via = await ended_call(sip.gw, "via-upstream", "initech")
    assert via["billed"]["domestic_pool_minutes"] == 1, via
    for tenant in ("acme", "globex"):
        await no_call(sip.gw, tenant, "via-upstream")


async def test_extensions_and_end_go_to_the_tenant_of_the_dialog(sip: Proxy) -> None:
    """A 15 s call on 10 s grants whose tenant came from the upstream's header: only its
    INVITE carried it, so its extension and its end found initech in the dialog."""
    await sip.talk(UPSTREAM, "long-upstream", ms=TALK_MS, tenant_header="initech")
    call = await ended_call(sip.gw, "long-upstream", "initech")
    assert len(call["grants"]) >= 2, call
    assert call["duration_seconds"] >= TALK_MS // 1000, call
    assert call["overrun_seconds"] == 0, call


async def test_trunks_and_tokens_reload_without_a_restart(sip: Proxy) -> None:
    """A new trunk for a new tenant, umbrella, whose only token is its own: refused before;
    once the address file and the tokens table are rewritten and reloaded with kamcmd, its
    calls go through (with the shared token the gateway would answer 404)."""
    await sip.refused_as_unknown(UMBRELLA_TRUNK, "before-reload", tenant_header="")
    write_sources(sip.work / "sources.list", {**TENANCY.trunks, UMBRELLA_TRUNK: "umbrella"},
                  TENANCY.trusted)
    tokens = {**TENANCY.tokens, "umbrella": UMBRELLA_TOKEN}
    deadline = time.monotonic() + DEADLINE_SECONDS
    # The module takes at most one address reload a second (reload_delta).
    while "Reload OK" not in await asyncio.to_thread(kamcmd, sip.work,
                                                     "permissions.addressReload"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    # db_text reads a table again when its file's mtime (whole seconds) has changed: written
    # in the second the proxy loaded it, the file is written again.
    while True:
        write_tokens(sip.work / "tokens-db", tokens)
        await asyncio.to_thread(kamcmd, sip.work, "htable.reload", "tokens")
        if "umbrella" in await asyncio.to_thread(kamcmd, sip.work, "htable.dump", "tokens"):
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    await sip.talk(UMBRELLA_TRUNK, "after-reload")
    call = await ended_call(sip.gw, "after-reload", "umbrella")
    assert call["billed"]["domestic_pool_minutes"] == 1, call


async def test_call_cancelled_while_it_is_authorized_gives_its_reservation_back(
        own_redis: RedisServer, aiohttp_client: Any, tmp_path: Path) -> None:
    """The gateway answers 3 s late (a slow link in front of it); the caller cancels half a
    second after the 100 Trying, while its INVITE waits in an async worker for the answer.
    The allowed call is never relayed, and its end gives the reservation back."""
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url,
                             grant_seconds=GRANT_SECONDS,
                             database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    await gw.tenant("acme")
    await gw.user("acme", "alice", "US", "domestic")
    tenancy = Tenancy(default_tenant="", token=OPERATOR_TOKEN, trunks={ACME_TRUNK: "acme"})
    with slow_link(f"http://127.0.0.1:{gw.client.server.port}", 3000) as url, \
            proxy(url, tmp_path, tenancy) as port:
        rc, errors = await dial(port, tmp_path, "uac_cancel.xml", "alice", "cancelled",
                                source=ACME_TRUNK)
        assert rc == 0, errors
        call = await ended_call(gw, "cancelled", "acme")
    assert call["decision"] == "allow" and call["duration_seconds"] == 0, call
    pools = await gw.req("GET", "/v1/tenants/acme/pools")
    assert [(p["used_minutes"], p["reserved_minutes"]) for p in pools["pools"]] == [(0, 0)]
