"""Scheduler properties (hypothesis): no over-commit, best fit equals brute force, determinism,
no head-of-line blocking, priority under scarcity, anti-starvation, consistent reasons."""

from __future__ import annotations

import dataclasses
import math
import random
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator.scheduler import plan
from comfyfleet.coordinator.scheduler.capacity import Capacity, find_gpu
from comfyfleet.coordinator.scheduler.feasibility import (
    STATIC_CHECKS,
    first_failure,
    fits_in_principle,
    fits_totals,
    job_problem,
)
from comfyfleet.coordinator.scheduler.model import AgentView, GpuView, JobRequest, SlotView
from comfyfleet.coordinator.scheduler.plan import job_order
from comfyfleet.coordinator.scheduler.rank import best_by_scan
from tests.unit.test_scheduler_support import NOW, agent, job

SETTINGS = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
AGENT_IDS = [f"a{i}" for i in range(6)]
HASHES = ["h1", "h2", "h3"]
MODELS = ["m1", "m2", "m3"]
CLASSES = ["KSampler", "MyCustomNode"]
GPU_NAMES = ["NVIDIA GeForce RTX 4090", "NVIDIA A100", "NVIDIA L4"]
K = 1000  # sizes in whole GB so that ties (and tie-breaks) happen often

labels_st = st.dictionaries(
    st.sampled_from(["zone", "tier"]), st.sampled_from(["x", "y"]), max_size=2
)


