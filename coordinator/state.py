"""The placing coordinator's live memory: its indexes over the store's active jobs, and its agents.

Only the one coordinator that places jobs holds this. Nothing here writes to the store: every
change to a job reaches `Live.index` through `ledger.Ledger.apply`, after its guarded write.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

import msgspec

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.errors import NotFound
from comfyfleet.coordinator.eta import Position
from comfyfleet.coordinator.feed import Feed
from comfyfleet.coordinator.fleet import AgentState, AgentStatus
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.scheduler.model import JobRequest, Signature
from comfyfleet.shared import protocol as p
from comfyfleet.shared.status import ACTIVE, TERMINAL, JobStatus


def job_request(job: JobRecord, shared: dict[Signature, Signature] | None = None) -> JobRequest:
    spec = job.spec
    facts = job.workflow_facts
    return JobRequest(
        job_id=job.id,
        priority=spec.priority,
        submitted_at=job.created_at,
        queued_at=job.queued_at,
        gpus=spec.resources.gpus,
        vram_mb=job.vram_mb,
        ram_mb=spec.resources.ram_mb,
        cpu=spec.resources.cpu,
        labels=spec.constraints.labels,
        gpu_name=spec.constraints.gpu_name,
        models=tuple(spec.constraints.models),
        workflow_hash=facts.shape,  # placement affinity and blocking go by shape
        avoid_agents=frozenset(job.failed_agents),
        blocked_agents=frozenset(),
        model_refs=facts.model_refs,
        node_classes=facts.node_classes,
        shared=shared,
    )


_NO_WORKFLOW: dict[str, Any] = {}
MAX_SHARED_SIGNATURES = 4096  # distinct job signatures kept for sharing
_ORDER = attrgetter("order")


def without_workflow(job: JobRecord) -> JobRecord:
    """The job as the in-memory index keeps it: the workflow and input files (most of a job's
    bytes) stay in the store and are read when a lease hands the job out; placement needs only
    the request and the workflow's facts."""
    if job.spec.workflow is _NO_WORKFLOW:
        return job
    names_only = {name: "" for name in job.spec.inputs}  # the view still lists the inputs
    spec = msgspec.structs.replace(job.spec, workflow=_NO_WORKFLOW, inputs=names_only)
    return dataclasses.replace(job, facts=job.workflow_facts, spec=spec)


@dataclasses.dataclass(slots=True)
class LiveProgress:
    """What the agent last reported about a running job (memory only, not durable)."""

    fraction: float | None = None
    node: str | None = None
    node_type: str | None = None
    value: float | None = None
    max: float | None = None
    cached: list[str] = dataclasses.field(default_factory=list)
    preview: tuple[bytes, str] | None = None
    previews: int = 0  # how many preview frames arrived (cache-busting for preview URLs)
    updated_at: float = 0.0
    position: Position = dataclasses.field(default_factory=Position)  # for the time left
    learned: Mapping[str, float] | None = None  # the shape's per-node seconds on this slot


