"""The store's schema, as migrations applied in order on open, one list per SQL dialect.

`SQLITE[n - 1]` and `POSTGRES[n - 1]` take a database from schema version n - 1 to n, each in one
transaction (SQLite keeps the version in `PRAGMA user_version`, PostgreSQL in the one-row table
`comfyfleet_schema`). Both lists grow together, so a schema version means the same thing on every
backend: a migration that one dialect does not need is an empty tuple there.
Append, never edit: a released migration has already run on someone's data.
"""

from __future__ import annotations

_SQLITE_V1 = (
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

# The statuses `jobs_open` covers: every non-terminal status when the index was made. A status
# added later needs a migration that recreates the index (a test compares this with JobStatus).
POSTGRES_OPEN_STATUSES = ("SUBMITTED", "QUEUED", "ASSIGNED", "RUNNING")
_OPEN_LIST = ", ".join(f"'{s}'" for s in POSTGRES_OPEN_STATUSES)

# Text columns use the "C" collation: ids order by code point, as in SQLite and in Python.
# Terminal jobs stay out of the queue's way: recovery and open-job listings read the partial
# index `jobs_open`, which holds only jobs not yet finished, however many finished ones the
# table keeps.
_POSTGRES_V1 = (
    """
    CREATE TABLE jobs (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant TEXT COLLATE "C" NOT NULL,
        status TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        priority INTEGER NOT NULL,
        idempotency_key TEXT COLLATE "C",
        spec BYTEA NOT NULL,
        state TEXT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key) "
    "WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX jobs_status_created_id ON jobs (status, created_at, id)",
    "CREATE INDEX jobs_created_id ON jobs (created_at, id)",
    "CREATE INDEX jobs_tenant_created_id ON jobs (tenant, created_at, id)",
    f"CREATE INDEX jobs_open ON jobs (created_at, id) WHERE status IN ({_OPEN_LIST})",
    """
    CREATE TABLE agents (
        agent_id TEXT COLLATE "C" PRIMARY KEY,
        registered_at DOUBLE PRECISION NOT NULL,
        info TEXT NOT NULL
    )
    """,
)

# Results that leave the coordinator (issue 17): the webhook outbox, tenant settings, and the
# jobs deleted by retention whose outputs are still to remove.
_SQLITE_V2 = (
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

_POSTGRES_V2 = (
    """
    CREATE TABLE webhook_outbox (
        id TEXT COLLATE "C" PRIMARY KEY,
        job_id TEXT COLLATE "C" NOT NULL,
        tenant TEXT COLLATE "C" NOT NULL,
        url TEXT NOT NULL,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        next_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL,
        state TEXT NOT NULL,
        tries TEXT NOT NULL
    )
    """,
    "CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at) WHERE state = 'pending'",
    "CREATE INDEX webhook_outbox_job ON webhook_outbox (job_id, created_at, id)",
    'CREATE TABLE tenants (tenant TEXT COLLATE "C" PRIMARY KEY, settings TEXT NOT NULL)',
    """
    CREATE TABLE doomed_outputs (
        job_id TEXT COLLATE "C" PRIMARY KEY,
        tenant TEXT COLLATE "C" NOT NULL,
        output_bytes BIGINT NOT NULL
    )
    """,
    "CREATE INDEX jobs_finished ON jobs (updated_at, id) "
    "WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED')",
)

# Several coordinators on one database (coordinator/lease.py, store/postgres_lead.py): the lease
# row (its epoch fences every write of the leader), the log of terms (when each epoch began), the
# orders that any coordinator leaves for the leader (a job submitted, a cancel, a drain), and the
# fence itself: true, with a share lock on the lease row until the transaction ends, or it raises
# FENCE_SQLSTATE when the given epoch does not hold the lease. SQLite has one coordinator:
# nothing to add there.
FENCE_SQLSTATE = "CF001"
_POSTGRES_V3 = (
    """
    CREATE TABLE comfyfleet_leader (
        id SMALLINT PRIMARY KEY CHECK (id = 1),
        epoch BIGINT NOT NULL,
        holder TEXT NOT NULL,
        url TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )
    """,
    "INSERT INTO comfyfleet_leader (id, epoch, holder, url, expires_at) "
    "VALUES (1, 0, '', '', '-infinity')",
    """
    CREATE TABLE comfyfleet_terms (
        epoch BIGINT PRIMARY KEY,
        holder TEXT NOT NULL,
        url TEXT NOT NULL,
        began_at TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE comfyfleet_orders (
        seq BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        job_id TEXT COLLATE "C",
        agent_id TEXT COLLATE "C",
        at DOUBLE PRECISION NOT NULL
    )
    """,
    f"""
    CREATE FUNCTION comfyfleet_fence(want BIGINT) RETURNS boolean LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM comfyfleet_leader
            WHERE id = 1 AND epoch = want AND expires_at > clock_timestamp() FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'leader epoch % has ended', want USING ERRCODE = '{FENCE_SQLSTATE}';
        END IF;
        RETURN true;
    END
    $$
    """,
)


SQLITE: tuple[tuple[str, ...], ...] = (_SQLITE_V1, _SQLITE_V2, ())
POSTGRES: tuple[tuple[str, ...], ...] = (_POSTGRES_V1, _POSTGRES_V2, _POSTGRES_V3)
LATEST = len(SQLITE)  # POSTGRES has as many (a test checks)
