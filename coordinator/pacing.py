"""When the coordinator runs a placement plan, and which pending reasons it recomputes (pure).

A plan costs time in proportion to the queue. Wake-ups are many (every submit, finish and, while
jobs wait, every heartbeat), so a plan that cannot place anything and has nothing new to explain
is skipped, one that cannot place anything only explains the jobs that have no reason yet, and
the pending reasons of jobs already explained are refreshed every `refresh_s`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from comfyfleet.coordinator.scheduler.model import AgentView, JobRequest
from comfyfleet.coordinator.scheduler.plan import DEFAULT_STARVATION_S

REASON_REFRESH_S = 5.0


@dataclass(frozen=True, slots=True)
class PlanCall:
    run: bool
    explain: frozenset[str] | None  # None: every job not placed; else only these
    # None: plan the whole queue; else only these jobs (nothing can be placed anyway, so the
    # plan only explains them and needs no pass over the rest of the queue)
    only: frozenset[str] | None = None


def has_free_slot(agents: Sequence[AgentView]) -> bool:
    """Could any plan place a job now: a schedulable agent with a healthy slot not full."""
    return any(
        a.schedulable and any(s.healthy and s.capacity - s.active > 0 for s in a.slots)
        for a in agents
    )


def plan_call(
    agents: Sequence[AgentView],
    unexplained: Collection[str],
    explained_at: float,
    now: float,
    refresh_s: float = REASON_REFRESH_S,
) -> PlanCall:
    if now - explained_at >= refresh_s:
        return PlanCall(True, None)
    free = has_free_slot(agents)
    if unexplained:
        ids = frozenset(unexplained)
        return PlanCall(True, ids, None if free else ids)
    return PlanCall(free, frozenset())


def any_starving(
    queue: Sequence[JobRequest], now: float, starvation_s: float = DEFAULT_STARVATION_S
) -> bool:
    """Whether plan() would look for a hold: a job queued longer than `starvation_s`. Only then
    do the agents without a free slot matter to a plan that explains nothing (a hold may fall
    on a busy GPU); otherwise the coordinator plans over the agents with room alone."""
    return any(now - j.queued_at > starvation_s for j in queue)
