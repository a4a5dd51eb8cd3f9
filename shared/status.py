"""Job statuses, the events that move them, and the ONE transition table (DESIGN.md §2).

The table is data. `transition()` is the only way to compute a next status; it raises
`IllegalTransition` for any move the table does not list.
"""

from __future__ import annotations

from enum import StrEnum

from comfyfleet.shared.errors import IllegalTransition


class JobStatus(StrEnum):
    SUBMITTED = "SUBMITTED"
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class JobEvent(StrEnum):
    ENQUEUE = "enqueue"  # stored and eligible for placement
    ASSIGN = "assign"  # the scheduler reserved a slot (attempt += 1)
    START = "start"  # the agent handed the prompt to ComfyUI
    COMPLETE = "complete"  # outputs stored and verified
    FAIL = "fail"  # the workflow is wrong, or retries are spent
    REQUEUE = "requeue"  # assign timeout, agent lost, timeout/stall with retries left, drain
    CANCEL = "cancel"  # user cancel took effect


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
)
ACTIVE: frozenset[JobStatus] = frozenset({JobStatus.ASSIGNED, JobStatus.RUNNING})

S, E = JobStatus, JobEvent

TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (S.SUBMITTED, E.ENQUEUE): S.QUEUED,
    (S.SUBMITTED, E.CANCEL): S.CANCELLED,
    (S.QUEUED, E.ASSIGN): S.ASSIGNED,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    (S.ASSIGNED, E.START): S.RUNNING,
    (S.ASSIGNED, E.REQUEUE): S.QUEUED,
    (S.ASSIGNED, E.FAIL): S.FAILED,  # ComfyUI refused the prompt (node_errors) or retries spent
    (S.ASSIGNED, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.COMPLETE): S.COMPLETED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.REQUEUE): S.QUEUED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
}

del S, E


def transition(status: JobStatus, event: JobEvent) -> JobStatus:
    """The status that `event` moves a job in `status` to; raises on an illegal move."""
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(status.value, event.value) from None


def can(status: JobStatus, event: JobEvent) -> bool:
    return (status, event) in TRANSITIONS


def is_terminal(status: JobStatus) -> bool:
    return status in TERMINAL
