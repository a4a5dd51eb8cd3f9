"""Feasibility: small checkers, each answering "no, because …" for one (agent, slot) pair.

Modelled on Nomad's feasibility checkers. Each checker has a short `code` (used to aggregate
reasons across the fleet) and one method, `check(job, agent, slot, cap)`, returning None when the
pair is fine and a short human reason otherwise. Static checkers read only the job and the fleet
view; dynamic ones read the free capacity in `cap`, which a plan updates as it places jobs.
The fast path in `index.py` uses the same predicates (`labels_match`, `gpu_name_matches`, …) and
the same capacity numbers, and the tests compare it against this pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Protocol

from comfyfleet.coordinator.scheduler.capacity import (
    Capacity,
    find_gpu,
    gpu_ceiling_mb,
    ram_ceiling_mb,
)
from comfyfleet.coordinator.scheduler.model import AgentView, JobRequest, SlotView
from comfyfleet.coordinator.scheduler.model import job_problem as job_problem

# -- predicates shared with the fast path ---------------------------------------------------------


def labels_missing(want: Mapping[str, str], have: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(want.items()) if have.get(k) != v]


def labels_match(want: Mapping[str, str], have: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def models_missing(want: Iterable[str], have: frozenset[str]) -> list[str]:
    return sorted({m for m in want if m not in have})


def inventory_missing(job: JobRequest, agent: AgentView) -> tuple[list[str], list[str]]:
    """(model files, node classes) the workflow needs that the agent's inventory lacks; nothing
    is missing on an agent that reported no inventory."""
    if agent.node_classes is None:
        return [], []
    return (
        sorted({m for m in job.model_refs if m not in agent.models}),
        sorted({c for c in job.node_classes if c not in agent.node_classes}),
    )


def inventory_has(job: JobRequest, agent: AgentView) -> bool:
    have = agent.node_classes
    return have is None or (
        agent.models.issuperset(job.model_refs) and have.issuperset(job.node_classes)
    )


def gpu_name_matches(pattern: str, name: str) -> bool:
    """Case-insensitive fnmatch glob."""
    return fnmatchcase(name.lower(), pattern.lower())


# -- checkers -------------------------------------------------------------------------------------


class Checker(Protocol):
    code: str

    def check(
        self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity
    ) -> str | None: ...


class Schedulable:
    code = "offline"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        return None if agent.schedulable else "offline or draining"


class LabelsMatch:
    code = "labels"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        if labels_match(job.labels, agent.labels):
            return None
        return "labels mismatch: " + ", ".join(labels_missing(job.labels, agent.labels))


class ModelsPresent:
    code = "models"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        missing = models_missing(job.models, agent.models)
        return "missing models: " + ", ".join(missing) if missing else None


class InventoryHas:
    """The workflow's model files and node classes exist on the agent's ComfyUI."""

    code = "inventory"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        models, classes = inventory_missing(job, agent)
        parts = ([f"missing model files: {', '.join(models)}"] if models else []) + (
            [f"missing node classes: {', '.join(classes)}"] if classes else []
        )
        return "; ".join(parts) if parts else None


class NotBlocked:
    code = "blocked"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        return "blocked after failures" if agent.agent_id in job.blocked_agents else None


class InstanceHealthy:
    code = "unhealthy"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        if not slot.healthy:
            return "instance unhealthy"
        if slot.capacity <= 0:
            return "instance takes no jobs (capacity 0)"
        return None


class InstanceKind:
    """A GPU job needs an instance on a GPU the agent reports; a CPU job a CPU-only instance."""

    code = "kind"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        if job.gpus == 0:
            return None if slot.gpu_index is None else "GPU instance, job needs a CPU slot"
        if slot.gpu_index is None:
            return "CPU-only instance, job needs a GPU"
        if find_gpu(agent, slot.gpu_index) is None:
            return f"instance names GPU {slot.gpu_index}, which the agent does not report"
        return None


class GpuNameMatch:
    code = "gpu_name"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        if job.gpus == 0 or job.gpu_name is None:
            return None
        gpu = find_gpu(agent, slot.gpu_index)
        if gpu is None or gpu_name_matches(job.gpu_name, gpu.name):
            return None  # InstanceKind reports a missing GPU
        return f"GPU name '{gpu.name}' does not match '{job.gpu_name}'"


class SlotFree:
    code = "slot"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        if slot.capacity > 0 and cap.free_slots(agent.agent_id, slot.instance_id) > 0:
            return None
        return "no free slot"


class NotHeld:
    """Not set aside for an older, starving job (anti-starvation)."""

    code = "held"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        holder = cap.holder(agent.agent_id, slot.instance_id)
        if holder is None or holder == job.job_id:
            return None
        return f"held for starving job {holder}"


class VramFits:
    code = "vram"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        if job.gpus == 0 or job.vram_mb <= 0 or slot.gpu_index is None:
            return None
        free = cap.vram_free(agent.agent_id, slot.gpu_index)
        if free is None or free >= job.vram_mb:
            return None
        return f"GPU {slot.gpu_index} has {free} MB free, needs {job.vram_mb} MB"


class RamFits:
    code = "ram"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        if job.ram_mb <= 0:
            return None
        free = cap.ram_free(agent.agent_id)
        return None if free >= job.ram_mb else f"{free} MB RAM free, needs {job.ram_mb} MB"


class CpuFits:
    code = "cpu"

    def check(self, job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> str | None:
        if job.cpu <= 0:
            return None
        free = cap.cpu_free(agent.agent_id)
        return None if free >= job.cpu else f"{free:g} CPU free, needs {job.cpu:g}"


# Static first (fleet view only), in the order a pending reason names them; then capacity.
AGENT_CHECKS: tuple[Checker, ...] = (Schedulable(), LabelsMatch(), ModelsPresent(), InventoryHas())
SLOT_CHECKS: tuple[Checker, ...] = (InstanceHealthy(), InstanceKind(), GpuNameMatch())
STATIC_CHECKS: tuple[Checker, ...] = AGENT_CHECKS + (NotBlocked(),) + SLOT_CHECKS
DYNAMIC_CHECKS: tuple[Checker, ...] = (SlotFree(), NotHeld(), VramFits(), RamFits(), CpuFits())
PIPELINE: tuple[Checker, ...] = STATIC_CHECKS + DYNAMIC_CHECKS


def first_failure(
    job: JobRequest,
    agent: AgentView,
    slot: SlotView,
    cap: Capacity,
    checks: Sequence[Checker] = PIPELINE,
) -> tuple[str, str] | None:
    """(code, reason) of the first checker that says no, or None when the pair is feasible."""
    for checker in checks:
        reason = checker.check(job, agent, slot, cap)
        if reason is not None:
            return checker.code, reason
    return None


def feasible(job: JobRequest, agent: AgentView, slot: SlotView, cap: Capacity) -> bool:
    return job_problem(job) is None and first_failure(job, agent, slot, cap) is None


def fits_totals(job: JobRequest, agent: AgentView, slot: SlotView) -> bool:
    """Could this pair ever hold the job, by hardware totals (static checks assumed passed)?"""
    if job.gpus == 1:
        gpu = find_gpu(agent, slot.gpu_index)
        if gpu is None or gpu.vram_total_mb < job.vram_mb:
            return False
    return agent.ram_total_mb >= job.ram_mb and agent.cpu_count >= job.cpu


def fits_in_principle(job: JobRequest, agent: AgentView, slot: SlotView) -> bool:
    """Would the job fit here if every comfyfleet job on this host finished? (Memory used outside
    comfyfleet still counts.) Static checks assumed passed."""
    if slot.capacity < 1:
        return False
    if job.gpus == 1:
        gpu = find_gpu(agent, slot.gpu_index)
        if gpu is None or gpu_ceiling_mb(gpu) < job.vram_mb:
            return False
    return ram_ceiling_mb(agent) >= job.ram_mb and agent.cpu_count >= job.cpu
