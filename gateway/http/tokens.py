"""API tokens made at run time (api.md, "Tokens"): the store, each worker's cache, pickup.

A token is ``cg_`` + 32 random bytes (256 bits, URL-safe base64); its id is ``tok_`` + 16
hex digits. Redis keeps only the token's SHA-256, in a JSON record on the ``{tokens}:all``
hash (keys.py); the secret is in the create answer and nowhere else, never logged.

Pickup, as for rate decks (gateway.rules.decks): create and revoke bump ``{tokens}:version`` in
the same function call (lua/85_token_create.lua) and PUBLISH the new value on the channel of
that name. Every worker listens there (gateway.redis.changes) and, woken, reads the counter
(one GET); when it moved, it reads the whole table (one HGETALL) and swaps it into its
Authenticator. So a revoked token answers 401 on every worker a round trip or two after the
revoke, well within the 1 s of api.md, and call control still makes exactly one Redis round
trip: the token check is a dict lookup in memory. A message lost while a listener was
disconnected is caught by the re-read on its reconnect, and in any case by the one every
`TOKEN_RECHECK_SECONDS`. Expiry is checked in memory at each request, against the worker's
clock.

``last_used_at`` is coarse and off the call path: the Authenticator notes the ids it saw in a
set, and the token step writes them (one FCALL, "set if newer") at most once every
`LAST_USED_FLUSH_SECONDS`, and once more when the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import RoleNotAllowed
from gateway.http.auth import Authenticator, Principal, token_sha256
from gateway.redis import contract
from gateway.redis.keys import TOKENS, TOKENS_EVENTS, TOKENS_USED, TOKENS_VERSION
from gateway.redis.store import Status, Store, StoreError
from gateway.rules.clock import Clock, parse_rfc3339, rfc3339
from gateway.validate import ID_RE, Fields
from gateway.vocab import Role

log = logging.getLogger(__name__)

ROLES = tuple(r.value for r in Role)

# How often a worker reads the tokens' version although nothing was pushed: the safety net
# under the pushed changes (a message lost without the listener noticing), not the path a
# revocation takes. Each read wakes an idle worker and Redis: api.md asks for 1 s when the
# push works, and this keeps a silently deaf listener from lasting more than a few seconds.
TOKEN_RECHECK_SECONDS = 5.0
# How often at most a worker writes the ids of the tokens it saw (last_used_at).
LAST_USED_FLUSH_SECONDS = 60.0

SECRET_PREFIX = "cg_"
ID_PREFIX = "tok_"
TOKEN_ID_RE = re.compile(r"tok_[0-9a-f]{16}", re.ASCII)
DESCRIPTION_MAX = 200
TENANTS_MAX = 100
# Expiry at most this far ahead (year 9999 and beyond break RFC 3339 formatting).
EXPIRES_MAX_SECONDS = 100 * 366 * 86400

TOKEN_FIELDS = ("role", "tenants", "description", "expires_at")


def new_secret() -> str:
    """``cg_`` + 256 bits of randomness."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_token_id() -> str:
    return ID_PREFIX + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class TokenSpec:
    role: str
    tenants: tuple[str, ...]
    description: str | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One run-time token as Redis holds it: its SHA-256, never the token."""

    id: str
    sha256: str
    role: str
    tenants: tuple[str, ...]
    description: str | None
    created_at: int
    expires_at: int | None
    created_by: str

    def to_json(self) -> bytes:
        return orjson.dumps({
            "sha256": self.sha256, "role": self.role, "tenants": list(self.tenants),
            "description": self.description, "created_at": self.created_at,
            "expires_at": self.expires_at, "created_by": self.created_by,
        })

    @classmethod
    def from_json(cls, token_id: str, raw: str | bytes) -> TokenRecord:
        """Raises ValueError (or KeyError, TypeError) for a record that is not one."""
        d = orjson.loads(raw)
        sha = str(d["sha256"]).lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError("sha256 is not 64 hex digits")
        role = str(d["role"])
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        expires = d.get("expires_at")
        return cls(token_id, sha, role, tuple(str(t) for t in d.get("tenants") or ()),
                   d.get("description"), int(d["created_at"]),
                   None if expires is None else int(expires), str(d.get("created_by", "")))

    def principal(self) -> Principal:
        return Principal(self.id, self.role,
                         None if self.role == Role.OPERATOR else frozenset(self.tenants))

    def public(self, last_used_at: int | None = None) -> dict[str, Any]:
        """The token as the API shows it: everything but its secret and its hash."""
        return {
            "id": self.id, "role": self.role, "tenants": list(self.tenants),
            "description": self.description, "created_at": rfc3339(self.created_at),
            "expires_at": None if self.expires_at is None else rfc3339(self.expires_at),
            "last_used_at": None if last_used_at is None else rfc3339(last_used_at),
        }

    def created(self, secret: str) -> dict[str, Any]:
        """The create answer: the only place the secret ever appears."""
        body = self.public()
        del body["last_used_at"]
        return {"id": body.pop("id"), "token": secret, **body}

    def of_tenant(self, tenant_id: str) -> bool:
        """A token a tenant's admin manages: a switch token of that one tenant only."""
        return self.role == Role.SWITCH and self.tenants == (tenant_id,)


