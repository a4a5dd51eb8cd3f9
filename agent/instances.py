"""The agent's local ComfyUI instances and the small pure rules about them: which WebSocket
clientId a new prompt gets, how a GPU is reported, what a kept report stands for."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfyfleet.agent.comfyui.client import ComfyUIClient
from comfyfleet.agent.outbox import Report
from comfyfleet.agent.probe import GpuSnapshot
from comfyfleet.agent.state import HeldJob
from comfyfleet.shared import protocol as p

if TYPE_CHECKING:
    from comfyfleet.agent.runner import JobRunner


@dataclass(slots=True)
class Instance:
    """One local ComfyUI: a slot bound to a GPU index (None: CPU only)."""

    instance_id: str
    url: str
    client: ComfyUIClient
    client_id: str
    gpu_index: int | None = None
    healthy: bool = False
    error: str | None = "not checked yet"
    stats: dict[str, Any] = field(default_factory=dict)
    capacity: int = 1
    # a ComfyUI the agent runs (agent/supervise): why it may not take jobs now (None: it may),
    # and the kind/state/uptime/restart fields its heartbeat entry carries
    gate: Callable[[], str | None] | None = None
    status: dict[str, Any] = field(default_factory=dict)

    def info(self) -> p.InstanceInfo:
        return p.InstanceInfo(
            instance_id=self.instance_id,
            url=self.url,
            gpu_index=self.gpu_index,
            healthy=self.healthy,
            capacity=self.capacity,
            error=self.error,
            **self.status,
        )


def pipeline_client_id(
    inst: Instance, runners: Iterable[JobRunner], held: HeldJob | None = None
) -> str:
    """The WebSocket clientId for a new prompt on `inst`: one per pipeline slot.

    ComfyUI sends a prompt's events only to the socket with the prompt's clientId and keeps one
    socket per clientId, so two prompts in flight on one ComfyUI (capacity 2) need two ids. The
    first slot keeps the instance's plain id; a re-attached job keeps the id it was sent with.
    """
    if held is not None:
        return held.client_id or inst.client_id
    taken = {r.client_id for r in runners if r.job.instance_id == inst.instance_id}
    k = 0
    while True:
        cid = inst.client_id if k == 0 else f"{inst.client_id}-{k}"
        if cid not in taken:
            return cid
        k += 1


def replay_assignment(report: Report) -> p.Assignment:
    """The assignment a runner that only sends a kept report stands for."""
    return p.Assignment(
        job_id=report.finish.job_id,
        attempt=report.finish.attempt,
        instance_id=report.instance_id,
        workflow={},
        timeout_s=0.0,
    )


def gpu_info(s: GpuSnapshot, index: int, reclaimable_mb: int = 0) -> p.GpuInfo:
    free = min(s.vram_total_mb, s.vram_free_mb + reclaimable_mb)
    return p.GpuInfo(
        index=index,
        name=s.name,
        uuid=s.uuid,
        vram_total_mb=s.vram_total_mb,
        vram_used_mb=s.vram_used_mb,
        vram_free_mb=free,
        utilization_pct=s.utilization_pct,
        source=s.source,
    )
