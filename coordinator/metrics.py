"""Prometheus metrics: histograms and counters observed on job transitions, gauges read at scrape.

Each coordinator owns its own `CollectorRegistry` (no process-wide default registry), so several
coordinators in one process (the API tests) never share numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from comfyfleet.coordinator.fleet import AgentState, AgentStatus, agent_view
from comfyfleet.coordinator.model import JobRecord, output_bytes
from comfyfleet.shared.status import JobStatus

if TYPE_CHECKING:
    from comfyfleet.coordinator.service import Coordinator

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
_LABEL = re.compile(r"[^a-z0-9_]+")

# Requeue reasons are free text written by the service; a label needs a small fixed set.
_REQUEUE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("comfyui restarted", "comfyui_restart"),
    ("lost", "agent_lost"),
    ("not started within", "assign_timeout"),
    ("restarted without", "agent_restart"),
    ("did not confirm the cancel", "cancel_unconfirmed"),
    ("timed out", "timeout"),
    ("out of memory", "oom"),
    ("stall", "stall"),
    ("crash", "comfyui_crash"),
    ("drain", "drain"),
)


def label_value(text: str | None, default: str = "other") -> str:
    """A short lower_snake label from arbitrary text (error codes come from agents)."""
    value = _LABEL.sub("_", (text or "").lower()).strip("_")[:40]
    return value or default


def requeue_reason(job: JobRecord) -> str:
    """The category of the reason a job went back to the queue (from its last transition)."""
    reason = job.history[-1].reason.lower() if job.history else ""
    for needle, category in _REQUEUE_PATTERNS:
        if needle in reason:
            return category
    return "other"


def failure_reason(job: JobRecord) -> str:
    return label_value(str((job.error or {}).get("code") or "failed"), "failed")


class Metrics:
    """Everything `/metrics` shows for one coordinator."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.schedule_seconds = Histogram(
            "comfyfleet_schedule_seconds",
            "Time to compute one placement plan",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.placement_latency = Histogram(
            "comfyfleet_placement_latency_seconds",
            "Time from QUEUED to ASSIGNED",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.submit_to_running = Histogram(
            "comfyfleet_submit_to_running_seconds",
            "Time from submit to RUNNING",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.job_duration = Histogram(
            "comfyfleet_job_duration_seconds",
            "Time from RUNNING to a terminal state",
            ["status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.report_batch_size = Histogram(
            "comfyfleet_agent_report_batch_size",
            "Reports per agent request to POST agent/v1/reports",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.report_group_size = Histogram(
            "comfyfleet_agent_report_group_size",
            "Reports requests written in one store transaction (one event loop turn's)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.finished = Counter(
            "comfyfleet_jobs_finished", "Jobs that reached a terminal state", ["status"], registry=r
        )
        self.requeues = Counter(
            "comfyfleet_requeues", "Jobs put back in the queue, by reason", ["reason"], registry=r
        )
        self.failures = Counter(
            "comfyfleet_failures", "Jobs that failed, by reason", ["reason"], registry=r
        )
        self.agents_lost = Counter("comfyfleet_agents_lost", "Agents declared lost", registry=r)
        # results that leave the coordinator (issue 17)
        self.webhook_tries = Counter(
            "comfyfleet_webhook_tries",
            "Webhook delivery tries, by result (delivered, failed, gave_up)",
            ["result"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "comfyfleet_webhook_latency_seconds",
            "Time from the job change to the receiver's 2xx",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.output_bytes_stored = Gauge(
            "comfyfleet_output_bytes_stored",
            "Bytes of job outputs the output store holds",
            registry=r,
        )
        self.output_bytes_deleted = Counter(
            "comfyfleet_output_bytes_deleted",
            "Bytes of job outputs deleted by retention",
            registry=r,
        )
        self.jobs_expired = Counter(
            "comfyfleet_jobs_expired",
            "Finished jobs deleted with their outputs, by reason (ttl, disk)",
            ["reason"],
            registry=r,
        )

    def watch(self, coord: Coordinator) -> None:
        self.registry.register(FleetCollector(coord))

    def on_transition(self, old: JobRecord | None, new: JobRecord, now: float) -> None:
        if old is None or old.status == new.status:
            return
        status = new.status
        if status == JobStatus.ASSIGNED:
            self.placement_latency.observe(max(0.0, now - old.queued_at))
        elif status == JobStatus.RUNNING:
            self.submit_to_running.observe(max(0.0, now - new.created_at))
        elif status == JobStatus.QUEUED and old.status != JobStatus.SUBMITTED:
            self.requeues.labels(requeue_reason(new)).inc()
        elif status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            self.finished.labels(status.value).inc()
            if status == JobStatus.COMPLETED:
                self.output_bytes_stored.inc(output_bytes(new))
            started = new.timestamps.get(JobStatus.RUNNING.value)
            if started is not None and old.status == JobStatus.RUNNING:
                self.job_duration.labels(status.value).observe(max(0.0, now - started))
            if status == JobStatus.FAILED:
                self.failures.labels(failure_reason(new)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class FleetCollector(Collector):
    """Gauges computed from the coordinator's in-memory state at scrape time."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        coord = self.coord
        jobs = GaugeMetricFamily("comfyfleet_jobs", "Non-terminal jobs by state", labels=["status"])
        counts = {
            s: 0
            for s in JobStatus
            if s not in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
        }
        for job in coord.jobs.values():
            counts[job.status] = counts.get(job.status, 0) + 1
        for status, n in counts.items():
            jobs.add_metric([status.value], n)
        yield jobs
        yield GaugeMetricFamily(
            "comfyfleet_queue_depth", "Jobs waiting for placement", value=len(coord.queued)
        )
        agents = GaugeMetricFamily("comfyfleet_agents", "Agents by state", labels=["status"])
        by_state = {s: 0 for s in AgentStatus}
        for agent in coord.agents.values():
            by_state[agent.status] += 1
        for state, n in by_state.items():
            agents.add_metric([state.value], n)
        yield agents
        labels = ["agent_id", "gpu", "name"]
        total = GaugeMetricFamily(
            "comfyfleet_gpu_vram_total_bytes", "GPU VRAM total", labels=labels
        )
        reserved = GaugeMetricFamily(
            "comfyfleet_gpu_vram_reserved_bytes",
            "GPU VRAM reserved by assigned and running jobs",
            labels=labels,
        )
        free = GaugeMetricFamily(
            "comfyfleet_gpu_vram_free_bytes",
            "GPU VRAM free as last reported by the agent",
            labels=labels,
        )
        now = coord.clock()
        mib = 1 << 20
        for agent in coord.agents.values():
            if agent.status == AgentStatus.LOST:
                continue
            view = agent_view(agent, coord.jobs, 600.0, now)
            for gpu, gv in zip(agent.gpus, view.gpus, strict=False):
                key = [agent.agent_id, str(gpu.index), gpu.name]
                total.add_metric(key, gpu.vram_total_mb * mib)
                reserved.add_metric(key, gv.reserved_mb * mib)
                free.add_metric(key, gpu.vram_free_mb * mib)
        yield total
        yield reserved
        yield free
        yield restart_counts(coord.agents.values())


def restart_counts(agents: Iterable[AgentState]) -> Metric:
    """Restarts of the agents' managed ComfyUIs by reason, as each agent counts them (since
    that agent started; a counter, so Prometheus' rate() copes with the reset)."""
    family = CounterMetricFamily(
        "comfyfleet_comfyui_restarts",
        "Restarts of managed ComfyUI instances by their agent, by reason",
        labels=["agent_id", "instance", "reason"],
    )
    for agent in agents:
        for inst in agent.instances:
            for reason, n in sorted(inst.restart_counts.items()):
                family.add_metric([agent.agent_id, inst.instance_id, label_value(reason)], n)
    return family
