"""The SQL of the PostgreSQL store (store/postgres.py): its statements, fenced and not, and the
query of one list_jobs page."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import psycopg
from psycopg import sql

from comfyfleet.coordinator.store import codec
from comfyfleet.coordinator.store import postgres_lead as lead
from comfyfleet.coordinator.store.migrations import POSTGRES_OPEN_STATUSES
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.status import JobStatus

COLUMNS = (
    "id, tenant, status, attempt, created_at, updated_at, priority, idempotency_key, spec, state"
)
SELECT = f"SELECT {COLUMNS} FROM jobs"
OPEN = "status IN ({})".format(", ".join(f"'{s}'" for s in POSTGRES_OPEN_STATUSES))
# Spelled exactly as the predicate of the partial index jobs_open, so the planner uses it.
OPEN_FIRST = f"{SELECT} WHERE {OPEN} ORDER BY created_at, id LIMIT %s"
OPEN_AFTER = (
    f"{SELECT} WHERE {OPEN} AND (created_at, id) > (%s, %s) ORDER BY created_at, id LIMIT %s"
)
VALUES = ", ".join(["%s"] * 10)
KEYED = (
    "ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
    "RETURNING id"
)
INSERT = f"INSERT INTO jobs ({COLUMNS}) VALUES ({VALUES}) {KEYED}"
INSERT_FENCED = f"INSERT INTO jobs ({COLUMNS}) SELECT {VALUES} WHERE {lead.FENCE} {KEYED}"
INSERT_ORDERED = (  # a follower's insert: the job, an order that the leader picks it up, NOTIFY
    f"WITH ins AS ({INSERT}), "
    "ord AS (INSERT INTO comfyfleet_orders (kind, job_id, at) SELECT 'submit', id, %s FROM ins "
    "RETURNING job_id) "
    "SELECT job_id, pg_notify(%s, '') FROM ord"
)
UPDATE = (
    "UPDATE jobs SET status = %s, attempt = %s, updated_at = %s, state = %s "
    "WHERE id = %s AND status = %s AND attempt = %s RETURNING 1"
)
UPDATE_FENCED = lead.fenced(UPDATE)
AGENT_SET = (
    "ON CONFLICT (agent_id) DO UPDATE SET "
    "registered_at = excluded.registered_at, info = excluded.info"
)
SAVE_AGENT = f"INSERT INTO agents (agent_id, registered_at, info) VALUES (%s, %s, %s) {AGENT_SET}"
SAVE_AGENT_FENCED = (
    f"INSERT INTO agents (agent_id, registered_at, info) SELECT %s, %s, %s "
    f"WHERE {lead.FENCE} {AGENT_SET}"
)
MIGRATE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('comfyfleet-migrate'), hashtext(%s))"


def list_query(
    statuses: Collection[JobStatus] | None, tenant: str | None, limit: int, cursor: str | None
) -> tuple[sql.Composed, list[object]]:
    """The query of one list_jobs page (one row more than `limit`, to know if another follows)
    and its parameters; InvalidInput for a bad limit or cursor."""
    if limit < 1:
        raise InvalidInput("limit", "limit must be at least 1")
    where: list[sql.Composable] = []
    params: list[object] = []
    if cursor is not None:
        where.append(sql.SQL("(created_at, id) < (%s, %s)"))
        params.extend(codec.decode_cursor(cursor))
    if statuses is not None:
        # Literals (JobStatus values), not parameters: the planner then proves that a set of open
        # statuses implies the predicate of the partial index jobs_open, even in a generic plan.
        wanted = sorted({JobStatus(s).value for s in statuses})
        where.append(
            sql.SQL("status IN ({})").format(sql.SQL(", ").join(map(sql.Literal, wanted)))
            if wanted
            else sql.SQL("FALSE")
        )
    if tenant is not None:
        where.append(sql.SQL("tenant = %s"))
        params.append(tenant)
    clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    query = sql.SQL("{}{} ORDER BY created_at DESC, id DESC LIMIT %s").format(
        sql.SQL(SELECT), clause
    )
    return query, [*params, limit + 1]


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version a database holds (0: none yet)."""
    exists = conn.execute("SELECT to_regclass('comfyfleet_schema')").fetchone()
    if exists is None or exists[0] is None:
        return 0
    row = conn.execute("SELECT version FROM comfyfleet_schema").fetchone()
    return int(row[0]) if row else 0