def parse_token_spec(body: dict[str, Any], now: int,
                     tenant_id: str | None = None) -> TokenSpec:
    """The create request. ``tenant_id``: the tenant route (an admin's), where the role is
    ``switch`` (the default; another one raises RoleNotAllowed, 403) and the tenants are
    that tenant (the default; another list is a 400 naming ``tenants``)."""
    f = Fields(body, TOKEN_FIELDS)
    role = f.choice("role", ROLES, required=tenant_id is None,
                    default=Role.SWITCH.value if tenant_id is not None else None)
    tenants: list[str] = []
    if f.has("tenants"):
        for i, name in enumerate(f.string_list("tenants", max_items=TENANTS_MAX)):
            if ID_RE.fullmatch(name) is None:
                f.fail(f"tenants[{i}]", "must be 1-64 characters of [A-Za-z0-9._-]")
            elif name in tenants:
                f.fail(f"tenants[{i}]", "is listed twice")
            else:
                tenants.append(name)
    if tenant_id is not None:
        if f.has("tenants") and tenants != [tenant_id]:
            f.fail("tenants", f"on this route a token acts for {tenant_id} only: give "
                              f"[\"{tenant_id}\"] or leave it out")
        tenants = [tenant_id]
    elif role == Role.OPERATOR and tenants:
        f.fail("tenants", "an operator token acts for every tenant: list none")
    elif role in (Role.SWITCH, Role.ADMIN) and not tenants and not any(
            e.field.startswith("tenants") for e in f.errors):
        f.fail("tenants", f"a {role} token needs the list of tenants it acts for")
    description = f.string("description", max_len=DESCRIPTION_MAX)
    if description is not None and not description.isprintable():
        f.fail("description", "must be printable text")
        description = None
    expires_at: int | None = None
    raw_expiry = f.raw("expires_at")
    if raw_expiry is not None:
        if not isinstance(raw_expiry, str):
            f.fail("expires_at", "must be an RFC 3339 time (e.g. 2027-01-31T00:00:00Z) or null")
        else:
            expires_at = parse_rfc3339(raw_expiry) if len(raw_expiry) <= 64 else None
            if expires_at is None:
                f.fail("expires_at", "must be an RFC 3339 time with offset, e.g. "
                                     "2027-01-31T00:00:00Z, or null")
            elif expires_at <= now:
                f.fail("expires_at", f"must lie in the future (now is {rfc3339(now)})")
                expires_at = None
            elif expires_at > now + EXPIRES_MAX_SECONDS:
                f.fail("expires_at", "must lie within 100 years")
                expires_at = None
    f.done()
    assert role is not None
    if tenant_id is not None and role != Role.SWITCH:
        raise RoleNotAllowed(role)
    return TokenSpec(role, tuple(tenants), description, expires_at)


# -- the store ------------------------------------------------------------------------------


async def create_token(store: Store, spec: TokenSpec, now: int,
                       actor: str) -> tuple[TokenRecord, str]:
    """Store a new token (its SHA-256 only); the record and the secret, shown once."""
    for _ in range(5):  # an id already taken (2^-64 odds): draw another
        secret = new_secret()
        record = TokenRecord(new_token_id(), token_sha256(secret), spec.role, spec.tenants,
                             spec.description, now, spec.expires_at, actor)
        f = contract.TOKEN_CREATE
        try:
            await store.run(f, f.keys_of(tokens=TOKENS, version=TOKENS_VERSION,
                                         events=TOKENS_EVENTS),
                            f.argv_of(token_id=record.id, record=record.to_json(), now=now))
        except StoreError as exc:
            if exc.status is not Status.IDEMPOTENCY_CONFLICT:
                raise
        else:
            log.info("token %s created by %s: role %s, tenants %s, expires %s", record.id,
                     actor, record.role, ",".join(record.tenants) or "*",
                     "never" if record.expires_at is None else rfc3339(record.expires_at))
            return record, secret
    raise RuntimeError("could not draw a free token id")


