"""The client calls of the coordinator that places jobs: submit, cancel, drain, reads.

These calls validate, compute the job's change with a pure move and write it through the
ledger. They read the placing coordinator's live state only as a cache (a job's latest record)
and for admission (queue depth, the fleet's inventory and VRAM, learned estimates).
A coordinator that does not place jobs (a follower) answers the same calls with
`follower.FollowerIntake`: the same validation, the job stored, cancels and drains left as orders.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import structlog

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.admission import check_queue
from comfyfleet.coordinator.errors import Conflict, NotFound
from comfyfleet.coordinator.estimates import learned_vram_mb
from comfyfleet.coordinator.fleet import AgentState, AgentStatus
from comfyfleet.coordinator.inventory import check_fleet_can_run, decode_inputs
from comfyfleet.coordinator.ledger import Change
from comfyfleet.coordinator.model import JobRecord, WorkflowFacts
from comfyfleet.coordinator.parts import Part
from comfyfleet.coordinator.tenants import require_secret
from comfyfleet.coordinator.webhooks.guard import check_url
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import TERMINAL, JobEvent, JobStatus
from comfyfleet.shared.workflow import check_depth, validate_workflow, workflow_hash

log = structlog.get_logger("coordinator")


class Intake(Part):
    def submit(
        self,
        spec: JobSpec,
        idempotency_key: str | None = None,
        tenant: str = "default",
        job_id: str | None = None,  # chosen by the caller (the ComfyUI facade); else a new one
    ) -> tuple[JobRecord, bool]:
        job = self.accept(spec, idempotency_key, tenant, job_id)
        stored, created = self.store_new(job)
        if created:
            log.info(
                "job_submitted", job_id=stored.id, vram_mb=stored.vram_mb, priority=spec.priority
            )
        return stored, created

    def store_new(self, job: JobRecord) -> tuple[JobRecord, bool]:
        return self.ledger.insert(job)

    def waiting(self) -> int:
        """Jobs waiting for a GPU, for admission control."""
        return len(self.live.queued)

    def accept(
        self, spec: JobSpec, idempotency_key: str | None, tenant: str, job_id: str | None = None
    ) -> JobRecord:
        """The new job's record (QUEUED), or the refusal: bad input, full queue, no agent able."""
        validate_workflow(spec.workflow)
        check_depth(spec.metadata, "metadata")
        check_queue(self.waiting(), self.config.max_queued_jobs, self.config.retry_after_s)
        now = self.clock()
        if spec.inputs:
            decode_inputs(spec.inputs, self.config.max_input_bytes)
        if spec.webhook_url is not None:
            check_url(spec.webhook_url, self.config.webhook_allow_private_addresses)
            require_secret(self.tenants, tenant, self.config.webhook_secret, "webhook_url")
        facts = WorkflowFacts.of(spec.workflow)
        live_agents = [a for a in self.live.agents.values() if a.status != AgentStatus.LOST]
        check_fleet_can_run(spec, facts, self.live.agents.values())
        vram = spec.resources.vram_mb
        if vram is None:
            largest = max((g.vram_total_mb for a in live_agents for g in a.gpus), default=None)
            learned = learned_vram_mb(
                self.learning.estimates, facts.shape, self.config.vram_estimate_margin, largest
            )
            default = self.config.default_vram_mb if learned is None else learned
            vram = default if spec.resources.gpus else 0
        if spec.resources.gpus == 0 and vram and spec.resources.vram_mb:
            raise InvalidInput("resources.vram_mb", "a CPU job (gpus: 0) cannot ask for VRAM")
        job = JobRecord(
            id=job_id or moves.new_job_id(now),
            spec=spec,
            workflow_hash=workflow_hash(spec.workflow),
            created_at=now,
            idempotency_key=idempotency_key,
            tenant=tenant,
            vram_mb=vram,
            facts=facts,
        )
        return moves.created(job, now)

    def get(self, job_id: str) -> JobRecord:
        job = self.live.jobs.get(job_id) or self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", "job_id")
        return job

    def list_jobs(
        self,
        statuses: Sequence[JobStatus] | None,
        limit: int,
        cursor: str | None,
        tenant: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        found, nxt = self.store.list_jobs(
            statuses=statuses, tenant=tenant, limit=limit, cursor=cursor
        )
        return [self.live.jobs.get(j.id, j) for j in found], nxt

    def cancel(self, job_id: str) -> JobRecord:
        """A job no agent holds yet ends CANCELLED at once; one an agent holds is marked
        `desired=cancel` and its agent is told on its next lease (it confirms with finish)."""
        job = self.get(job_id)
        now = self.clock()
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status.value}", "status")
        if job.status in (JobStatus.SUBMITTED, JobStatus.QUEUED) or (
            job.status == JobStatus.ASSIGNED and job_id not in self.live.delivered
        ):
            new = moves.advance(job, JobEvent.CANCEL, now, "cancelled by user", desired="cancel")
            self.ledger.apply(
                [Change(job, new, lambda _: self.live.forget_delivery(job_id, job.agent_id))]
            )
            log.info("job_cancelled", job_id=job_id, was=job.status.value)
            return new
        if job.desired == "cancel":
            return job
        new = dataclasses.replace(job, desired="cancel", updated_at=now)
        self.ledger.apply([Change(job, new, lambda new: self.live.send_cancel(new, now))])
        log.info("job_cancel_requested", job_id=job_id, agent_id=job.agent_id)
        return new

    def drain(self, agent_id: str) -> AgentState:
        agent = self.live.agent(agent_id)
        agent.draining = True
        if agent.status == AgentStatus.ONLINE:
            agent.status = AgentStatus.DRAINING
        agent.wake.set()
        self.live.feed.agent(agent, "draining")
        log.info("agent_drain", agent_id=agent_id)
        return agent
