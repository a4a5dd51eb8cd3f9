"""Input and output types of the placement scheduler (DESIGN.md §3).

Plain frozen values: the scheduler reads them and never changes them. The lead computes the
views from the store and the heartbeats; `plan()` turns them into placements.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field

# A job's static constraints (gpus, labels, models, GPU name glob, model files, node classes):
# jobs with equal signatures see the same eligible slots (index.py)
Signature = tuple[
    int, frozenset[tuple[str, str]], frozenset[str], str | None, frozenset[str], frozenset[str]
]
_NO_LABELS: frozenset[tuple[str, str]] = frozenset()
_NO_MODELS: frozenset[str] = frozenset()


class SchedulerError(Exception):
    """Base of every exception raised by the scheduler: faults in the caller's input."""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One QUEUED job."""

    job_id: str
    priority: int  # higher first
    submitted_at: float  # seconds (epoch); older first within a priority (a requeue keeps it)
    queued_at: float  # when it last entered the queue: how long it has waited (starvation)
    gpus: int  # 0 = CPU slot, 1 = one GPU (only 0/1 supported)
    vram_mb: int
    ram_mb: int
    cpu: float
    labels: Mapping[str, str]  # every key=value must be present on the agent
    gpu_name: str | None  # case-insensitive fnmatch glob on the GPU name, or None
    models: tuple[str, ...]  # model names that must be present on the agent
    workflow_hash: str
    avoid_agents: frozenset[str]  # earlier attempts failed there: allowed but ranked last
    blocked_agents: frozenset[str]  # this job must not go there (hard)
    model_refs: tuple[str, ...] = ()  # model files the workflow loads (inventory + warm cache)
    node_classes: tuple[str, ...] = ()  # node classes the workflow uses (inventory)
    # signatures already made (equal ones shared: a queued job's sets are most of its size)
    shared: InitVar[dict[Signature, Signature] | None] = None
    # Derived once from the fields above (every plan reads them for every queued job):
    order: tuple[int, float, str] = field(init=False, repr=False, compare=False)
    signature: Signature = field(init=False, repr=False, compare=False)
    problem: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self, shared: dict[Signature, Signature] | None) -> None:
        sig = static_signature(self)
        if shared is not None:
            sig = shared.setdefault(sig, sig)
        object.__setattr__(self, "order", (-self.priority, self.submitted_at, self.job_id))
        object.__setattr__(self, "signature", sig)
        object.__setattr__(self, "problem", job_problem(self))


def static_signature(job: JobRequest) -> Signature:
    """The static constraints of a job: jobs with equal signatures see the same eligible slots."""
    needs = (frozenset(job.model_refs), frozenset(job.node_classes))  # the inventory check
    if not job.labels and not job.models and job.gpu_name is None:
        return (job.gpus, _NO_LABELS, _NO_MODELS, None, *needs)  # most jobs: fewer sets to build
    name = job.gpu_name.lower() if job.gpus == 1 and job.gpu_name is not None else None
    return (job.gpus, frozenset(job.labels.items()), frozenset(job.models), name, *needs)


def job_problem(job: JobRequest) -> str | None:
    """A request no fleet could ever serve, whatever it looks like (None when it is well formed)."""
    if job.gpus not in (0, 1):
        return f"unsupported request: gpus={job.gpus} (only 0 or 1 is supported)"
    for name in ("vram_mb", "ram_mb"):
        if getattr(job, name) < 0:
            return f"invalid request: {name}={getattr(job, name)}"
    if math.isnan(job.cpu) or job.cpu < 0:
        return f"invalid request: cpu={job.cpu}"
    return None


@dataclass(frozen=True, slots=True)
class GpuView:
    index: int
    name: str
    vram_total_mb: int
    vram_free_mb: int  # what NVML / ComfyUI reports free now
    reserved_mb: int  # sum of vram_mb of ASSIGNED/RUNNING jobs placed on this GPU
    unallocated_mb: int  # part of reserved_mb those jobs have not yet allocated


@dataclass(frozen=True, slots=True)
class SlotView:
    """One ComfyUI instance."""

    instance_id: str
    gpu_index: int | None  # None = CPU-only instance
    healthy: bool
    capacity: int  # jobs it may hold at once (1 normally)
    active: int  # jobs currently assigned/running on it
    recent: frozenset[str] = frozenset()  # shape hashes and model files it ran recently (warm)


@dataclass(frozen=True, slots=True)
class AgentView:
    agent_id: str
    schedulable: bool  # online and not draining
    labels: Mapping[str, str]
    ram_available_mb: int  # reported available minus not-yet-allocated ram_mb of its jobs
    ram_reserved_mb: int
    ram_total_mb: int
    cpu_count: int
    cpu_reserved: float
    gpus: tuple[GpuView, ...]
    slots: tuple[SlotView, ...]
    models: frozenset[str]
    recent_hashes: tuple[str, ...]  # workflow hashes recently run here, most recent first
    recent_failures: int  # failures here in the recent window
    # node classes its ComfyUI instances offer; None: the agent reported no inventory, so the
    # workflow's own model files and node classes are not checked there (explicit
    # `constraints.models` still are, against `models`)
    node_classes: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    agent_id: str
    instance_id: str
    gpu_index: int | None
    score: float  # informational: how tightly the job fits (1.0 = nothing left over)
    warm: bool = False  # the instance ran this workflow shape or its models recently


@dataclass(frozen=True, slots=True)
class PlanResult:
    placements: tuple[Placement, ...]
    pending: Mapping[str, str]  # job_id -> human reason it was not placed
