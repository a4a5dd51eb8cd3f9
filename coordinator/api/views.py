"""How jobs and agents look to clients (JSON)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from comfyfleet.coordinator.eta import eta
from comfyfleet.coordinator.feed import output_json
from comfyfleet.coordinator.fleet import AgentState, agent_view
from comfyfleet.coordinator.model import JobRecord, WebhookMessage
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.coordinator.state import LiveProgress
from comfyfleet.shared.status import JobStatus


def job_json(
    job: JobRecord,
    live: LiveProgress | None,
    *,
    full: bool = True,
    coord: Coordinator | None = None,
) -> dict[str, Any]:
    spec = job.spec
    progress: dict[str, Any] = {"fraction": 1.0 if job.status == JobStatus.COMPLETED else None}
    if live is not None:
        progress.update(
            fraction=live.fraction,
            node=live.node,
            node_type=live.node_type,
            value=live.value,
            max=live.max,
            cached_nodes=live.cached,
            updated_at=live.updated_at,
        )
    out: dict[str, Any] = {
        "id": job.id,
        "status": job.status.value,
        "attempt": job.attempt,
        "agent_id": job.agent_id,
        "instance_id": job.instance_id,
        "gpu_index": job.gpu_index,
        "prompt_id": job.prompt_id,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "timestamps": job.timestamps,
        "priority": spec.priority,
        "resources": {**msgspec.to_builtins(spec.resources), "vram_mb": job.vram_mb},
        "progress": progress,
        "pending_reason": job.pending_reason if job.status == JobStatus.QUEUED else None,
        "cancel_requested": job.desired == "cancel",
        "retries_used": job.retries_used,
        "max_retries": spec.max_retries,
        "error": job.error,
        "outputs": [output_json(job, o) for o in job.outputs],
        "workflow_hash": job.workflow_hash,
        "shape_hash": job.workflow_facts.shape,
        "metadata": spec.metadata,
    }
    if coord is not None:
        out["eta"] = job_eta(coord, job, live)
    if full:
        out["seeds"] = job.seeds
        out["constraints"] = msgspec.to_builtins(spec.constraints)
        out["timeout_s"] = spec.timeout_s
        out["timings"] = job.timings
        out["history"] = msgspec.to_builtins(job.history)
        out["gpu_name"] = job.gpu_name
        out["vram_peak_mb"] = job.vram_peak_mb
        out["profile"] = job.profile
        out["inputs"] = sorted(spec.inputs)
        if coord is not None:
            out["webhooks"] = webhooks_json(coord.store.messages_of_job(job.id))
    return out


def job_eta(coord: Coordinator, job: JobRecord, live: LiveProgress | None) -> dict[str, Any] | None:
    return eta(
        coord.learning.expected(job, coord.agents.get(job.agent_id or "")),
        job.status.value,
        job.timestamps.get(JobStatus.RUNNING.value),
        live.position if live is not None else None,
        live.fraction if live is not None else None,
        coord.clock(),
    )


def visible_job_ids(coord: Coordinator, job_ids: Iterable[str], tenant: str | None) -> list[str]:
    """The ids among `job_ids` of jobs the tenant may see (all for None, an admin), sorted: a
    tenant sees the fleet's agents, GPUs and capacity, but never another tenant's job ids."""
    if tenant is None:
        return sorted(job_ids)
    return sorted(
        j for j in job_ids if (job := coord.jobs.get(j)) is not None and job.tenant == tenant
    )


def agent_json(
    coord: Coordinator, agent: AgentState, now: float, tenant: str | None = None
) -> dict[str, Any]:
    """An agent as `tenant` sees it (None: an admin, who sees every job id)."""
    view = agent_view(agent, coord.jobs, 600.0, now)
    gpus = []
    for g, v in zip(agent.gpus, view.gpus, strict=True):
        gpus.append(
            {
                **msgspec.to_builtins(g),
                "vram_reserved_mb": v.reserved_mb,
                "vram_schedulable_mb": max(
                    0, min(v.vram_total_mb - v.reserved_mb, v.vram_free_mb - v.unallocated_mb)
                ),
            }
        )
    return {
        "id": agent.agent_id,
        "status": agent.status.value,
        "version": agent.version,
        "labels": agent.labels,
        "last_seen": agent.last_seen,
        "seen_ago_s": round(now - agent.last_seen, 3),
        "registered_at": agent.registered_at,
        "host": msgspec.to_builtins(agent.host),
        "gpus": gpus,
        "instances": [msgspec.to_builtins(i) for i in agent.instances],
        "models": sorted(agent.models),
        "node_classes": None if agent.node_classes is None else len(agent.node_classes),
        "recent": {i: list(r) for i, r in agent.recent_by_instance.items()},
        "blocked_workflows": coord.blocks.blocked_on(agent.agent_id, now),
        "jobs": visible_job_ids(coord, agent.jobs, tenant),
        "ram_reserved_mb": view.ram_reserved_mb,
    }


def webhooks_json(messages: list[WebhookMessage]) -> list[dict[str, Any]]:
    """A job's webhook delivery log: each message and its tries."""
    return [
        {
            "id": m.id,
            "event": m.event,
            "url": m.url,
            "state": m.state,
            "attempts": m.attempts,
            "created_at": m.created_at,
            "next_at": m.next_at if m.state == "pending" else None,
            "tries": [msgspec.to_builtins(t) for t in m.tries],
        }
        for m in messages
    ]
