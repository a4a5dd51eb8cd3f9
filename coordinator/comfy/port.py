"""What the facade asks of the coordinator, in one place (the rest of the package sees only
this): submit, cancel and read jobs, the stored output files, and the fleet's agents."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.coordinator.comfy.catalog import FleetGpu, merge_object_info, model_folders
from comfyfleet.coordinator.comfy.hub import Hub
from comfyfleet.coordinator.comfy.prompts import meta_of
from comfyfleet.coordinator.errors import NotFound
from comfyfleet.coordinator.fleet import AgentStatus
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import ACTIVE, TERMINAL, JobStatus

__all__ = ["FleetPort", "FleetView"]

HISTORY_SCAN = 10_000  # jobs read at most to answer one /history listing


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

    def watch(self, hub: Hub) -> None:
        hub.adopt(self.coord.jobs.values())
        self.coord.feed.watchers.append(hub)

    def unwatch(self, hub: Hub) -> None:
        if hub in self.coord.feed.watchers:
            self.coord.feed.watchers.remove(hub)

    # -- jobs --------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, tenant: str, job_id: str) -> tuple[JobRecord, bool]:
        return self.coord.submit(spec, None, tenant, job_id=job_id)

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
