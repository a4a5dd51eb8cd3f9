"""What the coordinator tells the outside as things happen: bus events and metrics.

The service calls one method per kind of happening; this module decides what each looks like
(plain dicts for the SSE streams) and which metrics it moves. No I/O beyond the in-memory bus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from comfyfleet.coordinator import events as ev
from comfyfleet.coordinator import restarts
from comfyfleet.coordinator.events import EventBus
from comfyfleet.coordinator.metrics import Metrics
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.media import served_as
from comfyfleet.shared.protocol import JobEvent
from comfyfleet.shared.status import TERMINAL, JobStatus

if TYPE_CHECKING:
    from comfyfleet.coordinator.fleet import AgentState
    from comfyfleet.coordinator.state import LiveProgress


def output_json(job: JobRecord, entry: dict[str, Any]) -> dict[str, Any]:
    """An output as clients see it: its content type is the one it is served with."""
    return {
        **{k: v for k, v in entry.items() if k != "attempt"},
        "content_type": served_as(entry["name"]).content_type,
        "url": f"/v1/jobs/{job.id}/outputs/{entry['name']}",
    }


def job_event_data(job: JobRecord) -> dict[str, Any]:
    """A job's status as a `job` event carries it."""
    last = job.history[-1] if job.history else None
    return {
        "job_id": job.id,
        "status": job.status.value,
        "attempt": job.attempt,
        "agent_id": job.agent_id,
        "at": last.at if last else job.updated_at,
        "reason": last.reason if last else None,
        "pending_reason": job.pending_reason if job.status == JobStatus.QUEUED else None,
        "cancel_requested": job.desired == "cancel",
        "error": job.error,
        "outputs": [output_json(job, o) for o in job.outputs],
        "timestamps": job.timestamps,
    }


def progress_data(job: JobRecord, live: LiveProgress) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "attempt": job.attempt,
        "fraction": live.fraction,
        "node": live.node,
        "node_type": live.node_type,
        "value": live.value,
        "max": live.max,
        "cached_nodes": live.cached,
        "at": live.updated_at,
        "running_since": job.timestamps.get(JobStatus.RUNNING.value),
    }


def agent_data(agent: AgentState, what: str) -> dict[str, Any]:
    return {
        "agent_id": agent.agent_id,
        "event": what,
        "status": agent.status.value,
        "draining": agent.draining,
        "jobs": sorted(agent.jobs),
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "vram_total_mb": g.vram_total_mb,
                "vram_used_mb": g.vram_used_mb,
                "vram_free_mb": g.vram_free_mb,
            }
            for g in agent.gpus
        ],
    }


log = structlog.get_logger("coordinator")


class FeedWatcher(Protocol):
    """Another listener in this process (the ComfyUI facade), called synchronously: it must
    not block and should not raise (an exception is logged and swallowed)."""

    def job_changed(self, old: JobRecord | None, new: JobRecord) -> None: ...

    def comfy_events(self, job: JobRecord, attempt: int, events: Sequence[JobEvent]) -> None: ...


class Feed:
    def __init__(self, bus: EventBus, metrics: Metrics) -> None:
        self.bus = bus
        self.metrics = metrics
        self.watchers: list[FeedWatcher] = []

    def job_changed(self, old: JobRecord | None, new: JobRecord, now: float) -> None:
        if old is not None and old.status == new.status and old.desired == new.desired:
            return
        for watcher in self.watchers:
            try:
                watcher.job_changed(old, new)
            except Exception:
                log.exception("feed_watcher_failed", job_id=new.id)
        self.metrics.on_transition(old, new, now)
        if new.status == JobStatus.COMPLETED:
            for entry in new.outputs:
                self.bus.publish(
                    ev.OUTPUT,
                    {"job_id": new.id, "attempt": new.attempt, **output_json(new, entry)},
                    new.id,
                )
        self.bus.publish(ev.JOB, job_event_data(new), new.id, terminal=new.status in TERMINAL)

    def progress(self, job: JobRecord, live: LiveProgress, preview: bool) -> None:
        self.bus.publish(ev.PROGRESS, progress_data(job, live), job.id)
        if preview and live.preview is not None:
            self.bus.publish(
                ev.PREVIEW,
                {
                    "job_id": job.id,
                    "attempt": job.attempt,
                    "mime": live.preview[1],
                    "url": f"/v1/jobs/{job.id}/preview?n={live.previews}",
                },
                job.id,
            )

    def comfy_events(self, job: JobRecord, attempt: int, events: Sequence[JobEvent]) -> None:
        """An agent's events for a job, as they came (ComfyUI's own frames among them)."""
        for watcher in self.watchers:
            try:
                watcher.comfy_events(job, attempt, events)
            except Exception:
                log.exception("feed_watcher_failed", job_id=job.id)

    def agent(self, agent: AgentState, what: str) -> None:
        if what == "lost":
            self.metrics.agents_lost.inc()
        for instance_id, restart in agent.take_restarts():
            self.bus.publish(
                ev.COMFYUI_RESTARTED, restarts.event_data(agent.agent_id, instance_id, restart)
            )
        self.bus.publish(ev.AGENT, agent_data(agent, what))
