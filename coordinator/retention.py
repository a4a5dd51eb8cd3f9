"""Retention: finished jobs and their outputs are deleted once they are older than their
tenant's `retention_s` (default: the coordinator's), and sooner, oldest first, while the local
output store's disk is fuller than `disk_high_water`. Jobs not yet finished are never touched,
nor a finished one whose webhook is still being delivered.

Crash-safe in three steps: (1) one store transaction deletes the records (with their webhook
messages) and notes each job as doomed; (2) its outputs are removed; (3) the doomed notes are
dropped. A coordinator killed anywhere in between finds the notes at its next sweep and removes
those outputs again: no record ever points at removed files, and no file outlives its record
beyond the next sweep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from comfyfleet.coordinator.errors import StoreUnavailable
from comfyfleet.coordinator.model import Doomed, JobRecord
from comfyfleet.coordinator.output_store import OutputStore
from comfyfleet.coordinator.parts import Part, Parts

log = structlog.get_logger("coordinator.retention")

PAGE = 50  # jobs deleted per transaction
MAX_PAGES = 200  # per sweep and rule: a huge backlog is worked off over several sweeps
STORE_RETRY_S = 1.0


class Retention(Part):
    def __init__(self, parts: Parts, outputs: OutputStore) -> None:
        super().__init__(parts)
        self.kept = outputs

    async def loop(self) -> None:
        while True:  # an interrupted sweep's leftovers first, so the count below is right
            try:
                await self.finish_doomed()
                break
            except StoreUnavailable as exc:
                log.warning("store_unavailable", step="retention", error=exc.message)
                await asyncio.sleep(STORE_RETRY_S)
        try:
            stored = await asyncio.to_thread(self.kept.stored_bytes)
            self.metrics.output_bytes_stored.set(stored)
        except OSError as exc:
            log.warning("output_bytes_unknown", error=str(exc))
        while True:
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                log.warning("store_unavailable", step="retention", error=exc.message)
                await asyncio.sleep(STORE_RETRY_S)
                continue
            await asyncio.sleep(self.config.retention_sweep_s)

    async def sweep(self) -> int:
        """One pass: leftovers of an interrupted sweep, then expired jobs, then disk pressure.
        Returns how many jobs were deleted."""
        await self.finish_doomed()
        deleted = 0
        overrides = self.tenants.overrides()
        for tenant, ttl in overrides.items():
            deleted += await self._expire_all(self.clock() - ttl, "ttl", tenant=tenant)
        deleted += await self._expire_all(
            self.clock() - self.config.retention_s, "ttl", other_than=tuple(overrides)
        )
        deleted += await self.shed()
        return deleted

    async def shed(self) -> int:
        """While the disk is above the high-water mark, delete the oldest finished jobs, one at
        a time (each one's outputs are gone before the disk is measured again)."""
        deleted = 0
        for _ in range(MAX_PAGES):
            if not await self._above_high_water():
                return deleted
            oldest = self.store.finished_jobs(float("inf"), PAGE)
            if not oldest:
                log.warning(
                    "disk_above_high_water",
                    high_water=self.config.disk_high_water,
                    reason="no finished job left to delete",
                )
                return deleted
            for job in oldest:
                if not await self._above_high_water():
                    return deleted
                deleted += await self.expire([job], "disk")
        return deleted

    async def _above_high_water(self) -> bool:
        full = await asyncio.to_thread(self.kept.fullness)
        return full is not None and full > self.config.disk_high_water

    async def _expire_all(
        self,
        before: float,
        reason: str,
        *,
        tenant: str | None = None,
        other_than: Sequence[str] = (),
    ) -> int:
        deleted = 0
        for _ in range(MAX_PAGES):
            page = self.store.finished_jobs(before, PAGE, tenant=tenant, other_than=other_than)
            if not page:
                break
            deleted += await self.expire(page, reason)
            if len(page) < PAGE:
                break
        return deleted

    async def expire(self, jobs: Sequence[JobRecord], reason: str) -> int:
        doomed = self.store.delete_jobs(jobs)  # (1) records gone, doomed noted: one transaction
        await self._remove(doomed)  # (2) and (3)
        self.metrics.jobs_expired.labels(reason).inc(len(doomed))
        if doomed:
            log.info(
                "jobs_expired",
                reason=reason,
                jobs=len(doomed),
                bytes=sum(d.output_bytes for d in doomed),
                oldest=doomed[0].job_id,
            )
        return len(doomed)

    async def finish_doomed(self) -> None:
        """Remove the outputs of jobs deleted by a sweep that did not finish."""
        while leftovers := self.store.doomed(PAGE):
            log.info("expired_outputs_resumed", jobs=len(leftovers))
            await self._remove(leftovers)

    async def _remove(self, doomed: list[Doomed]) -> None:
        for entry in doomed:
            await asyncio.to_thread(self.kept.remove_job, entry.job_id, entry.tenant)
        if doomed:
            self.store.forget_doomed([d.job_id for d in doomed])
            gone = sum(d.output_bytes for d in doomed)
            self.metrics.output_bytes_deleted.inc(gone)
            self.metrics.output_bytes_stored.dec(gone)
