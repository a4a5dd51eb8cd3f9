"""The SQLite schema, as migrations applied in order on open.

`MIGRATIONS[n - 1]` takes a database from `PRAGMA user_version` n - 1 to n, in one transaction.
Append, never edit: a released migration has already run on someone's data.
"""

from __future__ import annotations

_V1 = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        priority INTEGER NOT NULL,
        idempotency_key TEXT,
        spec BLOB NOT NULL,
        state TEXT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX jobs_status_created ON jobs (status, created_at)",
    "CREATE INDEX jobs_created_id ON jobs (created_at, id)",
    "CREATE INDEX jobs_tenant_created_id ON jobs (tenant, created_at, id)",
    """
    CREATE TABLE agents (
        agent_id TEXT PRIMARY KEY,
        registered_at REAL NOT NULL,
        info TEXT NOT NULL
    )
    """,
)

# Results that leave the coordinator (issue 17): the webhook outbox, tenant settings, and the
# jobs deleted by retention whose outputs are still to remove.
_V2 = (
    """
    CREATE TABLE webhook_outbox (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        tenant TEXT NOT NULL,
        url TEXT NOT NULL,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        next_at REAL NOT NULL,
        attempts INTEGER NOT NULL,
        state TEXT NOT NULL,
        tries TEXT NOT NULL
    )
    """,
    "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at) WHERE state = 'pending'",
    "CREATE INDEX webhook_outbox_job ON webhook_outbox (job_id, created_at)",
    "CREATE TABLE tenants (tenant TEXT PRIMARY KEY, settings TEXT NOT NULL)",
    """
    CREATE TABLE doomed_outputs (
        job_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        output_bytes INTEGER NOT NULL
    )
    """,
    "CREATE INDEX jobs_finished ON jobs (updated_at) "
    "WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED')",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1, _V2)
LATEST = len(MIGRATIONS)
