"""The SQL of the results tables (webhook outbox, tenants, doomed outputs), written once for
SQLite and PostgreSQL: `?` placeholders, which `postgres()` turns into psycopg's `%s`. Every
statement here is plain SQL both dialects read alike."""

from __future__ import annotations

from collections.abc import Collection

from comfyfleet.coordinator.model import Doomed, WebhookMessage
from comfyfleet.coordinator.store import codec

# Spelled exactly as the predicate of the partial index jobs_finished (both dialects).
FINISHED = "status IN ('COMPLETED', 'FAILED', 'CANCELLED')"
MESSAGES = f"SELECT {codec.MESSAGE_COLUMNS} FROM webhook_outbox"
INSERT_MESSAGE = (
    f"INSERT INTO webhook_outbox ({codec.MESSAGE_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
NEXT_MESSAGE_AT = "SELECT MIN(next_at) FROM webhook_outbox WHERE state = 'pending'"
SAVE_MESSAGE = (
    "UPDATE webhook_outbox SET next_at = ?, attempts = ?, state = ?, tries = ? WHERE id = ?"
)
MESSAGES_OF_JOB = f"{MESSAGES} WHERE job_id = ? ORDER BY created_at, id"
LOAD_TENANTS = "SELECT tenant, settings FROM tenants ORDER BY tenant"
SAVE_TENANT = (
    "INSERT INTO tenants (tenant, settings) VALUES (?, ?) "
    "ON CONFLICT (tenant) DO UPDATE SET settings = excluded.settings"
)
DELETE_FINISHED_JOB = f"DELETE FROM jobs WHERE id = ? AND {FINISHED}"
DELETE_MESSAGES_OF_JOB = "DELETE FROM webhook_outbox WHERE job_id = ?"
INSERT_DOOMED = (
    "INSERT INTO doomed_outputs (job_id, tenant, output_bytes) VALUES (?, ?, ?) "
    "ON CONFLICT (job_id) DO UPDATE SET "
    "tenant = excluded.tenant, output_bytes = excluded.output_bytes"
)
DOOMED = "SELECT job_id, tenant, output_bytes FROM doomed_outputs ORDER BY job_id LIMIT ?"
FORGET_DOOMED = "DELETE FROM doomed_outputs WHERE job_id = ?"


def postgres(sql: str) -> str:
    """The statement with psycopg's placeholders (none of these statements holds a `?` or `%`
    of its own)."""
    return sql.replace("?", "%s")


def marks(n: int) -> str:
    return ", ".join("?" * n)


def due_messages(now: float, limit: int, exclude: Collection[str]) -> tuple[str, list[object]]:
    skip = sorted(exclude)
    not_in = f" AND id NOT IN ({marks(len(skip))})" if skip else ""
    sql = f"{MESSAGES} WHERE state = 'pending' AND next_at <= ?{not_in} ORDER BY next_at LIMIT ?"
    return sql, [now, *skip, limit]


def save_message_values(msg: WebhookMessage) -> tuple[object, ...]:
    row = codec.encode_message(msg)
    return (row[7], row[8], row[9], row[10], msg.id)


def finished_jobs(
    select: str, before: float, limit: int, tenant: str | None, other_than: Collection[str]
) -> tuple[str, list[object]]:
    """`select` (the jobs table's SELECT) narrowed to finished jobs that no pending webhook
    message keeps, least recently changed first."""
    where = [
        FINISHED,
        "updated_at < ?",
        "NOT EXISTS (SELECT 1 FROM webhook_outbox w "
        "WHERE w.job_id = jobs.id AND w.state = 'pending')",
    ]
    params: list[object] = [before]
    if tenant is not None:
        where.append("tenant = ?")
        params.append(tenant)
    others = sorted(other_than)
    if others:
        where.append(f"tenant NOT IN ({marks(len(others))})")
        params.extend(others)
    sql = f"{select} WHERE {' AND '.join(where)} ORDER BY updated_at, id LIMIT ?"
    return sql, [*params, limit]


def doomed_values(entry: Doomed) -> tuple[object, ...]:
    return (entry.job_id, entry.tenant, entry.output_bytes)
