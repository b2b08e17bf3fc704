"""Bearer tokens and roles (api.md "Conventions").

Tokens are known only by their SHA-256; a presented token is hashed and looked up, and the
match is confirmed with a constant-time comparison. The bootstrap operator token of the
environment (CALLGATE_OPERATOR_TOKEN) is accepted as an operator token.

Roles: ``switch`` (call control), ``admin`` (tenant management and reports), ``operator``
(everything, every tenant). A switch or admin token acts only for its own tenants: another
tenant's path answers 404, exactly as a missing tenant would.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import TokenEntry

ROLES = ("switch", "admin", "operator")


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    role: str
    tenants: frozenset[str] | None  # None: every tenant (operator)

    def may_act_for(self, tenant_id: str) -> bool:
        return self.tenants is None or tenant_id in self.tenants

    def has_role(self, allowed: Sequence[str]) -> bool:
        return self.role == "operator" or self.role in allowed


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, operator_token: str | None, tokens: Sequence[TokenEntry]) -> None:
        self._by_hash: dict[str, tuple[str, Principal]] = {}
        for t in tokens:
            tenants = None if t.role == "operator" else frozenset(t.tenants)
            digest = t.sha256.lower()
            self._by_hash[digest] = (digest, Principal(t.id, t.role, tenants))
        if operator_token:
            digest = token_sha256(operator_token)
            self._by_hash[digest] = (digest, Principal("bootstrap", "operator", None))

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
        stored, principal = entry
        return principal if hmac.compare_digest(stored, digest) else None
