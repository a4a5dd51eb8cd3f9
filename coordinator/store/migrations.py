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

MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1,)
LATEST = len(MIGRATIONS)
