"""Builders shared by the scheduler tests (no tests here)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from comfyfleet.coordinator.scheduler.model import AgentView, GpuView, JobRequest, SlotView

NOW = 10_000.0


def gpu(
    index: int = 0,
    *,
    name: str = "NVIDIA GeForce RTX 4090",
    total: int = 24576,
    free: int | None = None,
    reserved: int = 0,
    unallocated: int = 0,
) -> GpuView:
    return GpuView(
        index=index,
        name=name,
        vram_total_mb=total,
        vram_free_mb=total if free is None else free,
        reserved_mb=reserved,
        unallocated_mb=unallocated,
    )


def slot(
    instance_id: str = "c0",
    gpu_index: int | None = 0,
    *,
    healthy: bool = True,
    capacity: int = 1,
    active: int = 0,
    recent: Iterable[str] = (),
) -> SlotView:
    return SlotView(instance_id, gpu_index, healthy, capacity, active, frozenset(recent))


def agent(
    agent_id: str = "a1",
    *,
    gpus: Iterable[GpuView] | None = None,
    slots: Iterable[SlotView] | None = None,
    schedulable: bool = True,
    labels: Mapping[str, str] | None = None,
    ram_total: int = 65536,
    ram_available: int | None = None,
    ram_reserved: int = 0,
    cpu_count: int = 16,
    cpu_reserved: float = 0.0,
    models: Iterable[str] = (),
    recent_hashes: Iterable[str] = (),
    recent_failures: int = 0,
    node_classes: Iterable[str] | None = None,
) -> AgentView:
    gpu_list = tuple(gpus) if gpus is not None else (gpu(0),)
    slot_list = (
        tuple(slots) if slots is not None else tuple(slot(f"c{g.index}", g.index) for g in gpu_list)
    )
    return AgentView(
        agent_id=agent_id,
        schedulable=schedulable,
        labels=dict(labels or {}),
        ram_available_mb=ram_total if ram_available is None else ram_available,
        ram_reserved_mb=ram_reserved,
        ram_total_mb=ram_total,
        cpu_count=cpu_count,
        cpu_reserved=cpu_reserved,
        gpus=gpu_list,
        slots=slot_list,
        models=frozenset(models),
        recent_hashes=tuple(recent_hashes),
        recent_failures=recent_failures,
        node_classes=None if node_classes is None else frozenset(node_classes),
    )


def job(
    job_id: str = "j1",
    *,
    priority: int = 0,
    queued_at: float = NOW - 1,
    submitted_at: float | None = None,  # default: when it was queued (never requeued)
    gpus: int = 1,
    vram: int = 1000,
    ram: int = 0,
    cpu: float = 0.0,
    labels: Mapping[str, str] | None = None,
    gpu_name: str | None = None,
    models: Iterable[str] = (),
    workflow_hash: str = "wf",
    avoid: Iterable[str] = (),
    blocked: Iterable[str] = (),
    model_refs: Iterable[str] = (),
    node_classes: Iterable[str] = (),
) -> JobRequest:
    return JobRequest(
        job_id=job_id,
        priority=priority,
        submitted_at=queued_at if submitted_at is None else submitted_at,
        queued_at=queued_at,
        gpus=gpus,
        vram_mb=vram,
        ram_mb=ram,
        cpu=cpu,
        labels=dict(labels or {}),
        gpu_name=gpu_name,
        models=tuple(models),
        workflow_hash=workflow_hash,
        avoid_agents=frozenset(avoid),
        blocked_agents=frozenset(blocked),
        model_refs=tuple(model_refs),
        node_classes=tuple(node_classes),
    )
