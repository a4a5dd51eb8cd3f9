"""The one storage interface of the coordinator (DESIGN.md §8) and its errors.

Every backend passes the one contract suite in tests/unit/test_store_contract.py. Methods are
synchronous: the coordinator calls them from its event loop, and a local SQLite commit in WAL mode
with synchronous=NORMAL takes well under a millisecond.

Faults of the medium (disk full, read-only database, I/O error, store closed) raise
`StoreUnavailable`; the failed write leaves nothing behind. Expected refusals are values: a guarded
update that does not match returns False, a repeated idempotency key returns the first job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from comfyfleet.coordinator.errors import StoreUnavailable
from comfyfleet.coordinator.model import AgentRecord, Doomed, JobRecord, WebhookMessage
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus

if TYPE_CHECKING:
    from comfyfleet.coordinator.lease import Leader
    from comfyfleet.coordinator.store.postgres_lead import Order

RECOVERY_PAGE = 500  # jobs decoded at a time by non_terminal_jobs

DEFAULT_PAGE = 100

# One guarded update: the new record, and the status and attempt the stored row must still have.
GuardedUpdate = tuple[JobRecord, JobStatus, int]


class SchemaTooNew(StoreUnavailable):
    """The database was written by a newer comfyfleet than this one."""


class Store(Protocol):
    def schema_version(self) -> int:
        """The schema version of the open store (the latest this code knows, once open)."""
        ...

    def insert_job(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Store a new job durably before returning: (job, True).

        If `job.idempotency_key` is set and the tenant already has a job with that key, store
        nothing and return (that job, False). A second job with an existing id raises `Conflict`.
        """
        ...

    def update_job(self, job: JobRecord, expect_status: JobStatus, expect_attempt: int) -> bool:
        """Write `job` if the stored row still has `expect_status` and `expect_attempt`.

        Everything but id, spec, created_at, idempotency_key and tenant is written. Returns False,
        writing nothing, when the row is missing or does not match.
        """
        ...

    def update_jobs(
        self,
        items: Sequence[GuardedUpdate],
        outbox: Sequence[Sequence[WebhookMessage]] = (),
    ) -> list[bool]:
        """Many guarded updates, applied in order in one transaction; one result per item.

        `outbox`, when given, has one entry per item: the webhook messages that item's change
        causes, inserted in the same transaction if and only if the item was written.
        """
        ...

    def batch(self) -> AbstractContextManager[None]:
        """One transaction around several calls: every write made inside it (update_jobs,
        insert_job, ...) joins it and is committed when the block ends, or rolled back, all of
        it, when the block raises or the commit fails (StoreUnavailable). Reads inside it see
        its writes. A write refused inside it (Conflict: a duplicate id) leaves nothing of itself
        and the block may go on; a fault of the medium fails the whole batch. A batch inside a
        batch joins the outer one."""
        ...

    def get_job(self, job_id: str) -> JobRecord | None: ...

    def get_specs(self, job_ids: Sequence[str]) -> dict[str, JobSpec]:
        """The specs (workflow, inputs, metadata, ...) of those of `job_ids` that exist, in one
        read: what a lease hands its agent, without decoding each job's whole record."""
        ...

    def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        tenant: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """A page of jobs, newest first by (created_at, id), and the cursor of the next page.

        `statuses=None` means any status (an empty collection matches nothing). The cursor is
        None on the last page. A malformed cursor raises InvalidInput(field="cursor"), a limit
        below 1 InvalidInput(field="limit").
        """
        ...

    def non_terminal_jobs(self, page: int = RECOVERY_PAGE) -> Iterator[JobRecord]:
        """Every job not yet COMPLETED, FAILED or CANCELLED, oldest first (restart recovery),
        read `page` at a time so that recovery never holds every workflow at once. Jobs the
        caller updates while iterating are not returned twice."""
        ...

    def count_by_status(self) -> dict[JobStatus, int]:
        """The number of jobs in each status; every status is present, zero included."""
        ...

    def save_agent(self, agent: AgentRecord) -> None:
        """Insert or replace the agent's last registration."""
        ...

    def load_agents(self) -> list[AgentRecord]:
        """Every saved agent, ordered by agent_id."""
        ...

    # --- webhook outbox (coordinator/webhooks/) ---

    def due_messages(
        self, now: float, limit: int, exclude: Collection[str] = ()
    ) -> list[WebhookMessage]:
        """Pending messages with `next_at <= now`, soonest first, leaving out `exclude` ids."""
        ...

    def next_message_at(self) -> float | None:
        """The soonest `next_at` of a pending message; None when none is pending."""
        ...

    def save_message(self, msg: WebhookMessage) -> None:
        """Record a delivery try: attempts, state, next_at and tries of an existing message
        (nothing happens when it is gone, e.g. its job expired meanwhile)."""
        ...

    def messages_of_job(self, job_id: str) -> list[WebhookMessage]:
        """Every message about the job, oldest first (its delivery log)."""
        ...

    # --- tenant settings (coordinator/tenants.py) ---

    def load_tenants(self) -> dict[str, str]:
        """Every tenant's settings document (JSON text), by tenant."""
        ...

    def save_tenant(self, tenant: str, settings: str) -> None:
        """Insert or replace a tenant's settings document."""
        ...

    # --- retention (coordinator/retention.py) ---

    def finished_jobs(
        self,
        before: float,
        limit: int,
        *,
        tenant: str | None = None,
        other_than: Collection[str] = (),
    ) -> list[JobRecord]:
        """Up to `limit` COMPLETED, FAILED or CANCELLED jobs last changed before `before`, with
        no webhook message still pending, least recently changed first; only `tenant`'s when
        given, and none of the tenants in `other_than`."""
        ...

    def delete_jobs(self, jobs: Sequence[JobRecord]) -> list[Doomed]:
        """In one transaction: delete each job that is still finished, with its webhook
        messages, and remember it as doomed (its outputs still to remove). Returns those."""
        ...

    def doomed(self, limit: int) -> list[Doomed]:
        """Deleted jobs whose outputs may still exist (a sweep that stopped halfway)."""
        ...

    def forget_doomed(self, job_ids: Sequence[str]) -> None:
        """The outputs of these deleted jobs are gone."""
        ...

    def close(self) -> None:
        """Release the store; closing twice is harmless, any other call afterwards raises
        StoreUnavailable."""
        ...


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store several coordinators share (PostgreSQL): the leader's lease and the orders that
    followers leave for it (coordinator/lease.py, store/postgres_lead.py)."""

    @property
    def epoch(self) -> int | None:
        """The epoch that fences this view's writes (as_leader), else None."""
        ...

    def as_leader(self, epoch: int) -> SharedStore:
        """This store with every write fenced by `epoch`: NotLeader once the epoch has ended."""
        ...

    def as_follower(self) -> SharedStore:
        """This store refusing the leader's writes (NotLeader); a stored job orders the leader."""
        ...

    def try_lead(self, holder: str, url: str, ttl_s: float) -> int | None: ...

    def renew(self, epoch: int, holder: str, ttl_s: float) -> bool: ...

    def release(self, epoch: int, holder: str) -> None: ...

    def leader(self) -> Leader | None: ...

    def put_order(
        self, kind: str, at: float, job_id: str | None = None, agent_id: str | None = None
    ) -> None: ...

    def orders(self, limit: int = 1000) -> list[Order]: ...

    def done_orders(self, seqs: Sequence[int]) -> None: ...

    async def listen(self, woken: asyncio.Event) -> None: ...
