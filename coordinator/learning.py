"""What the placing coordinator learns from finished attempts, in memory: run-time and VRAM
estimates per (workflow shape, GPU name), and the failure book that blocks a shape on a host
that keeps failing it. The rules are pure (`estimates.py`, `blocking.py`); this holds the state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from comfyfleet.coordinator.blocking import BlockPolicy, FailureBook
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.estimates import Estimate
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.store import Store
from comfyfleet.shared.status import JobStatus

log = structlog.get_logger("coordinator")


class Learning:
    def __init__(
        self,
        config: CoordinatorConfig,
        counters: dict[str, int],
        emit: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.counters = counters
        self.emit = emit
        self.blocks = FailureBook()
        self.block_policy = BlockPolicy(
            config.block_after_failures, config.block_cooldown_s, config.block_window_s
        )
        self.estimates: dict[tuple[str, str], Estimate] = {}  # (shape, GPU name)

    def learn(self, job: JobRecord) -> None:
        """Add a completed job's run time and VRAM peak to its (shape, GPU name) estimate."""
        if job.gpu_name is None:
            return
        started = job.timestamps.get(JobStatus.RUNNING.value)
        done = job.timestamps.get(JobStatus.COMPLETED.value)
        duration = done - started if started is not None and done is not None else None
        key = (job.workflow_facts.shape, job.gpu_name)
        self.estimates[key] = self.estimates.get(key, Estimate()).add(duration, job.vram_peak_mb)

    def learn_from_store(self, store: Store, limit: int = 500) -> None:
        done, _ = store.list_jobs(
            statuses=[JobStatus.COMPLETED], tenant=None, limit=limit, cursor=None
        )
        for job in reversed(done):  # oldest first: the newest samples are kept
            self.learn(job)

    def pair_succeeded(self, agent_id: str, shape: str) -> None:
        self.blocks = self.blocks.record_success(agent_id, shape)

    def pair_failed(
        self, agent_id: str, shape: str, now: float, err: dict[str, Any] | None
    ) -> None:
        self.blocks, change = self.blocks.record_failure(agent_id, shape, now, self.block_policy)
        if change is not None:
            self._fleet_event(
                change.kind,
                agent_id=agent_id,
                workflow_shape=shape,
                until=change.until,
                failures=change.failures,
                code=(err or {}).get("code"),
            )

    def expire_blocks(self, now: float) -> bool:
        """End the blocks whose cooldown is over; whether any ended."""
        self.blocks, changes = self.blocks.expire(now, self.block_policy)
        for change in changes:
            self._fleet_event(change.kind, agent_id=change.agent_id, workflow_shape=change.shape)
        return bool(changes)

    def _fleet_event(self, kind: str, **fields: Any) -> None:
        """A fleet event (workflow_blocked, workflow_unblocked): logged, counted and published."""
        self.counters[kind] = self.counters.get(kind, 0) + 1
        log.info(kind, **fields)
        self.emit(kind, fields)
