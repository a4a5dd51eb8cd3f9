"""The one write path of the coordinator: pure move, guarded store write, then memory.

Callers compute the new record with a pure move (`jobs.py`) and hand the pair to `apply`. The
store writes the changes in one transaction, each guarded by the status and attempt the row must
still have; only the writes that went through reach the in-memory indexes (`state.Live.index`),
followed by each change's own memory effects (`Change.then`). A store fault (StoreUnavailable)
raises before memory is touched, so memory never holds what the store does not. The webhook
messages a change causes (`Notices`, the outbox) are written in the same transaction.

`batch()` puts several calls' changes in one store transaction (ledger_batch.py): a failed
batch leaves nothing of itself in the store or in memory.

With several coordinators the ledger belongs to one leader's term: its store fences every write by
the term's `epoch`, and each move it writes is stamped with that epoch in the job's history.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

import msgspec
import structlog

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.errors import Conflict, StoreUnavailable
from comfyfleet.coordinator.feed import Feed
from comfyfleet.coordinator.ledger_batch import Later, Pending
from comfyfleet.coordinator.model import AgentRecord, JobRecord, WebhookMessage
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.state import Live
from comfyfleet.coordinator.store import Store
from comfyfleet.shared.status import JobStatus

log = structlog.get_logger("coordinator")

STORE_RETRY_S = 1.0  # a loop step the store refused is retried after this


@dataclass(frozen=True, slots=True)
class Change:
    """One job moved from `old` to `new` (a pure move's result), and what memory does after."""

    old: JobRecord
    new: JobRecord
    then: Callable[[JobRecord], None] | None = None


class Notices(Protocol):
    """The webhook outbox as the ledger sees it (webhooks/outbox.py)."""

    def messages(self, old: JobRecord | None, new: JobRecord) -> list[WebhookMessage]: ...

    def written(self) -> None: ...


class Ledger:
    def __init__(
        self,
        store: Store,
        live: Live,
        outputs: OutputFiles,
        notices: Notices | None = None,
        epoch: int | None = None,
    ) -> None:
        self.store = store
        self.live = live
        self.outputs = outputs
        self.notices = notices
        self.epoch = epoch  # the leader's term (None: the one coordinator, no terms)
        self.pending: Pending | None = None  # the open batch

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every change made inside goes into one store transaction, committed at the end.

        Memory follows each change at once; the feed's calls and the after-effects (`after`,
        `Change.then`) wait for the commit. If the block raises or the commit fails, the store
        keeps nothing of the batch, memory is put back as it was, and the exception propagates.
        Must be used with no await inside (other requests would see uncommitted memory). A
        batch inside a batch joins it.
        """
        if self.pending is not None:
            yield
            return
        pending = self.pending = Pending(self.live)
        feed = self.live.feed
        self.live.feed = cast(Feed, Later(feed, pending.later))
        try:
            with self.store.batch():
                yield
        except BaseException:
            pending.undo()
            raise
        finally:
            self.live.feed = feed
            self.pending = None
        pending.run()

    def after(self, effect: Callable[[], None]) -> None:
        """Run `effect` once the changes so far are durable: now, or at the open batch's commit
        (never, if it fails)."""
        if self.pending is None:
            effect()
        else:
            self.pending.later.append(effect)

    def stamped(self, old: JobRecord | None, new: JobRecord) -> JobRecord:
        """`new` with the moves it adds to `old`'s history stamped with this term's epoch."""
        done = len(old.history) if old is not None else 0
        if self.epoch is None or len(new.history) <= done:
            return new
        added = [msgspec.structs.replace(t, epoch=self.epoch) for t in new.history[done:]]
        return dataclasses.replace(new, history=[*new.history[:done], *added])

    def apply(self, changes: Sequence[Change], *, strict: bool = True) -> list[bool]:
        """Write `changes` (guarded, one transaction), then apply the ones written to memory.

        Returns one result per change. With `strict`, a change whose guard no longer matched
        raises Conflict (after the others were applied); otherwise it is skipped.
        """
        if not changes:
            return []
        if self.epoch is not None:
            changes = [dataclasses.replace(c, new=self.stamped(c.old, c.new)) for c in changes]
        items = [(c.new, c.old.status, c.old.attempt) for c in changes]
        outbox = [self.notices.messages(c.old, c.new) for c in changes] if self.notices else []
        oks = self.store.update_jobs(items, outbox)
        if self.notices is not None and any(m for m, ok in zip(outbox, oks, strict=True) if ok):
            self.after(self.notices.written)
        for change, ok in zip(changes, oks, strict=True):
            if ok:
                if self.pending is not None:
                    self.pending.touch(change.old, change.new)
                self.live.index(change.old, change.new)
                if change.then is not None:
                    self.after(partial(change.then, change.new))
        if strict and not all(oks):
            stale = next(c.old.id for c, ok in zip(changes, oks, strict=True) if not ok)
            raise Conflict(f"job {stale} changed concurrently; try again")
        return oks

    def commit(self, old: JobRecord, new: JobRecord) -> JobRecord:
        """`apply` of one change that must go through; returns the new record."""
        new = self.stamped(old, new)
        self.apply([Change(old, new)])
        return new

    def insert(self, job: JobRecord) -> tuple[JobRecord, bool]:
        """Store a new job (or find the one its idempotency key names), then index it."""
        if self.pending is not None:
            raise RuntimeError("Ledger.insert inside a batch: a failed batch could not undo it")
        stored, created = self.store.insert_job(self.stamped(None, job))
        if created:
            self.live.index(None, stored)
        return stored, created

    def save_agent(self, record: AgentRecord, then: Callable[[], None]) -> None:
        """Store an agent's registration, then apply it to memory."""
        self.store.save_agent(record)
        then()

    def release_change(
        self,
        job: JobRecord,
        now: float,
        reason: str,
        *,
        spend_retry: bool,
        error: dict[str, Any] | None = None,
    ) -> Change:
        """End the job's attempt outside the workflow (requeue, fail or cancel): the change, and
        after it the attempt's files dropped (a stale attempt's files never stay)."""

        def released(new: JobRecord) -> None:
            self.outputs.drop_attempt(job.id, job.attempt)
            if new.status == JobStatus.QUEUED:
                self.live.counters["requeues"] += 1
            log.info(
                "job_released",
                job_id=job.id,
                agent_id=job.agent_id,
                attempt=job.attempt,
                reason=reason,
                now_status=new.status.value,
            )

        new = moves.released(job, now, reason, spend_retry=spend_retry, error=error)
        return Change(job, new, released)


async def survive_store_faults(step: Callable[[], object]) -> bool:
    """Run one loop step; a full or read-only store pauses the loop instead of killing it."""
    try:
        step()
    except StoreUnavailable as exc:
        log.warning("store_unavailable", step=getattr(step, "__name__", "?"), error=exc.message)
        await asyncio.sleep(STORE_RETRY_S)
        return False
    await asyncio.sleep(0)
    return True
