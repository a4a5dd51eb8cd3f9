"""An in-memory Store: the reference backend, for tests and for running without a data dir.

It keeps `JobRow`s (immutable, already encoded by the shared codec), so every read decodes a fresh
record and callers never share a mutable object with the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from comfyfleet.coordinator.errors import Conflict, StoreUnavailable
from comfyfleet.coordinator.model import (
    AgentRecord,
    Doomed,
    JobRecord,
    WebhookMessage,
    output_bytes,
)
from comfyfleet.coordinator.store import codec
from comfyfleet.coordinator.store.base import DEFAULT_PAGE, RECOVERY_PAGE, GuardedUpdate
from comfyfleet.coordinator.store.codec import JobRow
from comfyfleet.coordinator.store.migrations import LATEST
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import TERMINAL, JobStatus

SCHEMA_VERSION = LATEST  # the memory store is always "fully migrated"
_ABSENT = object()


class MemoryStore:
    def __init__(self) -> None:
        self._jobs: dict[str, JobRow] = {}
        self._keys: dict[tuple[str, str], str] = {}  # (tenant, idempotency_key) -> job id
        self._agents: dict[str, tuple[float, str]] = {}
        self._messages: dict[str, WebhookMessage] = {}  # frozen: never shared mutably
        self._tenants: dict[str, str] = {}
        self._doomed: dict[str, Doomed] = {}
        self._closed = False
        # inside batch(): (table, key, value before) of every entry written, to roll back
        self._undo: list[tuple[dict[Any, Any], Any, Any]] | None = None

    def _open(self) -> None:
        if self._closed:
            raise StoreUnavailable("store is closed")

    def _keep(self, table: dict[Any, Any], key: Any) -> None:
        """Inside a batch: remember `table[key]` as it was, before a write changes it."""
        if self._undo is not None:
            self._undo.append((table, key, table.get(key, _ABSENT)))

    @contextmanager
    def batch(self) -> Iterator[None]:
        if self._undo is not None:  # joins the open batch
            yield
            return
        self._open()
        undo: list[tuple[dict[Any, Any], Any, Any]] = []
        self._undo = undo
        try:
            yield
            self._open()  # "commit": a store closed meanwhile keeps nothing of the batch
        except BaseException:
            for table, key, value in reversed(undo):
                if value is _ABSENT:
                    table.pop(key, None)
                else:
                    table[key] = value
            raise
        finally:
            self._undo = None

    def schema_version(self) -> int:
        self._open()
        return SCHEMA_VERSION

    def insert_job(self, job: JobRecord) -> tuple[JobRecord, bool]:
        self._open()
        key = (job.tenant, job.idempotency_key) if job.idempotency_key is not None else None
        if key is not None and key in self._keys:
            return codec.decode_job(self._jobs[self._keys[key]]), False
        if job.id in self._jobs:
            raise Conflict(f"job {job.id} already exists", field="id")
        row = codec.encode_job(job)
        self._keep(self._jobs, row.id)
        self._jobs[row.id] = row
        if key is not None:
            self._keep(self._keys, key)
            self._keys[key] = row.id
        return codec.decode_job(row), True

    def update_job(self, job: JobRecord, expect_status: JobStatus, expect_attempt: int) -> bool:
        return self.update_jobs([(job, expect_status, expect_attempt)])[0]

    def update_jobs(
        self,
        items: Sequence[GuardedUpdate],
        outbox: Sequence[Sequence[WebhookMessage]] = (),
    ) -> list[bool]:
        self._open()
        # Stage every change first and apply them together: an exception changes nothing.
        staged: dict[str, JobRow] = {}
        results: list[bool] = []
        for job, status, attempt in items:
            row = staged.get(job.id) or self._jobs.get(job.id)
            ok = (
                row is not None and row.status == JobStatus(status).value and row.attempt == attempt
            )
            if ok and row is not None:
                staged[job.id] = codec.apply_update(row, job)
            results.append(ok)
        for job_id in staged:
            self._keep(self._jobs, job_id)
        self._jobs.update(staged)
        for ok, messages in zip(results, outbox, strict=False):
            if ok:
                for msg in messages:
                    self._keep(self._messages, msg.id)
                    self._messages.setdefault(msg.id, msg)
        return results

    def get_job(self, job_id: str) -> JobRecord | None:
        self._open()
        row = self._jobs.get(job_id)
        return codec.decode_job(row) if row is not None else None

    def get_specs(self, job_ids: Sequence[str]) -> dict[str, JobSpec]:
        self._open()
        rows = [row for i in job_ids if (row := self._jobs.get(i)) is not None]
        return {row.id: codec.decode_spec(row.spec) for row in rows}

    def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        tenant: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        self._open()
        if limit < 1:
            raise InvalidInput("limit", "limit must be at least 1")
        position = codec.decode_cursor(cursor) if cursor is not None else None
        wanted = {JobStatus(s).value for s in statuses} if statuses is not None else None
        rows = [
            row
            for row in self._jobs.values()
            if (wanted is None or row.status in wanted)
            and (tenant is None or row.tenant == tenant)
            and (position is None or codec.before_cursor(row, position))
        ]
        rows.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return codec.page_of(rows, limit)

    def non_terminal_jobs(self, page: int = RECOVERY_PAGE) -> Iterator[JobRecord]:
        self._open()
        terminal = {s.value for s in TERMINAL}
        rows = sorted(
            (r for r in self._jobs.values() if r.status not in terminal),
            key=lambda r: (r.created_at, r.id),
        )
        return (codec.decode_job(r) for r in rows)  # decoded one at a time, like SQLite's pages

    def count_by_status(self) -> dict[JobStatus, int]:
        self._open()
        counts = dict.fromkeys(JobStatus, 0)
        for row in self._jobs.values():
            counts[JobStatus(row.status)] += 1
        return counts

    def save_agent(self, agent: AgentRecord) -> None:
        self._open()
        self._keep(self._agents, agent.agent_id)
        self._agents[agent.agent_id] = (float(agent.registered_at), codec.encode_agent_info(agent))

    def load_agents(self) -> list[AgentRecord]:
        self._open()
        return [
            codec.decode_agent(agent_id, at, info)
            for agent_id, (at, info) in sorted(self._agents.items())
        ]

    def due_messages(
        self, now: float, limit: int, exclude: Collection[str] = ()
    ) -> list[WebhookMessage]:
        self._open()
        due = [
            m
            for m in self._messages.values()
            if m.state == "pending" and m.next_at <= now and m.id not in exclude
        ]
        return sorted(due, key=lambda m: m.next_at)[:limit]

    def next_message_at(self) -> float | None:
        self._open()
        return min(
            (m.next_at for m in self._messages.values() if m.state == "pending"), default=None
        )

    def save_message(self, msg: WebhookMessage) -> None:
        self._open()
        old = self._messages.get(msg.id)
        if old is not None:
            self._keep(self._messages, msg.id)
            self._messages[msg.id] = dataclasses.replace(
                old, next_at=msg.next_at, attempts=msg.attempts, state=msg.state, tries=msg.tries
            )

    def messages_of_job(self, job_id: str) -> list[WebhookMessage]:
        self._open()
        found = [m for m in self._messages.values() if m.job_id == job_id]
        return sorted(found, key=lambda m: (m.created_at, m.id))

    def load_tenants(self) -> dict[str, str]:
        self._open()
        return dict(sorted(self._tenants.items()))

    def save_tenant(self, tenant: str, settings: str) -> None:
        self._open()
        self._keep(self._tenants, tenant)
        self._tenants[tenant] = settings

    def finished_jobs(
        self,
        before: float,
        limit: int,
        *,
        tenant: str | None = None,
        other_than: Collection[str] = (),
    ) -> list[JobRecord]:
        self._open()
        terminal = {s.value for s in TERMINAL}
        waiting = {m.job_id for m in self._messages.values() if m.state == "pending"}
        rows = [
            r
            for r in self._jobs.values()
            if r.status in terminal
            and r.updated_at < before
            and r.id not in waiting
            and (tenant is None or r.tenant == tenant)
            and r.tenant not in other_than
        ]
        rows.sort(key=lambda r: (r.updated_at, r.id))
        return [codec.decode_job(r) for r in rows[:limit]]

    def delete_jobs(self, jobs: Sequence[JobRecord]) -> list[Doomed]:
        self._open()
        terminal = {s.value for s in TERMINAL}
        doomed: list[Doomed] = []
        for job in jobs:
            row = self._jobs.get(job.id)
            if row is None or row.status not in terminal:
                continue
            self._keep(self._jobs, job.id)
            del self._jobs[job.id]
            if row.idempotency_key is not None:
                self._keep(self._keys, (row.tenant, row.idempotency_key))
                self._keys.pop((row.tenant, row.idempotency_key), None)
            for msg_id in [m.id for m in self._messages.values() if m.job_id == job.id]:
                self._keep(self._messages, msg_id)
                del self._messages[msg_id]
            entry = Doomed(job.id, row.tenant, output_bytes(job))
            self._keep(self._doomed, job.id)
            self._doomed[job.id] = entry
            doomed.append(entry)
        return doomed

    def doomed(self, limit: int) -> list[Doomed]:
        self._open()
        return [self._doomed[k] for k in sorted(self._doomed)[:limit]]

    def forget_doomed(self, job_ids: Sequence[str]) -> None:
        self._open()
        for job_id in job_ids:
            self._keep(self._doomed, job_id)
            self._doomed.pop(job_id, None)

    def close(self) -> None:
        self._closed = True
