"""What an agent's report (register or heartbeat) says about the jobs placed on it (pure).

The coordinator knows of each job placed on the agent its current attempt, its status, when a
lease handed it out and when the agent first showed it holds it (a report listing it, Started,
events). The report lists the attempts the agent holds, each with its ComfyUI prompt id once
ComfyUI accepted it and whether ComfyUI has begun executing it. A finished attempt whose report
the coordinator has not acknowledged is still held (the agent keeps it in its outbox).

A job the report omits is judged only if the agent must already know of it: the report was
built after `floor` (the coordinator's previous answer to this agent: the agent builds each
report after it read the answer to the one before; a registration knows everything before it),
so a job the agent showed it held by then, and now omits, is lost (its runner is gone); one a
lease handed out by then that the agent never showed it held is handed out again (the lease
reply may never have arrived; an agent ignores an attempt it already holds). A job handed out
after `floor` may still be on its way: it is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from comfyfleet.shared import protocol as p
from comfyfleet.shared.status import JobStatus


@dataclass(frozen=True, slots=True)
class Placed:
    """A job placed on the agent, as the coordinator sees it."""

    attempt: int
    status: JobStatus  # ASSIGNED or RUNNING
    delivered_at: float | None = None  # when a lease handed it out (None: not yet)
    held_at: float | None = None  # when the agent first showed it holds it (None: never)


@dataclass(frozen=True, slots=True)
class Verdict:
    drop: tuple[p.JobRef, ...] = ()  # reported attempts that are not current here: stop them
    kept: tuple[p.RunningJob, ...] = ()  # reported attempts that are current here
    start: tuple[str, ...] = ()  # kept ASSIGNED jobs ComfyUI has begun: to RUNNING
    queued: tuple[str, ...] = ()  # kept ASSIGNED jobs waiting in ComfyUI's queue (prompt known)
    lost: tuple[str, ...] = ()  # held by `floor`, now omitted: the agent no longer has them
    redeliver: tuple[str, ...] = ()  # handed out by `floor`, never held, omitted: send again

    @property
    def releases(self) -> bool:
        """Whether the report takes jobs away from this agent as the coordinator knew it."""
        return bool(self.lost or self.redeliver)


def reconcile(
    placed: Mapping[str, Placed], reported: Iterable[p.RunningJob], floor: float
) -> Verdict:
    drop: list[p.JobRef] = []
    kept: dict[str, p.RunningJob] = {}
    for r in reported:
        job = placed.get(r.job_id)
        if job is None or job.attempt != r.attempt:
            drop.append(p.JobRef(job_id=r.job_id, attempt=r.attempt))
        else:
            kept.setdefault(r.job_id, r)
    start, queued, lost, redeliver = [], [], [], []
    for job_id, job in sorted(placed.items()):
        r = kept.get(job_id)
        if r is not None:
            if job.status == JobStatus.ASSIGNED and r.started:
                start.append(job_id)
            elif job.status == JobStatus.ASSIGNED and r.prompt_id:
                queued.append(job_id)
        elif (held := _held_at(job)) is not None:
            if held <= floor:
                lost.append(job_id)
        elif job.delivered_at is not None and job.delivered_at <= floor:
            redeliver.append(job_id)
    return Verdict(
        drop=tuple(drop),
        kept=tuple(kept.values()),
        start=tuple(start),
        queued=tuple(queued),
        lost=tuple(lost),
        redeliver=tuple(redeliver),
    )


def _held_at(job: Placed) -> float | None:
    """When the agent first showed it holds the job (None: never); a RUNNING job was held (its
    agent said ComfyUI started it), if not since a known time then since before anything."""
    if job.held_at is not None:
        return job.held_at
    return -math.inf if job.status == JobStatus.RUNNING else None
