"""Kamailio in front of the gateway, driven by sipp (integrations/kamailio).

A real Kamailio (Debian's 5.6, `make test` installs it) runs integrations/kamailio/kamailio.cfg
on a free UDP port, pointed at a gateway served by the test; sipp plays the caller (the
scenarios in integrations/kamailio/sipp) and the trunk (sipp/uas_answer.xml).
Grants are 10 s here, so a 15 s call lives only if Kamailio extends it in time. Every call
here is of the proxy's default tenant (no trunk listed); tests/test_kamailio_tenants.py has
many tenants behind one proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.http.web import STORE
from gateway.ledger import open_ledger
from gateway.ledger.persister import Persister
from gateway.redis.server import RedisServer, free_port
from gateway.rules.clock import ManualClock
from loadtest.sip import SCENARIOS, Tenancy, kamcmd, sip_proxy, tools_missing
from tests.support.gateway import T0, start_gateway
from tests.support.gwclient import AUTH, OPERATOR_TOKEN, Gateway
from tests.support.persist_helpers import drain

TENANT = "kam"
DESTINATION = "+12125550123"
BUSY = "+12125550199"  # the trunk answers 486 (sipp/uas_answer.xml)
RINGING = "+12125550177"  # the trunk rings 2 s before it answers
GRANT_SECONDS = 10
TALK_MS = 15000
DEADLINE_SECONDS = 30  # for Kamailio to listen, and for each sipp run to finish


async def run_sipp(work: Path, *args: str, name: str, source: str = "127.0.0.1"
                   ) -> tuple[int, str]:
    """Run sipp from ``source`` (a loopback address: the caller's trunk) to completion (it
    exits on its own: -m, -timeout); rc and its errors."""
    errors = work / f"{name}.errors.log"
    proc = await asyncio.create_subprocess_exec(
        "sipp", *args, "-i", source, "-m", "1",
        "-timeout", f"{DEADLINE_SECONDS}s", "-timeout_error", "-nostdin",
        "-trace_err", "-error_file", str(errors),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = await proc.communicate()
    detail = stderr.decode(errors="replace")
    if errors.exists():
        detail += errors.read_text(errors="replace")
    detail += (work / "kamailio.log").read_text(errors="replace")[-4000:]
    assert proc.returncode is not None
    return proc.returncode, detail


async def dial(proxy_port: int, work: Path, scenario: str, caller: str, call_id: str,
               *extra: str, to: str = DESTINATION, source: str = "127.0.0.1"
               ) -> tuple[int, str]:
    """One call from ``caller`` to ``to`` through the proxy, as sipp/``scenario`` plays it
    from ``source``; the SIP Call-ID is ``call_id``."""
    return await run_sipp(
        work, "-sf", str(SCENARIOS / scenario), "-p", str(free_port()), "-s", to,
        "-key", "caller", caller, "-cid_str", call_id, *extra,
        f"127.0.0.1:{proxy_port}", name=call_id, source=source)


@dataclass
class Sip:
    gw: Gateway
    proxy_port: int
    work: Path

    async def call(self, scenario: str, caller: str, call_id: str, *extra: str,
                   to: str = DESTINATION) -> tuple[int, str]:
        return await dial(self.proxy_port, self.work, scenario, caller, call_id, *extra,
                          to=to)


def proxy(gateway_url: str, work: Path, tenancy: Tenancy | None = None
          ) -> contextlib.AbstractContextManager[int]:
    """Kamailio for ``gateway_url`` and the sipp trunk behind it; gives the proxy's port.
    By default every call is of TENANT (the default tenant: no trunk is listed)."""
    missing = tools_missing()
    if missing:
        pytest.fail(f"{' and '.join(missing)} needed: `make test` installs them")
    tenancy = tenancy or Tenancy(default_tenant=TENANT, token=OPERATOR_TOKEN)
    return sip_proxy(gateway_url, tenancy, work, extend_before=5, deadline_s=DEADLINE_SECONDS)


@pytest.fixture
async def sip(own_redis: RedisServer, aiohttp_client: Any, tmp_path: Path
              ) -> AsyncIterator[Sip]:
    gw = await start_gateway(aiohttp_client, ManualClock(T0), own_redis.url,
                             grant_seconds=GRANT_SECONDS,
                             database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    await gw.tenant(TENANT)
    await gw.user(TENANT, "alice", "US", "domestic")
    await gw.user(TENANT, "bob", "US", "domestic", dial_out="none")
    with proxy(f"http://127.0.0.1:{gw.client.server.port}", tmp_path) as port:
        yield Sip(gw, port, tmp_path)


async def test_allowed_call_is_extended_and_billed_when_the_caller_hangs_up(
        sip: Sip) -> None:
    rc, errors = await sip.call("uac_talk.xml", "alice", "kam-talk", "-d", str(TALK_MS))
    assert rc == 0, errors
    call = await ended_call(sip.gw, "kam-talk")
    assert call["user_id"] == "alice" and call["to"] == DESTINATION
    # Talked 15 s on 10 s grants: alive at the end only because Kamailio extended in time.
    assert call["duration_seconds"] >= TALK_MS // 1000
    assert len(call["grants"]) >= 2, call
    assert call["overrun_seconds"] == 0
    assert call["billed"]["domestic_pool_minutes"] == 1
    # Its end removed its pending extension by name (not by a scan of the table): nothing
    # of the call is left to fire later.
    for table in ("extend", "extn"):
        dump = kamcmd(sip.work, "htable.dump", table)
        assert "kam-talk" not in dump, dump


async def test_call_is_cut_when_the_money_runs_out(sip: Sip) -> None:
    """Credits for 10 s (a per-second deck): no extension goes past what the money buys,
    and the grant's expiry hangs up both sides."""
    await per_second_deck(sip.gw)
    await sip.gw.user(TENANT, "carol", "US", "pay_as_you_go")
    await sip.gw.topup(TENANT, "1.00", "carol-seed")
    rc, errors = await sip.call("uac_cut.xml", "carol", "kam-cut")
    assert rc == 0, errors
    call = await ended_call(sip.gw, "kam-cut")
    # Every extension was cut down to what 1.00 buys.
    assert call["granted_seconds_total"] == 10, call
    # Kamailio reports whole seconds, 9 or 10 by where the second boundaries fell; the time
    # past the grant (if any) is overrun, not billed.
    billed_seconds = call["duration_seconds"] - call["overrun_seconds"]
    assert billed_seconds in (9, 10), call
    charged = Decimal(call["billed"]["credits"])
    assert charged == Decimal("0.10") * billed_seconds, call
    balance = await sip.gw.req("GET", f"/v1/tenants/{TENANT}/credits")
    assert Decimal(balance["balance"]) == Decimal("1.00") - charged, balance
    assert Decimal(balance["reserved"]) == 0, balance


