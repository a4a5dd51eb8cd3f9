"""The placing coordinator's sweeper: lost agents, assign and job timeouts, unconfirmed cancels
and ended workflow blocks, checked every `sweep_interval_s`."""

from __future__ import annotations

import asyncio
import dataclasses

import structlog

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.fleet import AgentState, AgentStatus
from comfyfleet.coordinator.ledger import Change, survive_store_faults
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.parts import Part
from comfyfleet.shared.status import ACTIVE, JobStatus

log = structlog.get_logger("coordinator")


class Sweeper(Part):
    def sweep(self) -> None:
        """Lost agents, assign timeouts, job timeouts, unconfirmed cancels, ended blocks."""
        now = self.clock()
        if self.learning.expire_blocks(now):
            self.live.wake.set()
        for agent in list(self.live.agents.values()):
            self._check_agent(agent, now)
        for job in list(self.live.jobs.values()):
            if job.status in ACTIVE:
                self._check_job(job, now)

    def _check_agent(self, agent: AgentState, now: float) -> None:
        silent = now - agent.last_seen
        lost = (
            agent.status in (AgentStatus.ONLINE, AgentStatus.DRAINING)
            and silent > self.config.lost_after_s
        ) or (
            agent.status == AgentStatus.RECONNECTING
            and agent.lost_deadline is not None
            and now > agent.lost_deadline
        )
        if lost:
            agent.status = AgentStatus.LOST
            self.live.counters["lost_agents"] += 1
            self.live.feed.agent(agent, "lost")
            log.warning(
                "agent_lost",
                agent_id=agent.agent_id,
                silent_s=round(silent, 1),
                jobs=len(agent.jobs),
            )
            agent.wake.set()
        if agent.status != AgentStatus.LOST:
            return
        for job_id in list(agent.jobs):  # again next sweep if the store refused
            reason = f"agent {agent.agent_id} lost (silent {silent:.0f} s)"
            self.ledger.apply(
                [self.ledger.release_change(self.live.jobs[job_id], now, reason, spend_retry=True)]
            )

    def _check_job(self, job: JobRecord, now: float) -> None:
        agent = self.live.agents.get(job.agent_id or "")
        if agent is not None and agent.status == AgentStatus.RECONNECTING:
            return  # wait for the agent to come back before judging its jobs
        if job.status == JobStatus.ASSIGNED:
            since = max(
                job.timestamps.get(JobStatus.ASSIGNED.value, now),
                self.live.awaiting_since.get(job.id, 0.0),
            )
            if now - since > self.config.assign_timeout_s:
                reason = f"not started within {self.config.assign_timeout_s:g} s"
                self.ledger.apply([self.ledger.release_change(job, now, reason, spend_retry=True)])
            return
        asked = self.live.cancel_sent.get(job.id)
        if asked is not None:
            if now - asked > self.config.cancel_grace_s:
                error = moves.stop_error(job)
                reason = "agent did not confirm the cancel"
                if error is not None:  # the history names the cause, not only the symptom
                    reason = f"{error['message']}; the agent did not confirm the stop"
                change = self.ledger.release_change(job, now, reason, spend_retry=True, error=error)
                self.ledger.apply([change])
            return
        running_since = job.timestamps.get(JobStatus.RUNNING.value, now)
        if job.desired == "run" and now - running_since > job.spec.timeout_s:
            new = dataclasses.replace(job, desired="timeout", updated_at=now)
            self.ledger.apply([Change(job, new, lambda new: self.live.send_cancel(new, now))])
            log.info(
                "job_timeout",
                job_id=job.id,
                agent_id=job.agent_id,
                timeout_s=job.spec.timeout_s,
            )

    async def sweeper_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            await survive_store_faults(self.sweep)
