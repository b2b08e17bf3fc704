"""The call path's functions take their arguments packed, one FCALL argument for all of
them (lua/00_lib.lua args), and still read them one argument each: as a gateway of the
previous version sends them during an upgrade, and as this one sends values that hold a
NUL byte. Both shapes must give the same answers and store the same call."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from gateway.redis import contract
from gateway.redis.keys import call_fields, tenant_keys
from tests.support.gwclient import Gateway
from tests.test_call_records import LONDON, NEW_YORK, call_hash, pool_and_credit_users


def test_pack_argv_joins_the_values_or_leaves_them_when_one_holds_a_nul() -> None:
    assert contract.pack_argv(["t1", 42, ""]) == ["t1\x0042\x00\x00"]
    assert contract.pack_argv(["t1", "a\x00b", 1]) == ["t1", "a\x00b", 1]
    f = contract.END_CALL
    named: dict[str, contract.Arg] = dict(zip(f.argv, map(str, range(len(f.argv))),
                                              strict=True))
    assert f.argv_of(**named) == ["".join(f"{i}\x00" for i in range(len(f.argv)))]
    assert f.argv_of(**{**named, "how": b"switch"}) == [*map(str, range(8)), b"switch", "9"]
    assert all(f.packed for f in (contract.AUTHORIZE, contract.EXTEND, contract.END_CALL))


async def test_arguments_one_each_answer_and_store_as_packed_ones(
    gw: Gateway, tenant_id: str, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = tenant_id
    await pool_and_credit_users(gw, t)
    k = tenant_keys(t, gw.settings.partitions)

    def same(a: dict[str, Any], b: dict[str, Any]) -> None:
        assert {**a, "call_id": ""} == {**b, "call_id": ""}

    for user, to in (("us0", NEW_YORK), ("payg", LONDON)):
        answers: dict[str, list[dict[str, Any]]] = {}
        for shape in ("packed", "each"):
            with monkeypatch.context() as m:
                if shape == "each":  # every call path FCALL sends its values one by one
                    m.setattr(contract, "pack_argv", list)
                cid = f"{user}-{shape}"
                answers[shape] = [await gw.call(t, cid, to, user=user),
                                  await gw.call(t, cid, to, user=user)]  # D32 replay
                hashes = call_hash(redis_sync, k.call(cid))
                answers[shape] += [await gw.extend(t, cid, 100), await gw.end(t, cid, 150),
                                   await gw.req("GET", f"/v1/tenants/{t}/calls/{cid}")]
                # The stored call, but for the attempts that created and confirmed it.
                answers[shape].append({f: v for f, v in call_fields(hashes).items()
                                       if f not in ("n", "cn")})
        assert answers["each"][0]["decision"] == "allow"
        for a, b in zip(answers["packed"], answers["each"], strict=True):
            same(a, b)
