"""The coordinator's imperative shell: in-memory indexes over the durable store.

Every change to a job is computed by the pure moves in `jobs.py`, written to the store with a
guarded update, and only then applied to the in-memory indexes. Placement is the pure
`scheduler.plan`, woken by events (submit, register, heartbeat, finish, cancel).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import structlog

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.admission import check_queue
from comfyfleet.coordinator.blocking import BlockPolicy, FailureBook, apply_blocks, classify
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.errors import (
    Conflict,
    NotFound,
    StaleAttempt,
    StoreUnavailable,
    Unprocessable,
)
from comfyfleet.coordinator.estimates import Estimate, learned_vram_mb
from comfyfleet.coordinator.events import EventBus
from comfyfleet.coordinator.feed import Feed
from comfyfleet.coordinator.fleet import AgentState, AgentStatus, agent_view, has_free_slot
from comfyfleet.coordinator.inventory import check_fleet_can_run, decode_inputs
from comfyfleet.coordinator.metrics import Metrics
from comfyfleet.coordinator.model import AgentRecord, JobRecord, WorkflowFacts
from comfyfleet.coordinator.outputs import ChunkResult, ChunkSink, OutputFiles
from comfyfleet.coordinator.pacing import any_starving, plan_call
from comfyfleet.coordinator.scheduler.model import JobRequest
from comfyfleet.coordinator.scheduler.plan import plan
from comfyfleet.coordinator.store import Store
from comfyfleet.shared import protocol as p
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import ACTIVE, TERMINAL, JobEvent, JobStatus
from comfyfleet.shared.workflow import check_depth, validate_workflow, workflow_hash

log = structlog.get_logger("coordinator")

MAX_PLACEMENTS_PER_PLAN = 2000
RECENT_FAILURE_WINDOW_S = 600.0
PLAN_REST_MAX_S = 0.1
STORE_RETRY_S = 1.0  # a loop step the store refused is retried after this


def job_request(job: JobRecord) -> JobRequest:
    spec = job.spec
    facts = job.workflow_facts
    return JobRequest(
        job_id=job.id,
        priority=spec.priority,
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
    )


_NO_WORKFLOW: dict[str, Any] = {}


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


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        store: Store,
        outputs: OutputFiles,
        clock: Callable[[], float] = time.time,
        bus: EventBus | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.outputs = outputs
        self.clock = clock
        self.jobs: dict[str, JobRecord] = {}  # every non-terminal job
        self.queued: dict[str, JobRequest] = {}
        self.agents: dict[str, AgentState] = {}
        self.delivered: set[str] = set()  # ASSIGNED jobs a lease has handed out
        self.cancel_sent: dict[str, float] = {}  # job_id -> when a cancel/timeout was asked
        # ASSIGNED job_id -> when its agent last said ComfyUI holds it queued (pipelined: it waits
        # behind the running prompt, so the assign timeout counts from this report)
        self.queued_on_agent: dict[str, float] = {}
        self.unexplained: set[str] = set()  # QUEUED jobs no plan has given a pending reason yet
        self.explained_at = float("-inf")  # when a plan last explained every pending job
        self.progress: dict[str, LiveProgress] = {}
        self.wake = asyncio.Event()
        self.counters: dict[str, int] = {
            "placements": 0,
            "requeues": 0,
            "lost_agents": 0,
            "placements_warm": 0,
            "workflow_blocked": 0,
            "workflow_unblocked": 0,
        }
        self.blocks = FailureBook()
        self.block_policy = BlockPolicy(
            config.block_after_failures, config.block_cooldown_s, config.block_window_s
        )
        self.estimates: dict[tuple[str, str], Estimate] = {}  # (shape, GPU name), in memory
        self.bus = bus or EventBus(start_id=int(clock() * 1_000_000))
        self.metrics = metrics or Metrics()
        self.metrics.watch(self)
        self.feed = Feed(self.bus, self.metrics)

    def emit(self, kind: str, data: dict[str, Any], job_id: str | None = None) -> None:
        """Publish a fleet event (e.g. `workflow_blocked`) to the live streams."""
        self.bus.publish(kind, data, job_id)

    # ------------------------------------------------------------------ recovery

    def recover(self) -> None:
        """Load state after a (re)start; nothing is requeued before the reconnect grace."""
        now = self.clock()
        deadline = now + self.config.restart_grace_s
        for rec in self.store.load_agents():
            state = AgentState(
                rec.agent_id,
                AgentStatus.RECONNECTING,
                now,
                rec.registered_at,
                lost_deadline=deadline,
            )
            msg = _register_from_info(rec.info)
            if msg is not None:
                state.apply_register(msg, rec.registered_at)
                state.status, state.lost_deadline, state.last_seen = (
                    AgentStatus.RECONNECTING,
                    deadline,
                    now,
                )
            self.agents[rec.agent_id] = state
        for job in self.store.non_terminal_jobs():
            if job.status == JobStatus.SUBMITTED:
                queued = moves.advance(job, JobEvent.ENQUEUE, now, "recovered after restart")
                self._save(job, queued)
                continue
            self._index(None, job)
            if job.desired != "run":
                self.cancel_sent[job.id] = now
        self._learn_from_store()
        log.info("recovered", jobs=len(self.jobs), queued=len(self.queued), agents=len(self.agents))
        self.wake.set()

    # ------------------------------------------------------------------ persistence + indexes

    def _save(self, old: JobRecord, new: JobRecord) -> JobRecord:
        if not self.store.update_job(new, old.status, old.attempt):
            raise Conflict(f"job {old.id} changed concurrently; try again")
        self._index(old, new)
        return new

    def _index(self, old: JobRecord | None, new: JobRecord) -> None:
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
            self.delivered.discard(job_id)
            self.cancel_sent.pop(job_id, None)
        if new.status != JobStatus.ASSIGNED:
            self.queued_on_agent.pop(job_id, None)
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
            self.queued[job_id] = job_request(new)
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

    # ------------------------------------------------------------------ client operations

    def submit(
        self, spec: JobSpec, idempotency_key: str | None = None, tenant: str = "default"
    ) -> tuple[JobRecord, bool]:
        validate_workflow(spec.workflow)
        check_depth(spec.metadata, "metadata")
        check_queue(len(self.queued), self.config.max_queued_jobs, self.config.retry_after_s)
        now = self.clock()
        if spec.inputs:
            decode_inputs(spec.inputs, self.config.max_input_bytes)
        facts = WorkflowFacts.of(spec.workflow)
        check_fleet_can_run(spec, facts, self.agents.values())
        vram = spec.resources.vram_mb
        if vram is None:
            largest = max(
                (
                    g.vram_total_mb
                    for a in self.agents.values()
                    for g in a.gpus
                    if a.status != AgentStatus.LOST
                ),
                default=None,
            )
            learned = learned_vram_mb(
                self.estimates, facts.shape, self.config.vram_estimate_margin, largest
            )
            default = self.config.default_vram_mb if learned is None else learned
            vram = default if spec.resources.gpus else 0
        if spec.resources.gpus == 0 and vram and spec.resources.vram_mb:
            raise InvalidInput("resources.vram_mb", "a CPU job (gpus: 0) cannot ask for VRAM")
        job = JobRecord(
            id=moves.new_job_id(now),
            spec=spec,
            workflow_hash=workflow_hash(spec.workflow),
            created_at=now,
            idempotency_key=idempotency_key,
            tenant=tenant,
            vram_mb=vram,
            facts=facts,
        )
        job = moves.created(job, now)
        stored, created = self.store.insert_job(job)
        if created:
            self._index(None, stored)
            log.info("job_submitted", job_id=stored.id, vram_mb=vram, priority=spec.priority)
        return stored, created

    def get(self, job_id: str) -> JobRecord:
        job = self.jobs.get(job_id) or self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", "job_id")
        return job

    def cancel(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        now = self.clock()
        if job.status in TERMINAL:
            raise Conflict(f"job {job_id} is already {job.status.value}", "status")
        if job.status in (JobStatus.SUBMITTED, JobStatus.QUEUED) or (
            job.status == JobStatus.ASSIGNED and job_id not in self.delivered
        ):
            agent = self.agents.get(job.agent_id or "")
            if agent is not None and job_id in agent.to_deliver:
                agent.to_deliver.remove(job_id)
            new = moves.advance(job, JobEvent.CANCEL, now, "cancelled by user", desired="cancel")
            log.info("job_cancelled", job_id=job_id, was=job.status.value)
            return self._save(job, new)
        if job.desired == "cancel":
            return job
        new = dataclasses.replace(job, desired="cancel", updated_at=now)
        self._save(job, new)
        self._send_cancel(new, now)
        log.info("job_cancel_requested", job_id=job_id, agent_id=job.agent_id)
        return new

    def _send_cancel(self, job: JobRecord, now: float) -> None:
        self.cancel_sent[job.id] = now
        agent = self.agents.get(job.agent_id or "")
        if agent is not None:
            agent.to_cancel[job.id] = p.JobRef(job_id=job.id, attempt=job.attempt)
            agent.wake.set()

    def drain(self, agent_id: str) -> AgentState:
        agent = self.agent(agent_id)
        agent.draining = True
        if agent.status == AgentStatus.ONLINE:
            agent.status = AgentStatus.DRAINING
        agent.wake.set()
        self.feed.agent(agent, "draining")
        log.info("agent_drain", agent_id=agent_id)
        return agent

    def agent(self, agent_id: str) -> AgentState:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id}", "agent_id")
        return agent

    # ------------------------------------------------------------------ agent protocol

    def register(self, msg: p.Register) -> p.RegisterReply:
        now = self.clock()
        agent = self.agents.get(msg.agent_id)
        if agent is None:
            agent = AgentState(msg.agent_id, AgentStatus.ONLINE, now, now)
            self.agents[msg.agent_id] = agent
        agent.apply_register(msg, now)
        agent.status = AgentStatus.DRAINING if agent.draining else AgentStatus.ONLINE
        self.store.save_agent(AgentRecord(msg.agent_id, now, _info_of(msg)))
        drop: list[p.JobRef] = []
        reported = {r.job_id for r in msg.running}
        for r in msg.running:
            job = self.jobs.get(r.job_id)
            if (
                job is None
                or job.agent_id != msg.agent_id
                or job.attempt != r.attempt
                or (job.status not in ACTIVE)
            ):
                drop.append(p.JobRef(job_id=r.job_id, attempt=r.attempt))
                continue
            self.delivered.add(job.id)
            if job.status == JobStatus.ASSIGNED and r.prompt_id:
                self._save(
                    job,
                    moves.advance(
                        job,
                        JobEvent.START,
                        now,
                        "reported running after agent restart",
                        prompt_id=r.prompt_id,
                    ),
                )
            if job.desired != "run":
                self._send_cancel(self.jobs[job.id], now)
        for job_id in list(agent.jobs):
            job = self.jobs[job_id]
            if job_id not in reported and (
                job.status == JobStatus.RUNNING or job_id in self.delivered
            ):
                self._release(job, now, "agent restarted without this job", spend_retry=True)
        self.feed.agent(agent, "registered")
        log.info(
            "agent_registered",
            agent_id=msg.agent_id,
            gpus=len(msg.gpus),
            instances=len(msg.instances),
            running=len(msg.running),
            dropped=len(drop),
        )
        self.wake.set()
        return p.RegisterReply(
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            lease_ttl_s=self.config.lost_after_s,
            lease_wait_s=self.config.lease_wait_s,
            chunk_size=self.config.chunk_size,
            drop=drop,
        )

    def heartbeat(self, msg: p.Heartbeat) -> p.HeartbeatReply:
        now = self.clock()
        agent = self.agents.get(msg.agent_id)
        interval = self.config.heartbeat_interval_s
        if agent is None or agent.status in (AgentStatus.LOST, AgentStatus.RECONNECTING):
            return p.HeartbeatReply(heartbeat_interval_s=interval, reregister=True)
        agent.apply_snapshot(msg.host, msg.gpus, msg.instances, now)
        agent.apply_inventory(msg.models, msg.node_classes)
        if msg.draining and not agent.draining:
            agent.draining = True
            agent.status = AgentStatus.DRAINING
        self.feed.agent(agent, "heartbeat")
        cancel: list[p.JobRef] = []
        drop: list[p.JobRef] = []
        for r in msg.running:
            job = self.jobs.get(r.job_id)
            ref = p.JobRef(job_id=r.job_id, attempt=r.attempt)
            if job is None or job.agent_id != msg.agent_id or job.attempt != r.attempt:
                drop.append(ref)
            elif job.desired != "run":
                cancel.append(ref)
            elif job.status == JobStatus.ASSIGNED and r.prompt_id:
                self.queued_on_agent[job.id] = now
            elif r.progress is not None:
                live = self.progress.setdefault(job.id, LiveProgress())
                live.fraction, live.updated_at = r.progress, now
        if self.queued:
            self.wake.set()
        return p.HeartbeatReply(
            heartbeat_interval_s=interval, cancel=cancel, drop=drop, drain=agent.draining
        )

    async def lease(self, msg: p.LeaseRequest) -> p.LeaseReply:
        agent = self.agent(msg.agent_id)
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
            job = self.jobs.get(job_id)
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
            self.delivered.add(job_id)
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
                )
            )
        agent.to_deliver.extend(keep)
        cancel = list(agent.to_cancel.values())
        agent.to_cancel.clear()
        return p.LeaseReply(jobs=jobs, cancel=cancel, drain=agent.draining)

    def _fenced(self, agent_id: str, job_id: str, attempt: int) -> JobRecord:
        job = self.jobs.get(job_id)
        if job is None:
            stored = self.store.get_job(job_id)
            if stored is None:
                raise NotFound(f"no job {job_id}", "job_id")
            raise StaleAttempt(
                f"job {job_id} is {stored.status.value}; drop attempt {attempt}", "attempt"
            )
        if job.attempt != attempt or job.agent_id != agent_id or job.status not in ACTIVE:
            raise StaleAttempt(
                f"job {job_id} attempt {attempt} on {agent_id} is stale (current attempt "
                f"{job.attempt}, {job.status.value}); drop it",
                "attempt",
            )
        agent = self.agents.get(agent_id)
        if agent is not None:
            agent.last_seen = max(agent.last_seen, self.clock())
        return job

    def started(self, msg: p.Started) -> p.Ack:
        job = self._fenced(msg.agent_id, msg.job_id, msg.attempt)
        if job.status == JobStatus.ASSIGNED:
            now = self.clock()
            job = self._save(
                job,
                moves.advance(
                    job,
                    JobEvent.START,
                    now,
                    f"ComfyUI prompt {msg.prompt_id}",
                    prompt_id=msg.prompt_id,
                    seeds=dict(msg.seeds),
                ),
            )
            log.info("job_running", job_id=job.id, agent_id=msg.agent_id, attempt=job.attempt)
        return p.Ack(status="cancel" if job.desired != "run" else job.status.value)

    def events(self, msg: p.Events) -> p.Ack:
        job = self._fenced(msg.agent_id, msg.job_id, msg.attempt)
        live = self.progress.setdefault(job.id, LiveProgress())
        previews = live.previews
        for ev in msg.events:
            live.updated_at = ev.t
            if ev.kind == "cached":
                live.cached = list(ev.nodes)
            elif ev.kind in ("executing", "progress"):
                live.node = ev.node or live.node
                live.node_type = ev.node_type or live.node_type
                live.value, live.max = ev.value, ev.max
            elif ev.kind == "preview" and ev.image is not None:
                live.preview = (ev.image, ev.mime or "image/jpeg")
                live.previews += 1
            if ev.fraction is not None:
                live.fraction = max(live.fraction or 0.0, ev.fraction)
        self.feed.progress(job, live, preview=live.previews != previews)
        return p.Ack(status="cancel" if job.desired != "run" else job.status.value)

    def open_upload(
        self,
        agent_id: str,
        job_id: str,
        attempt: int,
        name: str,
        offset: int,
        size: int,
        sha256: str,
        length: int | None,
    ) -> ChunkSink | p.UploadState:
        """A sink for one output chunk's bytes as they stream in (see api/upload.py), or the
        file's state when it is already stored."""
        self._fenced(agent_id, job_id, attempt)
        sink = self.outputs.open_chunk(job_id, attempt, name, offset, size, sha256, length)
        if isinstance(sink, ChunkResult):
            return p.UploadState(
                name=name, received=sink.received, size=size, complete=sink.complete
            )
        return sink

    def close_upload(self, agent_id: str, sink: ChunkSink) -> p.UploadState:
        """Fenced again: the attempt may have gone stale while its bytes were arriving."""
        job_id, attempt, name = sink.key
        try:
            self._fenced(agent_id, job_id, attempt)
        except BaseException:
            sink.abort()
            raise
        result = sink.close()
        return p.UploadState(
            name=name, received=result.received, size=sink.size, complete=result.complete
        )

    def upload_state(
        self, agent_id: str, job_id: str, attempt: int, name: str, size: int
    ) -> p.UploadState:
        self._fenced(agent_id, job_id, attempt)
        have = self.outputs.received(job_id, attempt, name)
        return p.UploadState(
            name=name,
            received=have,
            size=size,
            complete=have == size and (self.outputs.final_path(job_id, attempt, name).exists()),
        )

    def finish(self, msg: p.Finish) -> p.Ack:
        job = self._fenced(msg.agent_id, msg.job_id, msg.attempt)
        now = self.clock()
        agent = self.agents.get(msg.agent_id)
        err = _error_dict(msg.error)
        if msg.outcome == "completed":
            missing = [
                o.name
                for o in msg.outputs
                if not self.outputs.verify(job.id, job.attempt, o.name, o.size, o.sha256)
            ]
            if missing:
                raise Unprocessable(
                    f"outputs not received or not matching their checksum: {', '.join(missing)}",
                    "outputs",
                )
            if job.status == JobStatus.ASSIGNED:
                job = self._save(job, moves.advance(job, JobEvent.START, now, "started"))
            outputs = [{**_output_dict(o), "attempt": job.attempt} for o in msg.outputs]
            gpu_name = self._gpu_name(agent, job.gpu_index)
            new = moves.advance(
                job,
                JobEvent.COMPLETE,
                now,
                f"{len(outputs)} outputs stored and verified",
                outputs=outputs,
                timings=dict(msg.timings),
                error=None,
                gpu_name=gpu_name,
                vram_peak_mb=msg.vram_peak_mb,
                profile=[msgspec.to_builtins(n) for n in msg.profile],
            )
            self._save(job, new)
            self.outputs.forget(job.id, job.attempt)
            self.outputs.drop_other_attempts(job.id, job.attempt)
            self._learn(new)
            if agent is not None:
                facts = job.workflow_facts
                self.blocks = self.blocks.record_success(agent.agent_id, facts.shape)
                agent.ran(job.instance_id or "", [facts.shape, *facts.model_refs])
            log.info(
                "job_completed",
                job_id=job.id,
                agent_id=msg.agent_id,
                attempt=job.attempt,
                outputs=len(outputs),
            )
            return p.Ack(status=new.status.value)
        self.outputs.drop_attempt(job.id, job.attempt)
        host_fault = msg.outcome in ("failed", "requeue") and classify(err) == "agent"
        if host_fault:  # this host lacks something: block the pair, try another host
            self._pair_failed(msg.agent_id, job.workflow_facts.shape, now, err)
        if msg.outcome == "failed" and not host_fault and not (err and err.get("retryable")):
            new = moves.advance(
                job,
                JobEvent.FAIL,
                now,
                (err or {}).get("message", "failed"),
                error=err or {"code": "failed", "message": "failed"},
            )
            self._save(job, new)
            if agent is not None:
                agent.recent_failures.append(now)
            log.info(
                "job_failed",
                job_id=job.id,
                agent_id=msg.agent_id,
                attempt=job.attempt,
                code=(err or {}).get("code"),
            )
            return p.Ack(status=new.status.value)
        if msg.outcome == "cancelled" and job.desired == "cancel":
            new = moves.advance(job, JobEvent.CANCEL, now, "cancelled by user; agent confirmed")
            self._save(job, new)
            return p.Ack(status=new.status.value)
        if job.desired == "timeout":
            reason = f"timed out after {job.spec.timeout_s:g} s"
            err = {"code": "timeout", "message": reason}
        else:
            reason = (err or {}).get("message") or f"agent gave the job back ({msg.outcome})"
        if msg.outcome == "failed" and agent is not None:
            agent.recent_failures.append(now)
        new = self._release(job, now, reason, spend_retry=msg.spend_retry, error=err)
        return p.Ack(status=new.status.value)

    def _release(
        self,
        job: JobRecord,
        now: float,
        reason: str,
        *,
        spend_retry: bool,
        error: dict[str, Any] | None = None,
    ) -> JobRecord:
        new = moves.released(job, now, reason, spend_retry=spend_retry, error=error)
        self._save(job, new)
        self.outputs.drop_attempt(job.id, job.attempt)  # a stale attempt's files never stay
        if new.status == JobStatus.QUEUED:
            self.counters["requeues"] += 1
        log.info(
            "job_released",
            job_id=job.id,
            agent_id=job.agent_id,
            attempt=job.attempt,
            reason=reason,
            now_status=new.status.value,
        )
        return new

    # ------------------------------------------------------------------ scheduling

    def schedule_once(self) -> int:
        """Run one placement plan over the queue; returns how many jobs were placed."""
        if not self.queued:
            return 0
        now = self.clock()
        live = [a for a in self.agents.values() if a.status != AgentStatus.LOST]
        free = [a for a in live if has_free_slot(a, self.jobs)]
        free_views = [agent_view(a, self.jobs, RECENT_FAILURE_WINDOW_S, now) for a in free]
        call = plan_call(free_views, self.unexplained, self.explained_at, now)
        if not call.run:
            return 0
        queue = (
            list(self.queued.values())
            if call.only is None
            else [self.queued[i] for i in call.only if i in self.queued]
        )
        # Placing alone needs only the agents with room; reasons, and the holds of starving
        # jobs (which may fall on a busy GPU), need the whole fleet.
        views = (
            free_views
            if call.explain == frozenset() and not any_starving(queue, now)
            else [agent_view(a, self.jobs, RECENT_FAILURE_WINDOW_S, now) for a in live]
        )
        queue = apply_blocks(queue, self.blocks.blocked(now))
        with self.metrics.schedule_seconds.time():
            result = plan(
                queue,
                views,
                now,
                max_placements=MAX_PLACEMENTS_PER_PLAN,
                affinity_bucket_mb=self.config.affinity_bucket_mb,
                explain=call.explain,
            )
        if call.explain is None:
            self.explained_at = now
            self.unexplained.clear()
        else:
            self.unexplained -= call.explain
        for job_id, reason in result.pending.items():
            job = self.jobs.get(job_id)
            if job is not None:
                job.pending_reason = reason
        if not result.placements:
            return 0
        batch = []
        for pl in result.placements:
            job = self.jobs[pl.job_id]
            batch.append((job, moves.assigned(job, now, pl.agent_id, pl.instance_id, pl.gpu_index)))
        oks = self.store.update_jobs([(new, old.status, old.attempt) for old, new in batch])
        placed = 0
        for (old, new), ok, pl in zip(batch, oks, result.placements, strict=True):
            if not ok:
                continue
            self.counters["placements_warm"] += pl.warm
            self._index(old, new)
            agent = self.agents[new.agent_id or ""]
            agent.to_deliver.append(new.id)
            agent.wake.set()
            placed += 1
        self.counters["placements"] += placed
        if len(result.placements) >= MAX_PLACEMENTS_PER_PLAN:
            self.wake.set()
        return placed

    async def scheduler_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            started = time.perf_counter()
            if not await _survive_store_faults(self.schedule_once):
                self.wake.set()  # the store refused: try again after STORE_RETRY_S
            # Rest as long as the plan took (at most PLAN_REST_MAX_S): on a big fleet the wakes
            # of that time are served by one plan and requests get half the loop at least; on
            # an idle fleet a plan takes well under a millisecond, so dispatch stays immediate.
            await asyncio.sleep(min(time.perf_counter() - started, PLAN_REST_MAX_S))

    # ------------------------------------------------------------------ timeouts

    def sweep(self) -> None:
        """Lost agents, assign timeouts, job timeouts, unconfirmed cancels, ended blocks."""
        now = self.clock()
        self._expire_blocks(now)
        for agent in list(self.agents.values()):
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
                self.counters["lost_agents"] += 1
                self.feed.agent(agent, "lost")
                log.warning(
                    "agent_lost",
                    agent_id=agent.agent_id,
                    silent_s=round(silent, 1),
                    jobs=len(agent.jobs),
                )
                agent.wake.set()
            if agent.status != AgentStatus.LOST:
                continue
            for job_id in list(agent.jobs):  # again next sweep if the store refused
                self._release(
                    self.jobs[job_id],
                    now,
                    f"agent {agent.agent_id} lost (silent {silent:.0f} s)",
                    spend_retry=True,
                )
        for job in list(self.jobs.values()):
            if job.status not in ACTIVE:
                continue
            agent = self.agents.get(job.agent_id or "")
            if agent is not None and agent.status == AgentStatus.RECONNECTING:
                continue  # wait for the agent to come back before judging its jobs
            if job.status == JobStatus.ASSIGNED:
                since = max(
                    job.timestamps.get(JobStatus.ASSIGNED.value, now),
                    self.queued_on_agent.get(job.id, 0.0),
                )
                if now - since > self.config.assign_timeout_s:
                    self._release(
                        job,
                        now,
                        f"not started within {self.config.assign_timeout_s:g} s",
                        spend_retry=True,
                    )
                continue
            asked = self.cancel_sent.get(job.id)
            if asked is not None:
                if now - asked > self.config.cancel_grace_s:
                    self._release(
                        job,
                        now,
                        "agent did not confirm the cancel",
                        spend_retry=True,
                        error={"code": "timeout", "message": "timed out"}
                        if job.desired == "timeout"
                        else None,
                    )
                continue
            running_since = job.timestamps.get(JobStatus.RUNNING.value, now)
            if job.desired == "run" and now - running_since > job.spec.timeout_s:
                new = dataclasses.replace(job, desired="timeout", updated_at=now)
                self._save(job, new)
                self._send_cancel(new, now)
                log.info(
                    "job_timeout",
                    job_id=job.id,
                    agent_id=job.agent_id,
                    timeout_s=job.spec.timeout_s,
                )

    async def sweeper_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            await _survive_store_faults(self.sweep)

    # ------------------------------------------------------------------ placement memory

    def _fleet_event(self, kind: str, **fields: Any) -> None:
        """A fleet event (workflow_blocked, workflow_unblocked): logged, counted and published."""
        self.counters[kind] = self.counters.get(kind, 0) + 1
        log.info(kind, **fields)
        self.emit(kind, fields)

    def _pair_failed(
        self, agent_id: str, shape: str, now: float, err: dict[str, Any] | None
    ) -> None:
        self.blocks, change = self.blocks.record_failure(agent_id, shape, now, self.block_policy)
        if change is not None:
            self._fleet_event(
                change.kind,
                agent_id=agent_id,
                workflow_shape=shape,
                until=change.until,
                failures=change.failures,
                code=(err or {}).get("code"),
            )

    def _expire_blocks(self, now: float) -> None:
        self.blocks, changes = self.blocks.expire(now, self.block_policy)
        for change in changes:
            self._fleet_event(change.kind, agent_id=change.agent_id, workflow_shape=change.shape)
        if changes:
            self.wake.set()

    def _gpu_name(self, agent: AgentState | None, gpu_index: int | None) -> str | None:
        if agent is None or gpu_index is None:
            return None
        return next((g.name for g in agent.gpus if g.index == gpu_index), None)

    def _learn(self, job: JobRecord) -> None:
        """Add a completed job's run time and VRAM peak to its (shape, GPU name) estimate."""
        if job.gpu_name is None:
            return
        started = job.timestamps.get(JobStatus.RUNNING.value)
        done = job.timestamps.get(JobStatus.COMPLETED.value)
        duration = done - started if started is not None and done is not None else None
        key = (job.workflow_facts.shape, job.gpu_name)
        self.estimates[key] = self.estimates.get(key, Estimate()).add(duration, job.vram_peak_mb)

    def _learn_from_store(self, limit: int = 500) -> None:
        done, _ = self.store.list_jobs(
            statuses=[JobStatus.COMPLETED], tenant=None, limit=limit, cursor=None
        )
        for job in reversed(done):  # oldest first: the newest samples are kept
            self._learn(job)

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
        return [self.jobs.get(j.id, j) for j in found], nxt


async def _survive_store_faults(step: Callable[[], object]) -> bool:
    """Run one loop step; a full or read-only store pauses the loop instead of killing it."""
    try:
        step()
    except StoreUnavailable as exc:
        log.warning("store_unavailable", step=getattr(step, "__name__", "?"), error=exc.message)
        await asyncio.sleep(STORE_RETRY_S)
        return False
    await asyncio.sleep(0)
    return True


def _info_of(msg: p.Register) -> dict[str, Any]:
    info: dict[str, Any] = msgspec.to_builtins(msg)
    info.pop("running", None)
    return info


def _register_from_info(info: dict[str, Any]) -> p.Register | None:
    try:
        return msgspec.convert(info, p.Register)
    except msgspec.ValidationError:
        return None


def _error_dict(err: p.ErrorInfo | None) -> dict[str, Any] | None:
    if err is None:
        return None
    out: dict[str, Any] = msgspec.to_builtins(err)
    return {k: v for k, v in out.items() if v not in (None, {})}


def _output_dict(o: p.OutputFile) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(o)
    return out