async def test_ringing_is_not_paid_for(sip: Sip) -> None:
    """A call that rang 2 s: its first grant's expiry (counted from the authorization) comes
    8 s after the answer, the extension asked before it renews it, and the caller talks the
    10 s the money buys, counted from the answer."""
    await per_second_deck(sip.gw)
    await sip.gw.user(TENANT, "carol", "US", "pay_as_you_go")
    await sip.gw.topup(TENANT, "1.00", "carol-seed")
    rc, errors = await sip.call("uac_cut.xml", "carol", "kam-ring", to=RINGING)
    assert rc == 0, errors
    call = await ended_call(sip.gw, "kam-ring")
    assert call["granted_seconds_total"] == 10, call
    billed_seconds = call["duration_seconds"] - call["overrun_seconds"]
    assert billed_seconds in (9, 10), call  # whole seconds, as Kamailio reports them
    assert Decimal(call["billed"]["credits"]) == Decimal("0.10") * billed_seconds


async def test_unanswered_call_gives_its_reservation_back(sip: Sip) -> None:
    rc, errors = await sip.call("uac_busy.xml", "alice", "kam-busy", to=BUSY)
    assert rc == 0, errors
    call = await ended_call(sip.gw, "kam-busy")
    assert call["decision"] == "allow" and call["duration_seconds"] == 0, call
    assert call["billed"]["domestic_pool_minutes"] == 0
    pools = await sip.gw.req("GET", f"/v1/tenants/{TENANT}/pools")
    assert [(p["used_minutes"], p["reserved_minutes"]) for p in pools["pools"]] == [(0, 0)]


async def test_denied_call_gets_the_gateways_sip_code(sip: Sip) -> None:
    rc, errors = await sip.call("uac_denied.xml", "bob", "kam-denied")
    assert rc == 0, errors
    call = await sip.gw.req("GET", f"/v1/tenants/{TENANT}/calls/kam-denied")
    assert (call["decision"], call["reason"]) == ("deny", "dial_out_policy")


async def per_second_deck(gw: Gateway) -> None:
    """New York at 0.10 a second: 1.00 buys exactly 10 s."""
    deck = ("prefix,description,kind,rate_per_minute,connection_fee,initial_increment,"
            "subsequent_increment\n1212,New York (per second),outbound,6.0000,0.0000,1,1\n")
    await gw.req("PUT", "/v1/rate-decks/USD", raw=deck.encode(),
                 headers={**AUTH, "Content-Type": "text/csv"})


async def ended_call(gw: Gateway, call_id: str, tenant: str = TENANT) -> Any:
    """The call once Kamailio's end (sent as the dialog ends) has reached the gateway."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        call = await gw.req("GET", f"/v1/tenants/{tenant}/calls/{call_id}")
        if call["state"] == "ended":
            break
        assert time.monotonic() < deadline, call
        await asyncio.sleep(0.05)
    # Redis keeps of a closed call only what its repeats answer; GET reads the rest (numbers,
    # grants) from the ledger, once the persister (here drained by hand) has written it.
    ledger = await open_ledger(gw.settings.database_url_effective)
    try:
        await drain(Persister(gw.client.server.app[STORE], ledger, consumer="test"))
    finally:
        await ledger.close()
    return await gw.req("GET", f"/v1/tenants/{tenant}/calls/{call_id}")


async def test_without_the_gateway_only_emergency_calls_go_through(tmp_path: Path) -> None:
    """Nothing listens at the gateway's address: a call is refused with 503, and an
    emergency call is relayed all the same (life safety first)."""
    with proxy(f"http://127.0.0.1:{free_port()}", tmp_path) as port:
        rc, errors = await dial(port, tmp_path, "uac_unavailable.xml", "alice", "kam-down")
        assert rc == 0, errors
        rc, errors = await dial(port, tmp_path, "uac_talk.xml", "alice", "kam-911", "-d",
                                "500", to="911")
        assert rc == 0, errors