@st.composite
def gpu_st(draw: st.DrawFn, index: int) -> GpuView:
    total = draw(st.sampled_from([8, 12, 16, 24])) * K
    reserved = draw(st.integers(0, total // K)) * K
    unallocated = draw(st.integers(0, reserved // K)) * K
    external = draw(st.sampled_from([0, 0, 0, 1, 3])) * K
    free = total - external - (reserved - unallocated)
    return GpuView(index, draw(st.sampled_from(GPU_NAMES)), total, free, reserved, unallocated)


@st.composite
def slot_st(draw: st.DrawFn, instance_id: str, gpu_index: int | None) -> SlotView:
    capacity = draw(st.sampled_from([1, 1, 1, 2]))
    active = draw(st.integers(0, capacity))
    healthy = draw(st.sampled_from([True, True, True, True, False]))
    recent = draw(st.frozensets(st.sampled_from(HASHES + MODELS), max_size=2))
    return SlotView(instance_id, gpu_index, healthy, capacity, active, recent)


@st.composite
def agent_st(draw: st.DrawFn, agent_id: str) -> AgentView:
    gpus = [draw(gpu_st(i)) for i in range(draw(st.integers(0, 3)))]
    slots = []
    for g in gpus:
        for n in range(draw(st.sampled_from([0, 1, 1, 1, 2]))):
            slots.append(draw(slot_st(f"g{g.index}-{n}", g.index)))
    if draw(st.booleans()):
        slots.append(draw(slot_st("cpu", None)))
    if draw(st.integers(0, 9)) == 0:
        slots.append(draw(slot_st("ghost", 7)))  # names a GPU the agent does not report
    ram_total = draw(st.sampled_from([16, 32])) * K
    return AgentView(
        agent_id=agent_id,
        schedulable=draw(st.sampled_from([True, True, True, False])),
        labels=draw(labels_st),
        ram_available_mb=draw(st.integers(0, ram_total // K)) * K,
        ram_reserved_mb=draw(st.integers(0, ram_total // K)) * K,
        ram_total_mb=ram_total,
        cpu_count=draw(st.integers(1, 8)),
        cpu_reserved=draw(st.integers(0, 8)) / 2,
        gpus=tuple(gpus),
        slots=tuple(slots),
        models=draw(st.frozensets(st.sampled_from(MODELS))),
        recent_hashes=tuple(draw(st.lists(st.sampled_from(HASHES), unique=True, max_size=2))),
        recent_failures=draw(st.sampled_from([0, 0, 1, 2])),
        node_classes=draw(
            st.sampled_from([None, None, frozenset(CLASSES), frozenset(CLASSES[:1])])
        ),
    )


@st.composite
def fleet_st(draw: st.DrawFn, min_size: int = 0) -> list[AgentView]:
    ids = draw(st.lists(st.sampled_from(AGENT_IDS), unique=True, min_size=min_size, max_size=5))
    return [draw(agent_st(i)) for i in ids]


@st.composite
def job_st(draw: st.DrawFn, job_id: str) -> JobRequest:
    gpus = draw(st.sampled_from([1, 1, 1, 1, 0, 2]))
    return JobRequest(
        job_id=job_id,
        priority=draw(st.integers(0, 2)),
        submitted_at=(queued := NOW - draw(st.integers(0, 6)) * 100),
        queued_at=queued,
        gpus=gpus,
        vram_mb=draw(st.integers(0, 20)) * K,
        ram_mb=draw(st.integers(0, 8)) * K,
        cpu=draw(st.integers(0, 6)) / 2,
        labels=draw(st.dictionaries(st.sampled_from(["zone"]), st.sampled_from(["x", "y"]))),
        gpu_name=draw(st.sampled_from([None, None, None, "*4090", "nvidia a100", "*L?"])),
        models=tuple(draw(st.lists(st.sampled_from(MODELS), max_size=1))),
        workflow_hash=draw(st.sampled_from(HASHES)),
        avoid_agents=draw(st.frozensets(st.sampled_from(AGENT_IDS), max_size=2)),
        blocked_agents=draw(st.frozensets(st.sampled_from(AGENT_IDS), max_size=1)),
        model_refs=tuple(draw(st.lists(st.sampled_from(MODELS), unique=True, max_size=2))),
        node_classes=tuple(draw(st.lists(st.sampled_from(CLASSES), unique=True, max_size=2))),
    )


@st.composite
def jobs_st(draw: st.DrawFn, max_size: int = 10) -> list[JobRequest]:
    n = draw(st.integers(1, max_size))
    return [draw(job_st(f"j{i}")) for i in range(n)]


def triples(result: object) -> list[tuple[str, str, str]]:
    return [(p.job_id, p.agent_id, p.instance_id) for p in result.placements]  # type: ignore[attr-defined]


def reference_plan(jobs: list[JobRequest], agents: list[AgentView]) -> list[tuple[str, str, str]]:
    """Greedy in job order, each job by brute force over every slot and the checker pipeline."""
    cap = Capacity(agents)
    out = []
    for j in sorted(jobs, key=job_order):
        if job_problem(j) is not None:
            continue
        sid = best_by_scan(j, cap)
        if sid is not None:
            out.append(
                (j.job_id, cap.agents[cap.slot_agent[sid]].agent_id, cap.slots[sid].instance_id)
            )
            cap.commit(sid, j)
    return out


# -- properties -----------------------------------------------------------------------------------


@SETTINGS
@given(agents=fleet_st(), jobs=jobs_st())
def test_never_overcommits_and_respects_hard_constraints(
    agents: list[AgentView], jobs: list[JobRequest]
) -> None:
    result = plan(jobs, agents, NOW)
    cap = Capacity(agents)  # free capacity before the plan
    by_id = {j.job_id: j for j in jobs}
    vram: dict[tuple[str, int], list[int]] = {}
    ram: dict[str, list[int]] = {}
    cpu: dict[str, list[float]] = {}
    per_slot: dict[tuple[str, str], int] = {}
    for p in result.placements:
        j = by_id[p.job_id]
        a = cap.agents[cap.agent_pos[p.agent_id]]
        s = cap.slots[cap.sid(p.agent_id, p.instance_id)]
        assert first_failure(j, a, s, cap, STATIC_CHECKS) is None
        assert p.gpu_index == s.gpu_index
        assert (j.gpus == 1) == (s.gpu_index is not None)
        assert 0.0 <= p.score <= 1.0
        per_slot[(p.agent_id, p.instance_id)] = per_slot.get((p.agent_id, p.instance_id), 0) + 1
        if j.gpus == 1 and j.vram_mb > 0:
            assert s.gpu_index is not None
            vram.setdefault((p.agent_id, s.gpu_index), []).append(j.vram_mb)
        if j.ram_mb > 0:
            ram.setdefault(p.agent_id, []).append(j.ram_mb)
        if j.cpu > 0:
            cpu.setdefault(p.agent_id, []).append(j.cpu)
    for (agent_id, index), sizes in vram.items():
        free = cap.vram_free(agent_id, index)
        assert free is not None and sum(sizes) <= free
    for agent_id, sizes in ram.items():
        assert sum(sizes) <= cap.ram_free(agent_id)
    for agent_id, cpus in cpu.items():
        assert sum(cpus) <= cap.cpu_free(agent_id)
    for (agent_id, instance_id), n in per_slot.items():
        assert n <= cap.free_slots(agent_id, instance_id)
    assert len(result.placements) + len(result.pending) == len(jobs)
    assert set(result.pending).isdisjoint(p.job_id for p in result.placements)


@SETTINGS
@given(agents=fleet_st(), j=job_st("solo"))
def test_single_job_gets_the_brute_force_best_fit(agents: list[AgentView], j: JobRequest) -> None:
    result = plan([j], agents, NOW)
    cap = Capacity(agents)
    sid = None if job_problem(j) else best_by_scan(j, cap)
    if sid is None:
        assert result.placements == () and j.job_id in result.pending
    else:
        want = (j.job_id, cap.agents[cap.slot_agent[sid]].agent_id, cap.slots[sid].instance_id)
        assert triples(result) == [want]


@SETTINGS
@given(agents=fleet_st(), jobs=jobs_st(max_size=14))
def test_plan_equals_greedy_brute_force(agents: list[AgentView], jobs: list[JobRequest]) -> None:
    # with no hold in play, the indexed plan is exactly the O(jobs x slots) reference
    assert triples(plan(jobs, agents, NOW, starvation_s=math.inf)) == reference_plan(jobs, agents)


@SETTINGS
@given(agents=fleet_st(), jobs=jobs_st(), seed=st.integers(0, 2**16))
def test_deterministic_and_independent_of_input_order(
    agents: list[AgentView], jobs: list[JobRequest], seed: int
) -> None:
    first = plan(jobs, agents, NOW)
    rng = random.Random(seed)
    agents2, jobs2 = agents[:], jobs[:]
    rng.shuffle(agents2)
    rng.shuffle(jobs2)
    again = plan(jobs2, agents2, NOW)
    assert again.placements == first.placements
    assert dict(again.pending) == dict(first.pending)
    assert plan(jobs, agents, NOW) == first


@SETTINGS
@given(
    agents=fleet_st(),
    jobs=jobs_st(),
    huge=st.sampled_from(
        [
            {"vram_mb": 10**6},
            {"ram_mb": 10**6},
            {"cpu": 1000.0},
            {"labels": {"zone": "nowhere"}},
            {"gpu_name": "TPU*"},
            {"gpus": 2},
        ]
    ),
)
def test_a_job_that_fits_nowhere_never_blocks_others(
    agents: list[AgentView], jobs: list[JobRequest], huge: dict[str, object]
) -> None:
    base = plan(jobs, agents, NOW)
    blocker = job("blocker", priority=99, queued_at=NOW - 10**6)
    with_blocker = plan([*jobs, dataclasses.replace(blocker, **huge)], agents, NOW)  # type: ignore[arg-type]
    assert with_blocker.placements == base.placements
    assert "blocker" in with_blocker.pending


@SETTINGS
@given(agents=fleet_st(min_size=1), jobs=jobs_st())
def test_priority_wins_when_capacity_is_scarce(
    agents: list[AgentView], jobs: list[JobRequest]
) -> None:
    # shrink the fleet to one usable slot: the first job (in order) that fits alone takes it
    a = agents[0]
    g = GpuView(0, "NVIDIA L4", 24 * K, 24 * K, 0, 0)
    scarce = [
        agent(a.agent_id, gpus=[g], ram_total=32 * K, cpu_count=8, labels=a.labels, models=MODELS)
    ]
    result = plan(jobs, scarce, NOW, starvation_s=math.inf)
    alone = [j for j in sorted(jobs, key=job_order) if plan([j], scarce, NOW).placements]
    assert [p.job_id for p in result.placements] == [j.job_id for j in alone[:1]]


HOLD = re.compile(r"holding (?:GPU (\d+) on agent (\S+)|agent (\S+)|instance (\S+) on agent (\S+))")


@SETTINGS
@given(agents=fleet_st(min_size=1), jobs=jobs_st(), old=job_st("old"))
def test_starving_job_holds_capacity_against_later_jobs(
    agents: list[AgentView], jobs: list[JobRequest], old: JobRequest
) -> None:
    starving = dataclasses.replace(
        old, submitted_at=NOW - 10_000.0, queued_at=NOW - 10_000.0, priority=1
    )
    # the other jobs are at most 600 s old: only `starving` starves
    result = plan([*jobs, starving], agents, NOW, starvation_s=700)
    placed = {p.job_id for p in result.placements}
    if starving.job_id in placed or job_problem(starving):
        return
    cap = Capacity(agents)
    could = any(
        first_failure(starving, cap.agents[cap.slot_agent[s]], slot, cap, STATIC_CHECKS) is None
        and fits_in_principle(starving, cap.agents[cap.slot_agent[s]], slot)
        for s, slot in enumerate(cap.slots)
    )
    reason = result.pending[starving.job_id]
    match = HOLD.search(reason)
    assert (match is not None) == could, reason
    if match is None:
        return
    gpu_index, gpu_agent, host, inst, inst_agent = match.groups()
    order = sorted([*jobs, starving], key=job_order)
    later = {j.job_id for j in order[order.index(starving) + 1 :]}
    for p in result.placements:
        if p.job_id not in later:
            continue
        if host is not None:
            assert p.agent_id != host
        elif gpu_index is not None:
            assert (p.agent_id, p.gpu_index) != (gpu_agent, int(gpu_index))
        else:
            assert (p.agent_id, p.instance_id) != (inst_agent, inst)


@SETTINGS
@given(agents=fleet_st(), jobs=jobs_st())
def test_reasons_tell_never_from_waiting(agents: list[AgentView], jobs: list[JobRequest]) -> None:
    result = plan(jobs, agents, NOW)
    cap = Capacity(agents)
    by_id = {j.job_id: j for j in jobs}
    for job_id, reason in result.pending.items():
        j = by_id[job_id]
        assert reason
        if job_problem(j):
            assert reason == job_problem(j)
            continue
        ever = any(
            first_failure(j, cap.agents[cap.slot_agent[s]], slot, cap, STATIC_CHECKS) is None
            and fits_totals(j, cap.agents[cap.slot_agent[s]], slot)
            for s, slot in enumerate(cap.slots)
        )
        assert reason.startswith("waiting for capacity") == ever, reason


def test_find_gpu_helper() -> None:
    a = agent(gpus=[GpuView(3, "x", 1, 1, 0, 0)])
    assert find_gpu(a, 3) is not None and find_gpu(a, 0) is None and find_gpu(a, None) is None
