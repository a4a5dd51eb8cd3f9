"""The client calls of a coordinator that does not place jobs (a follower; DESIGN.md §8).

A follower validates a submission exactly as the leader does (`Intake.accept`), against a view of
the fleet it reads from the store: the agents' last registrations (hardware and inventory), the
estimates learned from recent completed jobs and the depth of the queue, refreshed every
`REFRESH_S`. It stores the job through its follower view of the store, which leaves an order for
the leader in the same transaction. Cancels and drains become orders as well: the leader applies
them (the leader is woken by NOTIFY, and polls). Reads come from the store.
"""

from __future__ import annotations

import dataclasses

import structlog

from comfyfleet.coordinator.errors import Conflict
from comfyfleet.coordinator.fleet import AgentState, AgentStatus
from comfyfleet.coordinator.intake import Intake
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.recovery import recovered_agent
from comfyfleet.coordinator.store.base import SharedStore
from comfyfleet.shared.status import TERMINAL, JobStatus

log = structlog.get_logger("coordinator")

REFRESH_S = 10.0  # how old the follower's view of the fleet may get
ESTIMATES_EVERY = 6  # refreshes: estimates (recent completed jobs) are read less often
CANCEL, DRAIN = "cancel", "drain"


class FollowerIntake(Intake):
    queued_seen = 0  # QUEUED jobs at the last refresh, plus the ones stored here since
    refreshes = 0

    @property
    def orders(self) -> SharedStore:
        if self.shared is None:
            raise TypeError("a follower needs a store that several coordinators share")
        return self.shared

    def refresh(self) -> None:
        """Read the fleet's view from the store: agents, queue depth, learned estimates."""
        now = self.clock()
        agents = {}
        for rec in self.store.load_agents():
            agent = recovered_agent(rec, now, float("inf"))
            known = self.live.agents.get(rec.agent_id)
            agent.draining = known.draining if known is not None else False
            agents[rec.agent_id] = agent
        self.live.agents = agents
        self.queued_seen = self.store.count_by_status()[JobStatus.QUEUED]
        if self.refreshes % ESTIMATES_EVERY == 0:
            self.learning.estimates.clear()
            self.learning.learn_from_store(self.store)
        self.refreshes += 1

    def waiting(self) -> int:
        return self.queued_seen

    def store_new(self, job: JobRecord) -> tuple[JobRecord, bool]:
        stored, created = self.store.insert_job(job)  # the follower view orders the leader
        self.queued_seen += created
        return stored, created

    def cancel(self, job_id: str) -> JobRecord:
        """Leave the cancel for the leader: the job as it will be (cancel requested); the API
        answers 202, and the job ends CANCELLED once the leader (or its agent) has stopped it."""
        job = self.get(job_id)
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status.value}", "status")
        self.orders.put_order(CANCEL, self.clock(), job_id=job_id)
        log.info("job_cancel_ordered", job_id=job_id)
        return dataclasses.replace(job, desired="cancel")

    def drain(self, agent_id: str) -> AgentState:
        agent = self.live.agent(agent_id)
        self.orders.put_order(DRAIN, self.clock(), agent_id=agent_id)
        agent.draining = True
        agent.status = AgentStatus.DRAINING
        log.info("agent_drain_ordered", agent_id=agent_id)
        return agent
