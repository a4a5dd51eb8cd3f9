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
from collections.abc import Callable, Iterable, Iterator, Sequence
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


def check_key_text(field: str, value: str | None) -> None:
    """Ids, tenants and idempotency keys are text without NUL (PostgreSQL's text cannot hold it;
    the API never lets one through): InvalidInput naming the field otherwise."""
    if value is not None and "\x00" in value:
        raise InvalidInput(field, "must not contain the NUL character")


def encode_job(job: JobRecord) -> JobRow:
    check_key_text("id", job.id)
    check_key_text("tenant", job.tenant)
    check_key_text("idempotency_key", job.idempotency_key)
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


def row_values(row: JobRow) -> tuple[object, ...]:
    """The row's values in column order (for an INSERT of every column)."""
    return (
        row.id,
        row.tenant,
        row.status,
        row.attempt,
        row.created_at,
        row.updated_at,
        row.priority,
        row.idempotency_key,
        row.spec,
        row.state,
    )


def update_values(job: JobRecord, expect_status: str, expect_attempt: int) -> tuple[object, ...]:
    """The parameters of a guarded UPDATE: status, attempt, updated_at, state, then the guard
    (id, expected status, expected attempt)."""
    return (
        JobStatus(job.status).value,
        job.attempt,
        float(job.updated_at),
        encode_state(job),
        job.id,
        JobStatus(expect_status).value,
        expect_attempt,
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


def decode_spec(spec: str) -> JobSpec:
    return _spec_decoder.decode(spec)


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
    check_key_text("agent_id", agent.agent_id)
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
    if not math.isfinite(created_at) or "\x00" in job_id:
        raise bad
    return created_at, job_id


def page_of(rows: Sequence[JobRow], limit: int) -> tuple[list[JobRecord], str | None]:
    """A list_jobs answer from up to `limit + 1` rows in order: the records of the first `limit`,
    and the cursor after the last of them when another row follows."""
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
    return [decode_job(r) for r in page], next_cursor


def keyset_pages(
    first: Callable[[], list[JobRow]], after: Callable[[JobRow], list[JobRow]], page: int
) -> Iterator[JobRecord]:
    """Recovery read `page` rows at a time in (created_at, id) order: `first()` reads the first
    page, `after(row)` the page after `row`; each row is decoded only when the caller gets to it."""
    rows = first()
    while rows:
        for row in rows:
            yield decode_job(row)
        if len(rows) < page:
            return
        rows = after(rows[-1])


def status_counts(pairs: Iterable[tuple[str, int]]) -> dict[JobStatus, int]:
    """count_by_status from (status, count) pairs: every status present, zero included."""
    counts = dict.fromkeys(JobStatus, 0)
    for status, n in pairs:
        counts[JobStatus(status)] = n
    return counts


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
