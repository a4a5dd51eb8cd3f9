"""One codec for every backend: JobRecord <-> JobRow, AgentRecord <-> row, list cursors.

A `JobRow` is the storage form of a job: the columns the store filters and orders on, the spec as
msgspec JSON bytes (written once, at insert), and `state`, a JSON document with every other field
(history as a list of objects, statuses as their string values). Every backend keeps rows, not
records, so no backend ever shares a mutable object with its caller, and all backends normalise
values the same way.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from comfyfleet.coordinator.model import AgentRecord, DeliveryTry, JobRecord, WebhookMessage
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.history import Transition
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus

# Fields kept in their own columns; they never enter the state document.
IDENTITY_FIELDS = frozenset({"id", "spec", "created_at", "idempotency_key", "tenant"})
GUARD_FIELDS = frozenset({"status", "attempt", "updated_at"})
DERIVED_FIELDS = frozenset({"facts"})  # recomputed from the spec, never stored
STATE_FIELDS: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(JobRecord)
    if f.name not in IDENTITY_FIELDS | GUARD_FIELDS | DERIVED_FIELDS
)

_MAX_CURSOR = 1024
_encoder = msgspec.json.Encoder()
_spec_decoder = msgspec.json.Decoder(JobSpec)
_cursor_decoder = msgspec.json.Decoder(tuple[float, str])
_tries_decoder = msgspec.json.Decoder(tuple[DeliveryTry, ...])


@dataclass(frozen=True, slots=True)
class JobRow:
    """A job as stored; field order is the column order of the `jobs` table."""

    id: str
    tenant: str
    status: str
    attempt: int
    created_at: float
    updated_at: float
    priority: int
    idempotency_key: str | None
    spec: bytes
    state: str


def encode_state(job: JobRecord) -> str:
    return _encoder.encode({name: getattr(job, name) for name in STATE_FIELDS}).decode()


def encode_job(job: JobRecord) -> JobRow:
    return JobRow(
        id=job.id,
        tenant=job.tenant,
        status=JobStatus(job.status).value,
        attempt=job.attempt,
        created_at=float(job.created_at),
        updated_at=float(job.updated_at),
        priority=job.spec.priority,
        idempotency_key=job.idempotency_key,
        spec=_encoder.encode(job.spec),
        state=encode_state(job),
    )


def apply_update(row: JobRow, job: JobRecord) -> JobRow:
    """The row after a guarded update: only status, attempt, updated_at and state change."""
    return dataclasses.replace(
        row,
        status=JobStatus(job.status).value,
        attempt=job.attempt,
        updated_at=float(job.updated_at),
        state=encode_state(job),
    )


def decode_job(row: JobRow) -> JobRecord:
    state: dict[str, Any] = msgspec.json.decode(row.state)
    state["history"] = [Transition(**t) for t in state.get("history", ())]
    return JobRecord(
        id=row.id,
        spec=_spec_decoder.decode(row.spec),
        created_at=row.created_at,
        idempotency_key=row.idempotency_key,
        tenant=row.tenant,
        status=JobStatus(row.status),
        attempt=row.attempt,
        updated_at=row.updated_at,
        **state,
    )


def encode_agent_info(agent: AgentRecord) -> str:
    return _encoder.encode(agent.info).decode()


def decode_agent(agent_id: str, registered_at: float, info: str) -> AgentRecord:
    return AgentRecord(
        agent_id=agent_id, registered_at=registered_at, info=msgspec.json.decode(info)
    )


def encode_cursor(row: JobRow) -> str:
    """An opaque position after `row` in newest-first (created_at, id) order."""
    raw = _encoder.encode((row.created_at, row.id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(created_at, id) from a cursor; raises InvalidInput(field="cursor") when malformed."""
    bad = InvalidInput("cursor", "cursor is malformed; pass back a cursor this API returned")
    if not isinstance(cursor, str) or not cursor or len(cursor) > _MAX_CURSOR:
        raise bad
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        created_at, job_id = _cursor_decoder.decode(raw)
    except (ValueError, binascii.Error, msgspec.DecodeError):
        raise bad from None
    if not math.isfinite(created_at):
        raise bad
    return created_at, job_id


def before_cursor(row: JobRow, position: tuple[float, str]) -> bool:
    """True when `row` comes after `position` in newest-first order."""
    return (row.created_at, row.id) < position


# --- webhook messages ---------------------------------------------------------------------------

# Column order of the `webhook_outbox` table.
MESSAGE_COLUMNS = (
    "id, job_id, tenant, url, event, payload, created_at, next_at, attempts, state, tries"
)


def encode_message(msg: WebhookMessage) -> tuple[object, ...]:
    return (
        msg.id,
        msg.job_id,
        msg.tenant,
        msg.url,
        msg.event,
        msg.payload,
        float(msg.created_at),
        float(msg.next_at),
        msg.attempts,
        msg.state,
        _encoder.encode(msg.tries).decode(),
    )


def decode_message(row: Sequence[Any]) -> WebhookMessage:
    (id_, job_id, tenant, url, event, payload, created_at, next_at, attempts, state, tries) = row
    return WebhookMessage(
        id=id_,
        job_id=job_id,
        tenant=tenant,
        url=url,
        event=event,
        payload=payload,
        created_at=created_at,
        next_at=next_at,
        attempts=attempts,
        state=state,
        tries=_tries_decoder.decode(tries),
    )


def output_bytes(job: JobRecord) -> int:
    """What a job's stored outputs take, by their declared sizes."""
    return sum(int(o.get("size", 0)) for o in job.outputs)
