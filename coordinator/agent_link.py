"""The placing coordinator's side of each agent's connection: register, heartbeat and lease.

An agent's live state (hardware snapshot, jobs to deliver, cancels to send) lives in memory on
the one coordinator that places jobs; a registration is also saved to the store for restarts.
"""

from __future__ import annotations

import asyncio

import structlog

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.comfy.prompts import COMFY, agent_extra_data
from comfyfleet.coordinator.errors import NotFound
from comfyfleet.coordinator.fleet import AgentState, AgentStatus, register_info
from comfyfleet.coordinator.inventory import decode_inputs
from comfyfleet.coordinator.ledger import Change
from comfyfleet.coordinator.model import AgentRecord, JobRecord
from comfyfleet.coordinator.parts import Part
from comfyfleet.coordinator.state import LiveProgress
from comfyfleet.shared import protocol as p
from comfyfleet.shared.status import ACTIVE, JobEvent, JobStatus

log = structlog.get_logger("coordinator")


class AgentLink(Part):
    def register(self, msg: p.Register) -> p.RegisterReply:
        """(Re)connect an agent: reconcile the jobs it reports with the jobs placed on it."""
        now = self.clock()
        live = self.live
        drop: list[p.JobRef] = []
        kept: dict[str, JobRecord] = {}  # reported jobs that are still this agent's
        changes: list[Change] = []
        for r in msg.running:
            job = live.jobs.get(r.job_id)
            if (
                job is None
                or job.agent_id != msg.agent_id
                or job.attempt != r.attempt
                or (job.status not in ACTIVE)
            ):
                drop.append(p.JobRef(job_id=r.job_id, attempt=r.attempt))
                continue
            if job.id in kept:
                continue
            kept[job.id] = job
            if job.status == JobStatus.ASSIGNED and r.prompt_id:
                reason = "reported running after agent restart"
                started = moves.advance(job, JobEvent.START, now, reason, prompt_id=r.prompt_id)
                changes.append(Change(job, started))
        known = live.agents.get(msg.agent_id)
        for job_id in sorted(known.jobs) if known is not None else ():
            job = live.jobs[job_id]
            if job_id not in kept and (job.status == JobStatus.RUNNING or job_id in live.delivered):
                reason = "agent restarted without this job"
                changes.append(self.ledger.release_change(job, now, reason, spend_retry=True))
        self.ledger.apply(changes)
        self.ledger.save_agent(
            AgentRecord(msg.agent_id, now, register_info(msg)),
            lambda: self._registered(msg, now),
        )
        for job_id in kept:
            live.delivered.add(job_id)
            job = live.jobs[job_id]
            if job.desired != "run":
                live.send_cancel(job, now)
        log.info(
            "agent_registered",
            agent_id=msg.agent_id,
            gpus=len(msg.gpus),
            instances=len(msg.instances),
            running=len(msg.running),
            dropped=len(drop),
        )
        live.wake.set()
        return p.RegisterReply(
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            lease_ttl_s=self.config.lost_after_s,
            lease_wait_s=self.config.lease_wait_s,
            chunk_size=self.config.chunk_size,
            drop=drop,
        )

    def _registered(self, msg: p.Register, now: float) -> None:
        agent = self.live.agents.get(msg.agent_id)
        if agent is None:
            agent = AgentState(msg.agent_id, AgentStatus.ONLINE, now, now)
            self.live.agents[msg.agent_id] = agent
        agent.apply_register(msg, now)
        agent.status = AgentStatus.DRAINING if agent.draining else AgentStatus.ONLINE
        self.live.feed.agent(agent, "registered")

    def heartbeat(self, msg: p.Heartbeat) -> p.HeartbeatReply:
        now = self.clock()
        live = self.live
        agent = live.agents.get(msg.agent_id)
        interval = self.config.heartbeat_interval_s
        if agent is None or agent.status in (AgentStatus.LOST, AgentStatus.RECONNECTING):
            return p.HeartbeatReply(heartbeat_interval_s=interval, reregister=True)
        agent.apply_snapshot(msg.host, msg.gpus, msg.instances, now)
        agent.apply_inventory(msg.models, msg.node_classes, msg.comfyui)
        if msg.draining and not agent.draining:
            agent.draining = True
            agent.status = AgentStatus.DRAINING
        live.feed.agent(agent, "heartbeat")
        cancel: list[p.JobRef] = []
        drop: list[p.JobRef] = []
        for r in msg.running:
            job = live.jobs.get(r.job_id)
            ref = p.JobRef(job_id=r.job_id, attempt=r.attempt)
            if job is None or job.agent_id != msg.agent_id or job.attempt != r.attempt:
                drop.append(ref)
            elif job.desired != "run":
                cancel.append(ref)
            elif job.status == JobStatus.ASSIGNED and r.prompt_id:
                live.queued_on_agent[job.id] = now
            elif r.progress is not None:
                progress = live.progress.setdefault(job.id, LiveProgress())
                progress.fraction, progress.updated_at = r.progress, now
        if live.queued:
            live.wake.set()
        return p.HeartbeatReply(
            heartbeat_interval_s=interval, cancel=cancel, drop=drop, drain=agent.draining
        )

    async def lease(self, msg: p.LeaseRequest) -> p.LeaseReply:
        """The jobs placed on the agent that fit the room it has, and cancels to send; waits
        (long-poll) up to `wait_s` while there is nothing."""
        agent = self.live.agent(msg.agent_id)
        if agent.status in (AgentStatus.LOST, AgentStatus.RECONNECTING):
            raise NotFound(f"agent {msg.agent_id} must register again", "agent_id")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(msg.wait_s, self.config.lease_wait_s)
        while True:
            agent.last_seen = self.clock()
            reply = self._take(agent, msg.free)
            remaining = deadline - loop.time()
            if reply.jobs or reply.cancel or remaining <= 0 or agent.status == AgentStatus.LOST:
                return reply
            agent.wake.clear()
            try:
                await asyncio.wait_for(agent.wake.wait(), remaining)
            except TimeoutError:
                pass

    def _take(self, agent: AgentState, free: dict[str, int]) -> p.LeaseReply:
        room = dict(free)
        jobs: list[p.Assignment] = []
        keep: list[str] = []
        while agent.to_deliver:
            job_id = agent.to_deliver.popleft()
            job = self.live.jobs.get(job_id)
            if job is None or job.status != JobStatus.ASSIGNED or job.agent_id != agent.agent_id:
                continue
            instance = job.instance_id or ""
            if room.get(instance, 0) <= 0:
                keep.append(job_id)
                continue
            stored = self.store.get_job(job_id)  # the workflow lives in the store only
            if stored is None:
                continue
            room[instance] -= 1
            self.live.delivered.add(job_id)
            jobs.append(
                p.Assignment(
                    job_id=job_id,
                    attempt=job.attempt,
                    instance_id=instance,
                    workflow=stored.spec.workflow,
                    timeout_s=job.spec.timeout_s,
                    vram_mb=job.vram_mb,
                    inputs=decode_inputs(stored.spec.inputs, self.config.max_input_bytes)
                    if stored.spec.inputs
                    else {},
                    forward_frames=COMFY in stored.spec.metadata,  # a ComfyUI facade prompt
                    extra_data=agent_extra_data(stored.spec.metadata),
                )
            )
        agent.to_deliver.extend(keep)
        cancel = list(agent.to_cancel.values())
        agent.to_cancel.clear()
        return p.LeaseReply(jobs=jobs, cancel=cancel, drain=agent.draining)
