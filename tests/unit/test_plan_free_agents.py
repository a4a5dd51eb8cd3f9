"""The coordinator plans over the agents with a free slot alone when it explains nothing and no
job starves: the same placements as over the whole fleet, and the same free-slot test without
building views."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator import pacing
from comfyfleet.coordinator.fleet import (
    AgentState,
    AgentStatus,
    agent_view,
    has_free_slot,
    slot_loads,
)
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.scheduler import bench as sb
from comfyfleet.coordinator.scheduler.plan import plan
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.protocol import InstanceInfo
from comfyfleet.shared.slots import slot_load
from comfyfleet.shared.status import JobStatus

pytestmark = pytest.mark.timeout(120)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    agents=st.integers(1, 40),
    jobs=st.integers(1, 150),
    busy=st.floats(0.3, 1.0),
)
def test_free_agents_alone_place_the_same(seed: int, agents: int, jobs: int, busy: float) -> None:
    rng = random.Random(seed)
    fleet = sb.make_agents(agents, rng, busy_share=busy)
    queue = [
        dataclasses.replace(j, queued_at=sb.NOW - rng.uniform(0, 200))  # none starving
        for j in sb.make_jobs(jobs, sb.NOW, rng)
    ]
    assert not pacing.any_starving(queue, sb.NOW)
    free = [a for a in fleet if pacing.has_free_slot([a])]
    whole = plan(queue, fleet, sb.NOW, max_placements=50, explain=frozenset())
    part = plan(queue, free, sb.NOW, max_placements=50, explain=frozenset())
    assert part.placements == whole.placements


@settings(max_examples=60, deadline=None)
@given(
    caps=st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=0, max_size=4),
    placed=st.lists(st.integers(0, 4), max_size=8),
    status=st.sampled_from(list(AgentStatus)),
    draining=st.booleans(),
    finishing=st.sets(st.integers(0, 8)),
    gone=st.booleans(),
)
def test_free_slot_without_a_view_agrees_with_the_view(
    caps: list[tuple[int, bool]],
    placed: list[int],
    status: AgentStatus,
    draining: bool,
    finishing: set[int],
    gone: bool,
) -> None:
    agent = AgentState(
        "a",
        status,
        0.0,
        0.0,
        draining=draining,
        instances=[
            InstanceInfo(instance_id=f"i{n}", gpu_index=None, healthy=healthy, capacity=cap)
            for n, (cap, healthy) in enumerate(caps)
        ],
    )
    jobs: dict[str, JobRecord] = {}
    for n, slot in enumerate(placed):  # slot 4 and beyond: an instance the agent no longer has
        job = JobRecord(
            id=f"j{n}",
            spec=JobSpec(workflow={}),
            workflow_hash="h",
            created_at=0.0,
            status=JobStatus.RUNNING,
            agent_id="a",
            instance_id=f"i{slot}",
        )
        jobs[job.id] = job
        agent.jobs.add(job.id)
    if gone:
        agent.jobs.add("gone")  # an id the job index no longer holds
    agent.finishing = frozenset(f"j{n}" for n in finishing)  # ComfyUI is done with these
    view = agent_view(agent, jobs, 60.0, 0.0)
    assert has_free_slot(agent, jobs) == pacing.has_free_slot([view])
    # the places taken, by the one rule of shared/slots.py
    held = Counter(f"i{slot}" for slot in placed)
    done = Counter(f"i{slot}" for n, slot in enumerate(placed) if n in finishing)
    cap = {f"i{n}": c for n, (c, _) in enumerate(caps)}
    rule = {i: slot_load(held[i], done[i], cap.get(i, 0)) for i in held}
    assert slot_loads(agent, jobs) == rule
