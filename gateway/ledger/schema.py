"""The ledger schema: versioned migrations, plain SQL valid on SQLite and PostgreSQL.

Migration N runs once, in one transaction, and records N in ``schema_version``; never edit
a released migration, append a new one. Money is integer micro-units, time integer seconds
since the epoch, stream entry ids the Redis text form ("ms-seq").
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        # Every stream entry once: (stream, entry_id) is the idempotency key of persistence.
        """CREATE TABLE events (
            stream TEXT NOT NULL, entry_id TEXT NOT NULL, entry_ms BIGINT NOT NULL,
            type TEXT NOT NULL, tenant TEXT NOT NULL, ts BIGINT NOT NULL, data TEXT NOT NULL,
            PRIMARY KEY (stream, entry_id))""",
        "CREATE INDEX events_tenant_ts ON events (tenant, ts)",
        """CREATE TABLE tenants (
            tenant TEXT PRIMARY KEY, name TEXT NOT NULL, currency TEXT NOT NULL,
            timezone TEXT NOT NULL, charge_inbound_calls INTEGER NOT NULL,
            max_concurrent_calls TEXT NOT NULL, balance_micro BIGINT NOT NULL,
            created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)""",
        """CREATE TABLE users (
            tenant TEXT NOT NULL, user_id TEXT NOT NULL, record TEXT NOT NULL,
            updated_at BIGINT NOT NULL, PRIMARY KEY (tenant, user_id))""",
        """CREATE TABLE topups (
            tenant TEXT NOT NULL, idempotency_key TEXT NOT NULL, amount_micro BIGINT NOT NULL,
            balance_after_micro BIGINT NOT NULL, ts BIGINT NOT NULL, actor TEXT NOT NULL,
            PRIMARY KEY (tenant, idempotency_key))""",
        """CREATE TABLE tollfree_numbers (
            tenant TEXT NOT NULL, number TEXT NOT NULL, added_at BIGINT NOT NULL,
            PRIMARY KEY (tenant, number))""",
        # Calls from authorization on; state active | denied | ended | expired.
        """CREATE TABLE calls (
            tenant TEXT NOT NULL, call_id TEXT NOT NULL, state TEXT NOT NULL,
            direction TEXT NOT NULL, user_id TEXT NOT NULL, from_number TEXT NOT NULL,
            to_number TEXT NOT NULL, dest_country TEXT NOT NULL, dest_class TEXT NOT NULL,
            month TEXT NOT NULL, pool TEXT NOT NULL, rate_prefix TEXT NOT NULL,
            reason TEXT NOT NULL, started_at BIGINT NOT NULL, authorized_at BIGINT NOT NULL,
            pool_reserved_minutes BIGINT NOT NULL, credits_reserved_micro BIGINT NOT NULL,
            PRIMARY KEY (tenant, call_id))""",
        # One row per ended (or expired, D33) call.
        """CREATE TABLE cdrs (
            tenant TEXT NOT NULL, call_id TEXT NOT NULL, user_id TEXT NOT NULL,
            direction TEXT NOT NULL, from_number TEXT NOT NULL, to_number TEXT NOT NULL,
            dest_country TEXT NOT NULL, dest_class TEXT NOT NULL, started_at BIGINT NOT NULL,
            ended_at BIGINT NOT NULL, duration_seconds BIGINT NOT NULL,
            billed_seconds BIGINT NOT NULL, overrun_seconds BIGINT NOT NULL,
            pool TEXT NOT NULL, month TEXT NOT NULL,
            domestic_pool_minutes BIGINT NOT NULL, international_pool_minutes BIGINT NOT NULL,
            credits_micro BIGINT NOT NULL, rate_prefix TEXT NOT NULL, reason TEXT NOT NULL,
            state TEXT NOT NULL, entry_id TEXT NOT NULL, PRIMARY KEY (tenant, call_id))""",
        "CREATE INDEX cdrs_tenant_ended ON cdrs (tenant, ended_at, call_id)",
    )),
    (2, (
        # An open call's whole Redis record (JSON object) and whether it counts against
        # concurrency limits: what `callgate rebuild` needs to restore open calls.
        "ALTER TABLE calls ADD COLUMN record TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE calls ADD COLUMN counted INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX calls_state ON calls (state, tenant)",
    )),
    (3, (
        # The tenant's own authorize rate ('' : the deployment's default), which
        # `callgate rebuild` restores with the other settings.
        "ALTER TABLE tenants ADD COLUMN authorizations_per_second TEXT NOT NULL DEFAULT ''",
    )),
    (4, (
        # The fields of the record the call's last extension wrote (JSON object; an
        # extension writes every field it changes, so the last one holds them all): the
        # open call's Redis record is `record` with these laid over it.
        "ALTER TABLE calls ADD COLUMN record_changes TEXT NOT NULL DEFAULT '{}'",
    )),
)

LATEST_VERSION = MIGRATIONS[-1][0]
