"""What the placing coordinator does with an agent's reports on a job attempt: fencing, started,
progress events, output uploads and finish.

Every report names (agent, job, attempt); `fenced` refuses one about an attempt that is no longer
the job's current one (StaleAttempt), so a late or duplicate report never moves a job.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import msgspec
import structlog

from comfyfleet.coordinator import eta
from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.blocking import classify
from comfyfleet.coordinator.errors import NotFound, StaleAttempt, Unprocessable
from comfyfleet.coordinator.fleet import AgentState
from comfyfleet.coordinator.ledger import Change
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.outputs import ChunkResult, ChunkSink
from comfyfleet.coordinator.parts import Part
from comfyfleet.coordinator.state import LiveProgress
from comfyfleet.shared import protocol as p
from comfyfleet.shared.status import ACTIVE, JobEvent, JobStatus

log = structlog.get_logger("coordinator")


class Reports(Part):
    def fenced(self, agent_id: str, job_id: str, attempt: int) -> JobRecord:
        """The job, if `attempt` on `agent_id` is its current active attempt; else StaleAttempt
        (or NotFound for a job that never existed)."""
        job = self.live.jobs.get(job_id)
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
        now = self.clock()
        self.live.acknowledged(job_id, now)  # the agent holds this attempt
        agent = self.live.agents.get(agent_id)
        if agent is not None:
            agent.last_seen = max(agent.last_seen, now)
        return job

    def started(self, msg: p.Started) -> p.Ack:
        job = self.fenced(msg.agent_id, msg.job_id, msg.attempt)
        if job.status == JobStatus.ASSIGNED:
            now = self.clock()
            job = self.ledger.commit(
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
            self.ledger.after(
                partial(
                    log.info,
                    "job_running",
                    job_id=job.id,
                    agent_id=msg.agent_id,
                    attempt=job.attempt,
                )
            )
        return p.Ack(status="cancel" if job.desired != "run" else job.status.value)

    def events(self, msg: p.Events) -> p.Ack:
        job = self.fenced(msg.agent_id, msg.job_id, msg.attempt)
        live = self.live.progress.setdefault(job.id, LiveProgress())
        previews = live.previews
        now = self.clock()
        # The agent stamps events with its own clock: keep their spacing, on this clock.
        latest = max(ev.t for ev in msg.events) if msg.events else now
        if live.learned is None:  # once per attempt: the table changes little meanwhile
            expected = self.learning.expected(job, self.live.agents.get(msg.agent_id))
            live.learned = expected.node_s if expected is not None else {}
        learned = live.learned
        pos = live.position
        for ev in msg.events:
            live.updated_at = ev.t
            at = max(pos.node_since, now - max(0.0, latest - ev.t))
            if ev.kind == "cached":
                live.cached = list(ev.nodes)
                pos = eta.served_from_cache(pos, ev.nodes)
            elif ev.kind in ("executing", "progress"):
                live.node = ev.node or live.node
                live.node_type = ev.node_type or live.node_type
                live.value, live.max = ev.value, ev.max
                if ev.node and ev.value is not None and ev.max is not None:
                    pos = eta.stepped(pos, ev.node, ev.value, ev.max, at, learned)
                elif ev.node:
                    pos = eta.executing(pos, ev.node, at, learned)
            elif ev.kind == "executed" and ev.node:
                pos = eta.executed(pos, ev.node, at, learned)
            elif ev.kind == "preview" and ev.image is not None:
                live.preview = (ev.image, ev.mime or "image/jpeg")
                live.previews += 1
            if ev.fraction is not None:
                live.fraction = max(live.fraction or 0.0, ev.fraction)
        live.position = pos
        self.live.feed.progress(job, live, preview=live.previews != previews)
        self.live.feed.comfy_events(job, msg.attempt, msg.events)  # the ComfyUI facade's stream
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
        self.fenced(agent_id, job_id, attempt)
        sink = self.outputs.open_chunk(job_id, attempt, name, offset, size, sha256, length)
        if isinstance(sink, ChunkResult):
            return p.UploadState(
                name=name, received=sink.received, size=size, complete=sink.complete
            )
        return sink

    def fenced_after_write(self, agent_id: str, job_id: str, attempt: int) -> None:
        """Fenced again after an attempt's output files were written off the event loop (an
        upload's last chunk, a finish's inline files): the attempt may have gone stale
        meanwhile; then its files go (the release that made it stale may have run before they
        were stored) and the agent hears StaleAttempt."""
        try:
            self.fenced(agent_id, job_id, attempt)
        except StaleAttempt:
            self.outputs.drop_attempt(job_id, attempt)
            raise

    def upload_state(
        self, agent_id: str, job_id: str, attempt: int, name: str, size: int
    ) -> p.UploadState:
        self.fenced(agent_id, job_id, attempt)
        have = self.outputs.received(job_id, attempt, name)
        return p.UploadState(
            name=name,
            received=have,
            size=size,
            complete=have == size and (self.outputs.final_path(job_id, attempt, name).exists()),
        )

    def output_store_refused(self, agent_id: str, job_id: str, attempt: int, why: str) -> None:
        """Object storage refuses the coordinator (credentials, bucket): the attempt cannot
        deliver its outputs anywhere, so the job fails with the reason (not retried: another
        attempt would meet the same refusal). The agent hears its attempt is stale."""
        job = self.fenced(agent_id, job_id, attempt)
        err = {"code": "output_store_refused", "message": why}
        self.ledger.commit(job, moves.advance(job, JobEvent.FAIL, self.clock(), why, error=err))
        log.error("job_failed", job_id=job_id, agent_id=agent_id, attempt=attempt, code=err["code"])
        raise StaleAttempt(f"job {job_id} failed: {why}", "attempt")

    def finish(self, msg: p.Finish) -> p.Ack:
        job = self.fenced(msg.agent_id, msg.job_id, msg.attempt)
        now = self.clock()
        agent = self.live.agents.get(msg.agent_id)
        if msg.outcome == "completed":
            return self._completed(job, msg, agent, now)
        err = _error_dict(msg.error)
        host_fault = msg.outcome in ("failed", "requeue") and classify(err) == "agent"
        if msg.outcome == "failed" and not host_fault and not (err and err.get("retryable")):
            new = moves.advance(
                job,
                JobEvent.FAIL,
                now,
                (err or {}).get("message", "failed"),
                error=err or {"code": "failed", "message": "failed"},
            )
            self.ledger.commit(job, new)

            def failed() -> None:
                self.outputs.drop_attempt(job.id, job.attempt)
                if agent is not None:
                    agent.recent_failures.append(now)
                log.info(
                    "job_failed",
                    job_id=job.id,
                    agent_id=msg.agent_id,
                    attempt=job.attempt,
                    code=(err or {}).get("code"),
                )

            self.ledger.after(failed)
            return p.Ack(status=new.status.value)
        if msg.outcome == "cancelled" and job.desired == "cancel":
            # an error here says where ComfyUI stopped (the ComfyUI facade's /history)
            new = moves.advance(
                job, JobEvent.CANCEL, now, "cancelled by user; agent confirmed", error=err
            )
            self.ledger.commit(job, new)
            self.ledger.after(lambda: self.outputs.drop_attempt(job.id, job.attempt))
            return p.Ack(status=new.status.value)
        stopped = moves.stop_error(job)
        if stopped is not None:
            err, reason = stopped, stopped["message"]
        else:
            reason = (err or {}).get("message") or f"agent gave the job back ({msg.outcome})"
        released = self.ledger.release_change(
            job, now, reason, spend_retry=msg.spend_retry, error=err
        )
        self.ledger.apply([released])

        def gave_back() -> None:
            if host_fault:  # this host lacks something: block the pair, try another host
                self.learning.pair_failed(msg.agent_id, job.workflow_facts.shape, now, err)
            if msg.outcome == "failed" and agent is not None:
                agent.recent_failures.append(now)

        self.ledger.after(gave_back)
        return p.Ack(status=released.new.status.value)

    def _completed(
        self, job: JobRecord, msg: p.Finish, agent: AgentState | None, now: float
    ) -> p.Ack:
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
        changes: list[Change] = []
        running = job
        if job.status == JobStatus.ASSIGNED:
            running = moves.advance(job, JobEvent.START, now, "started")
            changes.append(Change(job, running))
        outputs = [{**_output_dict(o), "attempt": job.attempt} for o in msg.outputs]
        new = moves.advance(
            running,
            JobEvent.COMPLETE,
            now,
            f"{len(outputs)} outputs stored and verified",
            outputs=outputs,
            timings=dict(msg.timings),
            error=None,
            gpu_name=_gpu_name(agent, job.gpu_index),
            vram_peak_mb=msg.vram_peak_mb,
            profile=[msgspec.to_builtins(n) for n in msg.profile],
        )
        changes.append(Change(running, new))
        self.ledger.apply(changes)
        self.ledger.after(lambda: self._learn_completed(job, new, agent, msg.agent_id))
        return p.Ack(status=new.status.value)

    def _learn_completed(
        self, job: JobRecord, new: JobRecord, agent: AgentState | None, agent_id: str
    ) -> None:
        """After a completion is durable: the attempt's upload checks go, learning learns."""
        self.outputs.forget(job.id, job.attempt)
        self.outputs.drop_other_attempts(job.id, job.attempt)
        self.learning.learn(new)
        if agent is not None:
            facts = job.workflow_facts
            self.learning.pair_succeeded(agent.agent_id, facts.shape)
            agent.ran(job.instance_id or "", [facts.shape, *facts.model_refs])
        log.info(
            "job_completed",
            job_id=job.id,
            agent_id=agent_id,
            attempt=job.attempt,
            outputs=len(new.outputs),
        )


def _gpu_name(agent: AgentState | None, gpu_index: int | None) -> str | None:
    if agent is None or gpu_index is None:
        return None
    return next((g.name for g in agent.gpus if g.index == gpu_index), None)


def _error_dict(err: p.ErrorInfo | None) -> dict[str, Any] | None:
    if err is None:
        return None
    out: dict[str, Any] = msgspec.to_builtins(err)
    return {k: v for k, v in out.items() if v not in (None, {})}


def _output_dict(o: p.OutputFile) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(o)
    out.pop("data", None)  # stored as a file (inline_outputs.py), never in the job's record
    return out
