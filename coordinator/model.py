"""The coordinator's records: a job and an agent as the store keeps them."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.shared.history import Transition
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus


@dataclass(frozen=True, slots=True)
class WorkflowFacts:
    """What placement needs to know of a job's workflow, so the in-memory index can drop the
    workflow itself (it stays in the store): its shape hash and the model files and node classes
    it needs. Derived from `spec.workflow`; never stored."""

    shape: str
    model_refs: tuple[str, ...]
    node_classes: tuple[str, ...]

    @classmethod
    def of(cls, workflow: Mapping[str, Any]) -> WorkflowFacts:
        from comfyfleet.shared.workflow_shape import model_refs, node_classes, shape_hash

        return cls(
            shape=sys.intern(shape_hash(workflow)),
            model_refs=tuple(sys.intern(m) for m in model_refs(workflow)),
            node_classes=tuple(sys.intern(c) for c in node_classes(workflow)),
        )


@dataclass(slots=True)
class JobRecord:
    """A job. `spec` is written once at submit; everything else is the job's mutable state."""

    id: str
    spec: JobSpec
    workflow_hash: str
    created_at: float
    idempotency_key: str | None = None
    tenant: str = "default"
    status: JobStatus = JobStatus.SUBMITTED
    attempt: int = 0
    updated_at: float = 0.0
    timestamps: dict[str, float] = field(default_factory=dict)  # status -> last time entered
    agent_id: str | None = None
    instance_id: str | None = None
    gpu_index: int | None = None
    prompt_id: str | None = None
    seeds: dict[str, int] = field(default_factory=dict)
    vram_mb: int = 0  # the reservation used for placement
    retries_used: int = 0
    desired: str = "run"  # "run" or "cancel": what the coordinator wants, apart from status
    pending_reason: str | None = None
    error: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    failed_agents: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    gpu_name: str | None = None  # the GPU model the completed attempt ran on
    vram_peak_mb: int | None = None  # measured by the agent during the completed attempt
    profile: list[dict[str, Any]] = field(default_factory=list)  # per-node timings, cache hits
    history: list[Transition] = field(default_factory=list)
    facts: WorkflowFacts | None = None  # memory only: set when the index drops the workflow

    @property
    def workflow_facts(self) -> WorkflowFacts:
        return self.facts if self.facts is not None else WorkflowFacts.of(self.spec.workflow)

    @property
    def queued_at(self) -> float:
        return self.timestamps.get(JobStatus.QUEUED.value, self.created_at)


def output_bytes(job: JobRecord) -> int:
    """What a job's stored outputs take, by their declared sizes."""
    return sum(int(o.get("size", 0)) for o in job.outputs)


@dataclass(slots=True)
class AgentRecord:
    """What the store remembers of an agent: its last registration (hardware, labels)."""

    agent_id: str
    registered_at: float
    info: dict[str, Any]  # the Register message as a plain dict


@dataclass(frozen=True, slots=True)
class DeliveryTry:
    """One try to deliver a webhook message: the HTTP status, or the error, and how long."""

    at: float
    status: int | None
    error: str | None
    ms: float


@dataclass(frozen=True, slots=True)
class WebhookMessage:
    """A webhook message in the store's outbox: written in the same transaction as the job
    change it tells of, then delivered (at least once) by the outbox loop.

    `id` is the Standard Webhooks `webhook-id`: the same on every try. `state` is "pending"
    (to deliver at `next_at`), "delivered" or "failed" (given up, `tries[-1]` says why)."""

    id: str
    job_id: str
    tenant: str
    url: str
    event: str  # "job.completed", ...
    payload: str  # the JSON body, signed as stored
    created_at: float
    next_at: float
    attempts: int = 0
    state: str = "pending"
    tries: tuple[DeliveryTry, ...] = ()


@dataclass(frozen=True, slots=True)
class Doomed:
    """A job whose record is deleted and whose outputs are still to be removed (retention)."""

    job_id: str
    tenant: str
    output_bytes: int
