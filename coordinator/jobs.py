"""Pure moves of a job record: each returns a new record, the caller persists it (guarded)."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.history import Transition
from comfyfleet.shared.protocol import INSTANCE_BROKEN
from comfyfleet.shared.status import JobEvent, JobStatus, transition

# Error codes that end the job even when the agent hands it back as a host fault (requeue).
FAILS_THE_JOB = frozenset({INSTANCE_BROKEN})


def new_job_id(now: float) -> str:
    """Time-ordered, unguessable: 12 hex digits of milliseconds + 12 random hex digits."""
    return f"{int(now * 1000):012x}{secrets.token_hex(6)}"


def advance(job: JobRecord, event: JobEvent, now: float, reason: str, **changes: Any) -> JobRecord:
    """The job after `event`: status from the transition table, history and timestamps appended.

    Raises `IllegalTransition` for a move the table does not allow. `changes` sets other fields.
    """
    status = transition(job.status, event)
    attempt = changes.pop("attempt", job.attempt)
    agent_id = changes.get("agent_id") or job.agent_id
    entry = Transition(
        at=now,
        from_status=job.status.value,
        to_status=status.value,
        event=event.value,
        reason=reason,
        attempt=attempt,
        agent_id=agent_id,
    )
    timestamps = dict(job.timestamps)
    timestamps[status.value] = now
    return dataclasses.replace(
        job,
        status=status,
        attempt=attempt,
        updated_at=now,
        timestamps=timestamps,
        history=[*job.history, entry],
        **changes,
    )


def created(job: JobRecord, now: float) -> JobRecord:
    """A freshly accepted job: SUBMITTED, then QUEUED at once (nothing to wait on yet)."""
    first = Transition(now, None, JobStatus.SUBMITTED.value, "submit", "accepted", 0)
    submitted = dataclasses.replace(
        job,
        status=JobStatus.SUBMITTED,
        updated_at=now,
        timestamps={JobStatus.SUBMITTED.value: now},
        history=[first],
    )
    return advance(submitted, JobEvent.ENQUEUE, now, "stored; eligible for placement")


def assigned(
    job: JobRecord, now: float, agent_id: str, instance_id: str, gpu_index: int | None
) -> JobRecord:
    return advance(
        job,
        JobEvent.ASSIGN,
        now,
        f"placed on {agent_id}/{instance_id}",
        attempt=job.attempt + 1,
        agent_id=agent_id,
        instance_id=instance_id,
        gpu_index=gpu_index,
        prompt_id=None,
        pending_reason=None,
    )


def released(
    job: JobRecord,
    now: float,
    reason: str,
    *,
    spend_retry: bool,
    error: dict[str, Any] | None = None,
) -> JobRecord:
    """End the current attempt for a reason outside the workflow.

    A cancel the user asked for wins; a job that broke its agent's ComfyUI a second time fails
    with that reason (a retry would only break it again); otherwise requeue while retries are
    left (the agent is remembered so another one is preferred), else fail with the reason.
    """
    if job.desired == "cancel":
        return advance(job, JobEvent.CANCEL, now, f"cancelled ({reason})")
    if error is not None and error.get("code") in FAILS_THE_JOB:
        return advance(job, JobEvent.FAIL, now, reason, error=error, desired="run")
    failed_agents = job.failed_agents
    if spend_retry and job.agent_id and job.agent_id not in failed_agents:
        failed_agents = [*failed_agents, job.agent_id]
    if spend_retry and job.retries_used >= job.spec.max_retries:
        err = error or {"code": "retries_exhausted", "message": reason}
        ends = [*attempt_endings(job.history), (job.attempt, reason)]
        earlier = "; ".join(f"attempt {n}: {why}" for n, why in ends[:-1])
        message = f"{err.get('message', reason)} (after {job.attempt} attempts"
        message += f"; earlier: {earlier})" if earlier else ")"
        err = {
            **err,
            "message": message,
            "attempts": [{"attempt": n, "reason": why} for n, why in ends],
        }
        return advance(job, JobEvent.FAIL, now, reason, error=err, desired="run")
    return advance(
        job,
        JobEvent.REQUEUE,
        now,
        reason,
        retries_used=job.retries_used + (1 if spend_retry else 0),
        failed_agents=failed_agents,
        agent_id=None,
        instance_id=None,
        gpu_index=None,
        prompt_id=None,
        desired="run",
    )


def attempt_endings(history: list[Transition]) -> list[tuple[int, str]]:
    """(attempt, why it ended) of every attempt the history shows ended by a requeue."""
    return [
        (t.attempt, t.reason)
        for t in history
        if t.event == JobEvent.REQUEUE.value and t.from_status != JobStatus.QUEUED.value
    ]


def stop_error(job: JobRecord) -> dict[str, Any] | None:
    """The error an attempt the coordinator asked to stop ends with, when the stop was its
    timeout (a user's cancel is no error)."""
    if job.desired != "timeout":
        return None
    return {"code": "timeout", "message": f"timed out after {job.spec.timeout_s:g} s"}
