"""What the placing coordinator learns from finished attempts, in memory: run-time and VRAM
estimates per (workflow shape, slot: a GPU model or the CPU), and the failure book that blocks a
shape on a host that keeps failing it. The rules are pure (`estimates.py`, `blocking.py`); this
holds the state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from comfyfleet.coordinator.blocking import BlockPolicy, FailureBook
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.estimates import CPU_SLOT, Estimate, expected, node_seconds, slot_of
from comfyfleet.coordinator.eta import Expected
from comfyfleet.coordinator.fleet import AgentState
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
        self.estimates: dict[tuple[str, str], Estimate] = {}  # (shape, slot)

    def learn(self, job: JobRecord) -> None:
        """Add a completed job's run time, per-node times and VRAM peak to its (shape, slot)
        estimate; a CPU slot learns like a GPU model does."""
        slot = slot_of(job.gpu_name, job.gpu_index)
        if slot is None:
            return
        started = job.timestamps.get(JobStatus.RUNNING.value)
        done = job.timestamps.get(JobStatus.COMPLETED.value)
        duration = done - started if started is not None and done is not None else None
        key = (job.workflow_facts.shape, slot)
        self.estimates[key] = self.estimates.get(key, Estimate()).add(
            duration, job.vram_peak_mb, node_seconds(job.profile)
        )

    def expected(self, job: JobRecord, agent: AgentState | None) -> Expected | None:
        """What `job` should take on the slot it was placed on (or, unplaced, may be)."""
        if job.agent_id is None:  # not placed: only a CPU job knows its kind of slot
            slot = CPU_SLOT if job.spec.resources.gpus == 0 else None
        elif job.gpu_index is None:
            slot = CPU_SLOT
        else:
            gpus = agent.gpus if agent is not None else []
            slot = next((g.name for g in gpus if g.index == job.gpu_index), None)
        return expected(self.estimates, job.workflow_facts.shape, slot)

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
