"""`plan()`: place queued jobs on the fleet, greedily, best fit first (DESIGN.md §3).

Pure: the same (jobs, agents, now) always gives the same result, whatever the input order.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from operator import attrgetter

from comfyfleet.coordinator.scheduler.capacity import KIND_CPU, KIND_GPU, Capacity
from comfyfleet.coordinator.scheduler.index import SlotIndex, StaticFilter
from comfyfleet.coordinator.scheduler.model import (
    AgentView,
    JobRequest,
    Placement,
    PlanResult,
    SchedulerError,
)
from comfyfleet.coordinator.scheduler.rank import AFFINITY_BUCKET_MB, fit_score, is_warm
from comfyfleet.coordinator.scheduler.reasons import Explainer
from comfyfleet.coordinator.scheduler.starvation import Hold, apply_hold, choose_hold

_ORDER = attrgetter("order")
DEFAULT_STARVATION_S = 300.0
DEFAULT_MAX_HOLDS = 32


def job_order(job: JobRequest) -> tuple[int, float, str]:
    """Priority (higher first), then age since submission (older first; a requeued job keeps
    its place), then id."""
    return job.order


def plan(
    jobs: Sequence[JobRequest],
    agents: Sequence[AgentView],
    now: float,
    max_placements: int | None = None,
    *,
    starvation_s: float = DEFAULT_STARVATION_S,
    max_holds: int = DEFAULT_MAX_HOLDS,
    affinity_bucket_mb: int = AFFINITY_BUCKET_MB,
    explain: Collection[str] | None = None,
) -> PlanResult:
    """Place `jobs` on `agents` as of time `now`.

    Jobs go in `job_order`; each takes the best-fit feasible slot given what this plan already
    placed (so a plan never over-commits a GPU's VRAM, a host's RAM/CPU or an instance's
    capacity). A job that fits nowhere is skipped, not waited for. A job queued longer than
    `starvation_s` that fits nowhere now holds the GPU (or host) closest to fitting it, so that
    jobs after it cannot take what drains there; at most `max_holds` such jobs are looked at per
    plan. Among GPUs in one `affinity_bucket_mb` band of VRAM left, a warm instance wins.
    After `max_placements` placements the rest is left for the next plan. Every job not
    placed gets a reason in `pending`; with `explain` given, a job that fits nowhere gets its
    (costlier) capacity reason only if its id is in `explain`.
    """
    seen: set[str] = set()
    for job in jobs:
        if job.job_id in seen:
            raise SchedulerError(f"job {job.job_id!r} appears twice")
        seen.add(job.job_id)
    cap = Capacity(agents, affinity_bucket_mb)
    index = SlotIndex(cap)
    statics = StaticFilter(cap)
    agent_pos = cap.agent_pos
    order = sorted(jobs, key=_ORDER)
    placements: list[Placement] = []
    pending: dict[str, str] = {}
    unplaced: list[JobRequest] = []
    holds: dict[str, Hold] = {}
    hold_tries = 0
    hopeless: set[tuple[object, ...]] = set()
    limit = math.inf if max_placements is None else max_placements
    for pos, job in enumerate(order):
        if len(placements) >= limit:
            deferred = f"not considered: this plan stopped after {max_placements} placement(s)"
            for rest in order[pos:]:
                pending[rest.job_id] = deferred
            break
        problem = job.problem
        if problem is not None:
            pending[job.job_id] = problem
            continue
        # capacity only shrinks during a plan: a request that found no slot finds none later
        starving = now - job.queued_at > starvation_s and hold_tries < max_holds
        if not starving and not index.open_slots(KIND_GPU if job.gpus == 1 else KIND_CPU):
            unplaced.append(job)  # every slot of its kind is taken: nothing left to search
            continue
        request = (job.signature, job.vram_mb, job.ram_mb, job.cpu, job.blocked_agents)
        if request in hopeless and not starving:
            unplaced.append(job)  # the common case in a long queue: skip the slot search
            continue
        allowed = statics.allowed(job)
        blocked = {agent_pos[a] for a in job.blocked_agents if a in agent_pos}
        avoid = {agent_pos[a] for a in job.avoid_agents if a in agent_pos}
        sid = None if request in hopeless else index.best(job, allowed, blocked, avoid)
        if sid is not None:
            score = fit_score(job, cap, sid)
            slot = cap.slots[sid]
            warm = is_warm(job, cap.agents[cap.slot_agent[sid]], slot)
            index.place(sid, job)
            placements.append(
                Placement(
                    job_id=job.job_id,
                    agent_id=cap.agents[cap.slot_agent[sid]].agent_id,
                    instance_id=slot.instance_id,
                    gpu_index=slot.gpu_index,
                    score=score,
                    warm=warm,
                )
            )
            continue
        hopeless.add(request)
        unplaced.append(job)
        if starving:
            hold_tries += 1
            target = choose_hold(job, cap, allowed, blocked, avoid)
            if target is not None:
                holds[job.job_id] = apply_hold(job, index, *target)
    explainer = Explainer(index, statics, holds, now)
    for job in unplaced:
        if explain is None or job.job_id in explain:
            pending[job.job_id] = explainer.reason(job)
    return PlanResult(placements=tuple(placements), pending=pending)
