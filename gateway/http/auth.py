"""Bearer tokens and roles (api.md "Conventions").

Tokens are known only by their SHA-256; a presented token is hashed and looked up, and the
match is confirmed with a constant-time comparison. The bootstrap operator token of the
environment (CALLGATE_OPERATOR_TOKEN) is accepted as an operator token.

Roles: ``switch`` (call control), ``admin`` (tenant management and reports), ``operator``
(everything, every tenant). A switch or admin token acts only for its own tenants: another
tenant's path answers 404, exactly as a missing tenant would.

Tokens made at run time (gateway.http.tokens) join the same table: a background task of each
worker replaces it whole (`load_runtime`) when the token version in Redis moves, so a request
still costs one SHA-256 and one dict lookup, plus, for a token with an expiry, one reading of
the clock. The ids of run-time tokens used are noted in `seen` (a set, drained by the same
background task into Redis at most once a minute: the coarse ``last_used_at``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.config import TokenEntry
from gateway.rules.clock import Clock, SystemClock
from gateway.vocab import Role

_OPERATOR = Role.OPERATOR.value  # a plain string: checked on every request


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    role: str
    tenants: frozenset[str] | None  # None: every tenant (operator)

    def may_act_for(self, tenant_id: str) -> bool:
        return self.tenants is None or tenant_id in self.tenants

    def has_role(self, allowed: Sequence[str]) -> bool:
        return self.role == _OPERATOR or self.role in allowed


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# digest -> (digest, principal, expires_at seconds or None, made at run time)
_Entry = tuple[str, Principal, float | None, bool]


class Authenticator:
    def __init__(self, operator_token: str | None, tokens: Sequence[TokenEntry],
                 clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        static: dict[str, _Entry] = {}
        for t in tokens:
            tenants = None if t.role == Role.OPERATOR else frozenset(t.tenants)
            digest = t.sha256.lower()
            static[digest] = (digest, Principal(t.id, t.role, tenants), None, False)
        if operator_token:
            digest = token_sha256(operator_token)
            static[digest] = (digest, Principal("bootstrap", _OPERATOR, None), None, False)
        self._static = static  # the bootstrap: configuration file and environment
        self._by_hash: dict[str, _Entry] = dict(static)
        self.seen: set[str] = set()  # ids of run-time tokens used since the last drain

    def load_runtime(self, tokens: Iterable[tuple[str, Principal, float | None]]) -> None:
        """Replace the run-time tokens: (sha256 hex, principal, expires_at or None) each.
        The new table is built aside and swapped in whole; the bootstrap tokens stay."""
        table: dict[str, _Entry] = {}
        for digest, principal, expires_at in tokens:
            d = digest.lower()
            table[d] = (d, principal, expires_at, True)
        table.update(self._static)  # a bootstrap token always keeps its bootstrap meaning
        self._by_hash = table

    def runtime_count(self) -> int:
        return sum(1 for e in self._by_hash.values() if e[3])

    def drain_seen(self) -> set[str]:
        seen, self.seen = self.seen, set()
        return seen

    def authenticate(self, authorization: str | None) -> Principal | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = token_sha256(token.strip())
        # The lookup is keyed by the digest, so any timing it leaks is about a SHA-256 of
        # the token, which tells nothing about the token; the final comparison of the full
        # digest is constant-time all the same.
        entry = self._by_hash.get(digest)
        if entry is None:
            return None
        stored, principal, expires_at, runtime = entry
        if not hmac.compare_digest(stored, digest):
            return None
        if expires_at is not None and self._clock.now() >= expires_at:
            return None  # expired: checked here, against this worker's clock
        if runtime:
            self.seen.add(principal.token_id)
        return principal
