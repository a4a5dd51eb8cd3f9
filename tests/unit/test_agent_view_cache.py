"""The scheduler's view of an agent is built again only when what it reads changed: after any
sequence of the changes the coordinator makes (placements, moves, reports, heartbeats, leases'
finishing lists, drains, failures, time passing) the cached view equals one built afresh."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator.fleet import AgentState, AgentStatus, agent_view, build_view
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.jobspec import JobSpec, Resources
from comfyfleet.shared.protocol import GpuInfo, HostInfo, InstanceInfo
from comfyfleet.shared.status import JobStatus

pytestmark = pytest.mark.timeout(120)

WINDOW_S = 60.0
GPUS = 3


def gpus(free: list[int]) -> list[GpuInfo]:
    return [
        GpuInfo(index=i, name="RTX", vram_total_mb=24_000, vram_free_mb=f)
        for i, f in enumerate(free)
    ]


def instances(caps: list[tuple[int, bool]]) -> list[InstanceInfo]:
    return [
        InstanceInfo(instance_id=str(i), gpu_index=i, capacity=cap, healthy=healthy)
        for i, (cap, healthy) in enumerate(caps)
    ]


job_ids = st.sampled_from([f"j{n}" for n in range(6)])
steps = st.one_of(
    st.tuples(
        st.just("place"),
        job_ids,
        st.integers(0, GPUS - 1),
        st.integers(0, 20_000),
        st.integers(0, 4096),
    ),
    st.tuples(st.just("start"), job_ids, st.floats(0, 100)),
    st.tuples(st.just("end"), job_ids, st.booleans()),
    st.tuples(
        st.just("heartbeat"),
        st.floats(0, 100),
        st.lists(st.integers(0, 24_000), min_size=GPUS, max_size=GPUS),
        st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=GPUS, max_size=GPUS),
        st.integers(0, 64_000),
    ),
    st.tuples(st.just("ran"), st.integers(0, GPUS - 1), st.lists(st.text("abc", max_size=2))),
    st.tuples(st.just("finishing"), st.frozensets(job_ids)),
    st.tuples(st.just("status"), st.sampled_from(list(AgentStatus)), st.booleans()),
    st.tuples(st.just("failed"), st.floats(0, 100)),
    st.tuples(st.just("inventory"), st.frozensets(st.sampled_from(["m1", "m2"]))),
    st.tuples(st.just("time"), st.floats(0, 200)),
)


def apply_step(agent: AgentState, jobs: dict[str, JobRecord], step: tuple, now: float) -> float:
    kind = step[0]
    if kind == "place":
        _, job_id, gpu, vram, ram = step
        jobs[job_id] = JobRecord(
            id=job_id,
            spec=JobSpec(workflow={}, resources=Resources(vram_mb=vram, ram_mb=ram, cpu=0.5)),
            workflow_hash="h",
            created_at=0.0,
            status=JobStatus.ASSIGNED,
            agent_id=agent.agent_id,
            instance_id=str(gpu),
            gpu_index=gpu,
            vram_mb=vram,
        )
        agent.jobs.add(job_id)
    elif kind == "start" and step[1] in jobs:
        job = jobs[step[1]]
        jobs[job.id] = dataclasses.replace(
            job,
            status=JobStatus.RUNNING,
            timestamps={**job.timestamps, JobStatus.RUNNING.value: step[2]},
        )
    elif kind == "end":
        agent.jobs.discard(step[1])
        if step[2]:
            jobs.pop(step[1], None)
    elif kind == "heartbeat":
        _, at, free, caps, ram = step
        host = HostInfo(hostname="h", cpu_count=8, ram_total_mb=64_000, ram_available_mb=ram)
        agent.apply_snapshot(host, gpus(free), instances(caps), at)
    elif kind == "ran":
        agent.ran(str(step[1]), step[2])
    elif kind == "finishing":
        agent.finishing = frozenset(step[1])
    elif kind == "status":
        agent.status, agent.draining = step[1], step[2]
    elif kind == "failed":
        agent.recent_failures.append(step[1])
    elif kind == "inventory":
        agent.apply_inventory(sorted(step[1]), None)
    elif kind == "time":
        return float(step[1])
    return now


@settings(max_examples=150, deadline=None)
@given(st.lists(steps, max_size=40))
def test_cached_view_equals_a_fresh_one(script: list[tuple]) -> None:
    agent = AgentState(
        "a",
        AgentStatus.ONLINE,
        0.0,
        0.0,
        gpus=gpus([24_000] * GPUS),
        instances=instances([(1, True)] * GPUS),
    )
    jobs: dict[str, JobRecord] = {}
    now = 0.0
    for step in script:
        now = apply_step(agent, jobs, step, now)
        assert agent_view(agent, jobs, WINDOW_S, now) == build_view(agent, jobs, WINDOW_S, now)


def test_an_unchanged_agent_is_not_built_again() -> None:
    agent = AgentState("a", AgentStatus.ONLINE, 0.0, 0.0, gpus=gpus([9]), instances=instances([]))
    first = agent_view(agent, {}, WINDOW_S, 1.0)
    assert agent_view(agent, {}, WINDOW_S, 2.0) is first
    agent.recent_failures.append(1.5)  # counted on every call, the rest kept
    again = agent_view(agent, {}, WINDOW_S, 2.0)
    assert again.recent_failures == 1 and again.gpus is first.gpus
