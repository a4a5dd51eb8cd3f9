"""The placing coordinator's side of each agent's connection: register, heartbeat and lease.

An agent's live state (hardware snapshot, jobs to deliver, cancels to send) lives in memory on
the one coordinator that places jobs; a registration is also saved to the store for restarts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

import structlog

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.comfy.prompts import COMFY, agent_extra_data
from comfyfleet.coordinator.errors import Conflict, NotFound, StoreUnavailable
from comfyfleet.coordinator.fleet import AgentState, AgentStatus, register_info
from comfyfleet.coordinator.inventory import decode_inputs
from comfyfleet.coordinator.ledger import Change
from comfyfleet.coordinator.model import AgentRecord
from comfyfleet.coordinator.parts import Part
from comfyfleet.coordinator.reconcile import Placed, Verdict, reconcile
from comfyfleet.coordinator.state import LiveProgress
from comfyfleet.shared import protocol as p
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobEvent, JobStatus

log = structlog.get_logger("coordinator")


class AgentLink(Part):
    def register(self, msg: p.Register, host_proven: bool = False) -> p.RegisterReply:
        """(Re)connect an agent: reconcile the jobs it reports with the jobs placed on it.

        A registration knows everything that happened before it, so every placed job it omits
        is judged (reconcile.py). One that would take jobs from the agent as the coordinator
        knew it must come from the instance that registered last, or from a sender that proves
        it is this agent's host (`host_proven`: a token bound to this agent id); otherwise it
        is refused (409, `instance_id`) until that instance is lost and its jobs requeued."""
        now = self.clock()
        live = self.live
        known = live.agents.get(msg.agent_id)
        verdict = reconcile(self._placed(known), msg.running, floor=math.inf)
        same = bool(msg.instance_id) and known is not None and known.instance == msg.instance_id
        if known is not None and verdict.releases and not (same or host_proven):
            raise Conflict(
                f"agent {msg.agent_id} is registered by another instance that holds "
                f"{len(verdict.lost) + len(verdict.redeliver)} job(s) this registration does "
                f"not report; only that instance (the same instance_id) or a token bound to "
                f"agent {msg.agent_id} may take them over; else register again once it is lost "
                f"(silent {self.config.lost_after_s:g} s) and its jobs are requeued",
                "instance_id",
            )
        lost_why = "no longer reports this job" if same else "restarted without this job"
        self.ledger.apply(self._changes(verdict, msg.agent_id, now, f"agent {lost_why}"))
        self.ledger.save_agent(
            AgentRecord(msg.agent_id, now, register_info(msg)),
            lambda: self._registered(msg, now),
        )
        self._remember(verdict, now)
        log.info(
            "agent_registered",
            agent_id=msg.agent_id,
            gpus=len(msg.gpus),
            instances=len(msg.instances),
            running=len(msg.running),
            dropped=len(verdict.drop),
            lost=len(verdict.lost),
            delivered_again=len(verdict.redeliver),
        )
        live.wake.set()
        return p.RegisterReply(
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            lease_ttl_s=self.config.lost_after_s,
            lease_wait_s=self.config.lease_wait_s,
            chunk_size=self.config.chunk_size,
            drop=list(verdict.drop),
            direct_uploads=self.config.output_store != "local",
            inline_output_bytes=self.config.inline_output_limit,
        )

    def _registered(self, msg: p.Register, now: float) -> None:
        agent = self.live.agents.get(msg.agent_id)
        if agent is None:
            agent = AgentState(msg.agent_id, AgentStatus.ONLINE, now, now)
            self.live.agents[msg.agent_id] = agent
        agent.apply_register(msg, now)
        agent.status = AgentStatus.DRAINING if agent.draining else AgentStatus.ONLINE
        agent.answered_at = now
        self.live.feed.agent(agent, "registered")

    def heartbeat(self, msg: p.Heartbeat, host_proven: bool = False) -> p.HeartbeatReply:
        """Liveness and resources; and the jobs the agent reports, reconciled as at register.
        A heartbeat carries no instance id: only a sender that proves it is this agent's host
        (`host_proven`) may take jobs from it by omitting them."""
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
        verdict = reconcile(self._placed(agent), msg.running, floor=agent.answered_at)
        if not host_proven:
            verdict = dataclasses.replace(verdict, lost=(), redeliver=())
        why = f"agent {msg.agent_id} no longer reports this job"
        try:
            self.ledger.apply(self._changes(verdict, msg.agent_id, now, why), strict=False)
        except StoreUnavailable as exc:  # liveness goes on; the next heartbeat tries again
            log.warning("heartbeat_changes_not_stored", agent_id=msg.agent_id, error=exc.message)
            verdict = dataclasses.replace(verdict, queued=(), redeliver=())
        self._remember(verdict, now)
        agent.answered_at = now
        cancel: list[p.JobRef] = []
        for r in verdict.kept:
            job = live.jobs.get(r.job_id)
            if job is None:
                continue
            if job.desired != "run":
                cancel.append(p.JobRef(job_id=r.job_id, attempt=r.attempt))
            elif r.progress is not None and job.status == JobStatus.RUNNING:
                progress = live.progress.setdefault(job.id, LiveProgress())
                progress.fraction, progress.updated_at = r.progress, now
        if live.queued:
            live.wake.set()
        return p.HeartbeatReply(
            heartbeat_interval_s=interval,
            cancel=cancel,
            drop=list(verdict.drop),
            drain=agent.draining,
        )

    def _placed(self, agent: AgentState | None) -> dict[str, Placed]:
        live = self.live
        out: dict[str, Placed] = {}
        for job_id in agent.jobs if agent is not None else ():
            job = live.jobs[job_id]
            out[job_id] = Placed(
                attempt=job.attempt,
                status=job.status,
                delivered_at=live.delivered.get(job_id),
                held_at=live.held.get(job_id),
            )
        return out

    def _changes(self, verdict: Verdict, agent_id: str, now: float, lost_why: str) -> list[Change]:
        """The store changes a report makes: jobs ComfyUI started to RUNNING, prompt ids of
        queued prompts recorded, lost jobs released (a retry spent: the attempt broke)."""
        live = self.live
        kept = {r.job_id: r for r in verdict.kept}
        changes: list[Change] = []
        for job_id in verdict.start:
            job, prompt = live.jobs[job_id], kept[job_id].prompt_id
            why = f"ComfyUI prompt {prompt} started (reported by agent {agent_id})"
            changes.append(
                Change(job, moves.advance(job, JobEvent.START, now, why, prompt_id=prompt))
            )
        for job_id in verdict.queued:
            job, prompt = live.jobs[job_id], kept[job_id].prompt_id
            if job.prompt_id != prompt:
                changes.append(
                    Change(job, dataclasses.replace(job, prompt_id=prompt, updated_at=now))
                )
        for job_id in verdict.lost:
            job = live.jobs[job_id]
            error = moves.stop_error(job)
            why = lost_why if error is None else f"{error['message']}; {lost_why}"
            changes.append(self.ledger.release_change(job, now, why, spend_retry=True, error=error))
        return changes

    def _remember(self, verdict: Verdict, now: float) -> None:
        """Memory after a report: what the agent holds, what waits in ComfyUI's queue (its
        assign timeout counts from this report), what to hand out again, what to cancel."""
        live = self.live
        for r in verdict.kept:
            job = live.jobs.get(r.job_id)
            if job is None:  # released by this very report? (never: it was kept)
                continue
            live.acknowledged(job.id, now)
            if job.status == JobStatus.ASSIGNED:
                live.forget_delivery(job.id, job.agent_id)
            if job.desired != "run" and job.id not in live.cancel_sent:
                live.send_cancel(job, now)
        for job_id in verdict.queued:
            if job_id in live.jobs and live.jobs[job_id].status == JobStatus.ASSIGNED:
                live.awaiting_since[job_id] = now
        for job_id in verdict.redeliver:
            job = live.jobs.get(job_id)
            if job is not None and job.status == JobStatus.ASSIGNED:
                live.deliver_again(job)

    async def lease(self, msg: p.LeaseRequest) -> p.LeaseReply:
        """The jobs placed on the agent that fit the room it has, and cancels to send; waits
        (long-poll) up to `wait_s` while there is nothing."""
        agent = self.live.agent(msg.agent_id)
        if agent.status in (AgentStatus.LOST, AgentStatus.RECONNECTING):
            raise NotFound(f"agent {msg.agent_id} must register again", "agent_id")
        self._note_finishing(agent, msg.finishing)
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
                async with asyncio.timeout(remaining):  # no task per wait, as wait_for makes
                    await agent.wake.wait()
            except TimeoutError:
                pass

    def _note_finishing(self, agent: AgentState, refs: list[p.JobRef]) -> None:
        """Jobs ComfyUI is done with free their places in its queue: wake the scheduler when
        that opens room for queued jobs."""
        jobs = self.live.jobs
        now = frozenset(
            r.job_id
            for r in refs
            if r.job_id in agent.jobs and (job := jobs.get(r.job_id)) and job.attempt == r.attempt
        )
        before, agent.finishing = agent.finishing, now
        if now - before and self.live.queued:
            self.live.wake.set()

    def _take(self, agent: AgentState, free: dict[str, int]) -> p.LeaseReply:
        room = dict(free)
        jobs: list[p.Assignment] = []
        keep: list[str] = []
        # the workflows live in the store only: one read for every job this lease may hand out
        specs = self._specs_to_deliver(agent, room)
        while agent.to_deliver:
            job_id = agent.to_deliver.popleft()
            job = self.live.jobs.get(job_id)
            if job is None or job.status != JobStatus.ASSIGNED or job.agent_id != agent.agent_id:
                continue
            instance = job.instance_id or ""
            if room.get(instance, 0) <= 0:
                keep.append(job_id)
                continue
            spec = specs.get(job_id)
            if spec is None:
                continue
            room[instance] -= 1
            self.live.delivered[job_id] = self.clock()
            jobs.append(
                p.Assignment(
                    job_id=job_id,
                    attempt=job.attempt,
                    instance_id=instance,
                    workflow=spec.workflow,
                    timeout_s=job.spec.timeout_s,
                    vram_mb=job.vram_mb,
                    inputs=decode_inputs(spec.inputs, self.config.max_input_bytes)
                    if spec.inputs
                    else {},
                    forward_frames=COMFY in spec.metadata,  # a ComfyUI facade prompt
                    extra_data=agent_extra_data(spec.metadata),
                )
            )
        agent.to_deliver.extend(keep)
        cancel = list(agent.to_cancel.values())
        agent.to_cancel.clear()
        return p.LeaseReply(jobs=jobs, cancel=cancel, drain=agent.draining)

    def _specs_to_deliver(self, agent: AgentState, room: dict[str, int]) -> dict[str, JobSpec]:
        """The stored specs of the agent's jobs waiting for a lease on an instance with room."""
        jobs = self.live.jobs
        wanted = [
            job_id
            for job_id in agent.to_deliver
            if (job := jobs.get(job_id)) is not None
            and job.status == JobStatus.ASSIGNED
            and job.agent_id == agent.agent_id
            and room.get(job.instance_id or "", 0) > 0
        ]
        return self.store.get_specs(wanted) if wanted else {}
