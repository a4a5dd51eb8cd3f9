"""What the facade asks of the coordinator, in one place (the rest of the package sees only
this): submit, cancel and read jobs, the stored output files, and the fleet's agents."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from comfyfleet.coordinator.comfy.catalog import FleetGpu, merge_object_info, model_folders
from comfyfleet.coordinator.comfy.prompts import meta_of
from comfyfleet.coordinator.errors import NotFound
from comfyfleet.coordinator.feed import FeedWatcher
from comfyfleet.coordinator.fleet import AgentStatus
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import ACTIVE, TERMINAL, JobStatus

__all__ = ["FleetPort", "FleetView", "Watcher"]


class Watcher(FeedWatcher, Protocol):
    """A feed watcher that also takes the open jobs found at start (hub, v2 streams)."""

    def adopt(self, jobs: Iterable[JobRecord]) -> None: ...


HISTORY_SCAN = 10_000  # jobs read at most to answer one /history listing
WAITING = (JobStatus.SUBMITTED, JobStatus.QUEUED, JobStatus.ASSIGNED)


@dataclass(frozen=True, slots=True)
class FleetView:
    """The live agents' ComfyUI catalogues and GPUs, merged."""

    object_info: dict[str, Any]
    models: dict[str, list[str]]
    gpus: list[FleetGpu]
    ram_total: int
    ram_free: int


class FleetPort:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coord = coordinator
        self._view_key: tuple[Any, ...] | None = None
        self._view_docs: tuple[dict[str, Any], dict[str, list[str]]] = ({}, {})

    def watch(self, watcher: Watcher) -> None:
        """Follow the coordinator's jobs: the open ones now, then every change."""
        watcher.adopt(self.coord.jobs.values())
        self.coord.feed.watchers.append(watcher)

    def unwatch(self, watcher: Watcher) -> None:
        if watcher in self.coord.feed.watchers:
            self.coord.feed.watchers.remove(watcher)

    # -- jobs --------------------------------------------------------------------------------

    def submit(
        self, spec: JobSpec, tenant: str, job_id: str, idempotency_key: str | None = None
    ) -> tuple[JobRecord, bool]:
        return self.coord.submit(spec, idempotency_key, tenant, job_id=job_id)

    def record(self, job_id: str) -> JobRecord | None:
        """The whole stored record (workflow included), or None."""
        return self.coord.store.get_job(job_id)

    def live(self, job_id: str) -> JobRecord | None:
        """The job's current state (the workflow may be left out), or None."""
        try:
            return self.coord.get(job_id)
        except NotFound:
            return None

    def cancel(self, job_id: str) -> None:
        job = self.live(job_id)
        if job is not None and job.status not in TERMINAL:
            self.coord.cancel(job_id)

    def open_prompts(self, tenant: str) -> list[JobRecord]:
        """The tenant's facade jobs not yet ended, as stored (with their prompts)."""
        found = []
        for job in list(self.coord.jobs.values()):
            if job.tenant == tenant and meta_of(job.spec.metadata) is not None:
                stored = self.coord.store.get_job(job.id)  # written before the index moves
                if stored is not None:
                    found.append(stored)
        return found

    def running_ids(self, tenant: str) -> list[str]:
        return [
            j.id
            for j in self.coord.jobs.values()
            if j.tenant == tenant and j.status in ACTIVE and meta_of(j.spec.metadata) is not None
        ]

    def ended(self, tenant: str, limit: int = HISTORY_SCAN) -> Iterator[JobRecord]:
        """The tenant's ended jobs, newest first (facade jobs and others; the caller filters)."""
        cursor: str | None = None
        seen = 0
        while seen < limit:
            page, cursor = self.coord.store.list_jobs(
                statuses=[JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED],
                tenant=tenant,
                limit=min(500, limit - seen),
                cursor=cursor,
            )
            yield from page
            seen += len(page)
            if cursor is None or not page:
                return

    def page(
        self, tenant: str, statuses: list[JobStatus] | None, limit: int, cursor: str | None
    ) -> tuple[list[JobRecord], str | None]:
        """A page of the tenant's jobs, newest first (any kind; the caller filters)."""
        return self.coord.store.list_jobs(
            statuses=statuses, tenant=tenant, limit=limit, cursor=cursor
        )

    def queue_position(self, job: JobRecord) -> int | None:
        """1-based place of a waiting facade job among its tenant's waiting facade jobs, in
        the scheduler's order (priority, then age); None when it does not wait."""
        if job.status not in WAITING:
            return None
        ahead = 0
        for other in self.coord.jobs.values():
            if (
                other.tenant == job.tenant
                and other.status in WAITING
                and other.id != job.id
                and (-other.spec.priority, other.queued_at) < (-job.spec.priority, job.queued_at)
                and meta_of(other.spec.metadata) is not None
            ):
                ahead += 1
        return ahead + 1

    def output_path(self, job: JobRecord, entry: dict[str, Any]) -> Path:
        return self.coord.outputs.final_path(job.id, int(entry["attempt"]), str(entry["name"]))

    # -- the fleet -----------------------------------------------------------------------------

    def fleet(self) -> FleetView:
        live = [a for a in self.coord.agents.values() if a.status != AgentStatus.LOST]
        catalogues = [a.comfyui for a in live if a.comfyui is not None]
        key = tuple(id(c) for c in catalogues)
        if key != self._view_key:  # merged again only when a catalogue changed
            self._view_docs = (
                merge_object_info(c.object_info for c in catalogues),
                model_folders(c.models for c in catalogues),
            )
            self._view_key = key
        gpus = [
            FleetGpu(a.agent_id, g.index, g.name, g.vram_total_mb, g.vram_free_mb)
            for a in sorted(live, key=lambda a: a.agent_id)
            for g in a.gpus
        ]
        return FleetView(
            object_info=self._view_docs[0],
            models=self._view_docs[1],
            gpus=gpus,
            ram_total=sum(a.host.ram_total_mb for a in live) << 20,
            ram_free=sum(a.host.ram_available_mb for a in live) << 20,
        )