class Live:
    """The in-memory indexes. `index(old, new)` is the one place a job change enters them."""

    def __init__(self, config: CoordinatorConfig, feed: Feed, clock: Callable[[], float]) -> None:
        self.config = config
        self.feed = feed
        self.clock = clock
        self.jobs: dict[str, JobRecord] = {}  # every non-terminal job
        self.queued: dict[str, JobRequest] = {}
        self.signatures: dict[Signature, Signature] = {}  # shared by the queued jobs' requests
        # the queue in plan order as of the last `queue_in_order` (requests no longer queued are
        # dropped at the next call), and the requests made since
        self._in_order: list[JobRequest] = []
        self._since: list[JobRequest] = []
        self.agents: dict[str, AgentState] = {}
        # active job_id -> when a lease handed the attempt to its agent (or the agent reported it)
        self.delivered: dict[str, float] = {}
        # active job_id -> when its agent first showed it holds the attempt (a report listing it,
        # Started, events): from then on, a report that omits it means the agent lost it
        self.held: dict[str, float] = {}
        self.cancel_sent: dict[str, float] = {}  # job_id -> when a cancel/timeout was asked
        # ASSIGNED job_id -> when its assign timeout starts, if later than the placement: the
        # coordinator's restart (no agent could start it meanwhile), or its agent's last report
        # that ComfyUI holds it queued (pipelined: it waits behind the running prompt)
        self.awaiting_since: dict[str, float] = {}
        self.unexplained: set[str] = set()  # QUEUED jobs no plan has given a pending reason yet
        self.explained_at = float("-inf")  # when a plan last explained every pending job
        self.progress: dict[str, LiveProgress] = {}
        self.wake = asyncio.Event()  # the scheduler loop's: something may be placeable
        self.counters: dict[str, int] = {
            "placements": 0,
            "requeues": 0,
            "lost_agents": 0,
            "placements_warm": 0,
            "workflow_blocked": 0,
            "workflow_unblocked": 0,
        }

    def agent(self, agent_id: str) -> AgentState:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id}", "agent_id")
        return agent

    def index(self, old: JobRecord | None, new: JobRecord) -> None:
        """Memory after a job moved from `old` (None: newly known) to `new` in the store."""
        job_id = new.id
        self.feed.job_changed(old, new, self.clock())
        if (
            old is not None
            and old.agent_id
            and (new.status not in ACTIVE or new.agent_id != old.agent_id)
        ):
            agent = self.agents.get(old.agent_id)
            if agent is not None:
                agent.jobs.discard(job_id)
                agent.to_cancel.pop(job_id, None)
            self.delivered.pop(job_id, None)
            self.held.pop(job_id, None)
            self.cancel_sent.pop(job_id, None)
        if new.status != JobStatus.ASSIGNED:
            self.awaiting_since.pop(job_id, None)
        if new.status in TERMINAL:
            self.unexplained.discard(job_id)
            self.jobs.pop(job_id, None)
            self.queued.pop(job_id, None)
            self.progress.pop(job_id, None)
            self.wake.set()
            return
        self.jobs[job_id] = without_workflow(new)
        if new.status != JobStatus.QUEUED:
            self.unexplained.discard(job_id)
        if new.status == JobStatus.QUEUED:
            self.unexplained.add(job_id)
            if len(self.signatures) > MAX_SHARED_SIGNATURES:
                self.signatures.clear()  # later requests share again from here
            request = self.queued[job_id] = job_request(new, self.signatures)
            self._since.append(request)
            if len(self._since) > 2 * len(self.queued) + 1000:  # no plan ran for long
                self.queue_in_order()
            self.progress.pop(job_id, None)
            self.wake.set()
        else:
            self.queued.pop(job_id, None)
        if new.status in ACTIVE and new.agent_id:
            agent = self.agents.get(new.agent_id)
            if agent is None:  # recovered job whose agent the store did not know
                now = self.clock()
                agent = AgentState(
                    new.agent_id,
                    AgentStatus.RECONNECTING,
                    now,
                    now,
                    lost_deadline=now + self.config.restart_grace_s,
                )
                self.agents[new.agent_id] = agent
            agent.jobs.add(job_id)

    def queue_in_order(self) -> list[JobRequest]:
        """The queued jobs' requests in plan order (`JobRequest.order`), kept in order between
        calls: the sort sees the last order plus the requests made since (nearly linear)."""
        queued = self.queued
        current = [r for r in self._in_order if queued.get(r.job_id) is r]
        current.extend(r for r in self._since if queued.get(r.job_id) is r)
        if len(current) != len(queued):  # memory put back behind its back (a failed batch)
            current = list(queued.values())
        current.sort(key=_ORDER)
        self._in_order, self._since = current, []
        return list(current)

    def send_cancel(self, job: JobRecord, now: float) -> None:
        """Ask the job's agent (on its next lease) to stop the attempt; memory only."""
        self.cancel_sent[job.id] = now
        agent = self.agents.get(job.agent_id or "")
        if agent is not None:
            agent.to_cancel[job.id] = p.JobRef(job_id=job.id, attempt=job.attempt)
            agent.wake.set()

    def acknowledged(self, job_id: str, now: float) -> None:
        """The job's agent showed it holds the current attempt (memory only)."""
        self.held.setdefault(job_id, now)
        self.delivered.setdefault(job_id, now)

    def deliver_again(self, job: JobRecord) -> None:
        """Hand the ASSIGNED job out again on its agent's next lease (memory only): the lease
        reply may never have reached the agent, or the coordinator restarted since."""
        self.delivered.pop(job.id, None)
        agent = self.agents.get(job.agent_id or "")
        if agent is not None:
            if job.id not in agent.to_deliver:
                agent.to_deliver.appendleft(job.id)
            agent.wake.set()

    def forget_delivery(self, job_id: str, agent_id: str | None) -> None:
        """A job no longer waits to be handed out by its agent's next lease."""
        agent = self.agents.get(agent_id or "")
        if agent is not None and job_id in agent.to_deliver:
            agent.to_deliver.remove(job_id)
