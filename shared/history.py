"""One line of a job's history, as the coordinator keeps it and the API sends it.

Defined once: the coordinator appends these (`coordinator/jobs.py`), the store keeps them in the
job's state document, `GET /v1/jobs/{id}` sends them, and the client decodes the same struct.
"""

from __future__ import annotations

import msgspec


class Transition(msgspec.Struct, frozen=True):
    """A move through the transition table (`shared/status.py`): when, from and to which status,
    by which event, why, in which attempt, on which agent, and in which leader's term (`epoch`,
    with several coordinators on PostgreSQL; None with one coordinator, and for a job stored by
    a follower)."""

    at: float
    from_status: str | None
    to_status: str
    event: str
    reason: str
    attempt: int
    agent_id: str | None = None
    epoch: int | None = None