async def read_tokens(store: Store) -> list[TokenRecord]:
    """Every valid run-time token in Redis; an invalid record is logged and left out."""
    flat = await store.raw(TOKENS, "HGETALL", TOKENS)
    out = []
    for i in range(0, len(flat), 2):
        token_id = str(flat[i])
        try:
            out.append(TokenRecord.from_json(token_id, flat[i + 1]))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("token %s in Redis is invalid, ignored: %s", token_id, exc)
    return out


async def list_tokens(store: Store, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """The tokens without their secrets, oldest first; ``tenant_id``: only the switch tokens
    of that tenant (what its admin manages)."""
    records = await read_tokens(store)
    flat = await store.raw(TOKENS_USED, "HGETALL", TOKENS_USED)
    used = {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
    if tenant_id is not None:
        records = [r for r in records if r.of_tenant(tenant_id)]
    records.sort(key=lambda r: (r.created_at, r.id))
    return [r.public(used.get(r.id)) for r in records]


async def revoke_token(store: Store, token_id: str, tenant_id: str | None = None,
                       actor: str = "", now: int | None = None) -> bool:
    """Delete a token; False if there is none (or, with ``tenant_id``, none that this
    tenant's admin manages)."""
    f = contract.TOKEN_REVOKE
    try:
        await store.run(
            f, f.keys_of(tokens=TOKENS, version=TOKENS_VERSION, used=TOKENS_USED,
                         events=TOKENS_EVENTS),
            f.argv_of(token_id=token_id, tenant_id=tenant_id or "",
                      now=int(time.time()) if now is None else now, actor=actor))
    except StoreError as exc:
        if exc.status is Status.NOT_FOUND:
            return False
        raise
    log.info("token %s revoked by %s", token_id, actor or "the command line")
    return True


async def record_seen(store: Store, token_ids: Sequence[str], now: int) -> None:
    """last_used_at = now for these ids, where that is newer (one FCALL)."""
    if token_ids:
        f = contract.TOKENS_SEEN
        await store.run(f, f.keys_of(tokens=TOKENS, used=TOKENS_USED),
                        f.argv_of(sorted(token_ids), now=now))


# -- each worker's cache ---------------------------------------------------------------------


class TokenTable:
    """Keeps one worker's Authenticator in step with the tokens in Redis."""

    __slots__ = ("_lock", "auth", "version")

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self.version: int | None = None  # the counter last loaded; None: nothing loaded yet
        # One refresh at a time: the poller's and a handler's (after a change) must not
        # interleave, or an older table read first could be swapped in last.
        self._lock = asyncio.Lock()

    async def refresh(self, store: Store) -> bool:
        """Reload the table if the version moved (one GET, plus one HGETALL when it did);
        True if it was reloaded. Any other value than the last one loaded (a Redis emptied
        and restarted too) reloads."""
        async with self._lock:
            return await self._refresh(store)

    async def _refresh(self, store: Store) -> bool:
        raw = await store.raw(TOKENS_VERSION, "GET", TOKENS_VERSION)
        version = int(raw) if raw is not None else 0
        if version == self.version:
            return False
        records = await read_tokens(store)
        self.auth.load_runtime((r.sha256, r.principal(), r.expires_at) for r in records)
        if self.version is not None or records:
            log.info("tokens: version %d loaded (%d run-time tokens)", version, len(records))
        self.version = version
        return True

    async def flush_seen(self, store: Store, clock: Clock) -> None:
        """Write the ids used since the last flush; on failure keep them for the next."""
        seen = self.auth.drain_seen()
        try:
            await record_seen(store, sorted(seen), int(clock.now()))
        except BaseException:
            self.auth.seen |= seen
            raise


def token_poll_step(store: Store, table: TokenTable, clock: Clock,
                    flush_every_s: float = LAST_USED_FLUSH_SECONDS
                    ) -> Callable[[], Awaitable[None]]:
    """One read of the tokens' version (a reload when it moved), and the last uses written
    every ``flush_every_s`` (checked whenever the step runs: on a push or the recheck)."""
    loop = asyncio.get_running_loop()
    next_flush = loop.time() + flush_every_s

    async def step() -> None:
        nonlocal next_flush
        await table.refresh(store)
        if loop.time() >= next_flush:
            next_flush = loop.time() + flush_every_s
            await table.flush_seen(store, clock)

    return step
