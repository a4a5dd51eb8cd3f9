"""A requeued job keeps its place and its story (issue 12.11, 12.12): it goes before jobs
submitted after it, and the reason each attempt ended stays in its history and final error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.scheduler.plan import plan
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.coordinator.store import MemoryStore
from comfyfleet.shared import protocol as p
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus
from tests.unit.test_scheduler_support import NOW, agent, gpu, job, slot
from tests.unit.test_write_then_memory import WORKFLOW, Clock, register_msg


@settings(max_examples=200, deadline=None)
@given(
    jobs=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 500), st.integers(0, 500)),
        min_size=1,
        max_size=12,
    ),
    room=st.integers(1, 4),
)
def test_plan_orders_by_priority_then_submission_whatever_the_requeues(
    jobs: list[tuple[int, int, int]], room: int
) -> None:
    """Each job: (priority, submitted, requeued this long after): with room for `room` jobs, the
    first `room` in (priority, submission) order are placed, however late each was requeued."""
    queue = [
        job(f"j{i:02d}", priority=prio, submitted_at=NOW - 1000 + s, queued_at=NOW - 1000 + s + r)
        for i, (prio, s, r) in enumerate(jobs)
    ]
    fleet = [agent("a", gpus=[gpu(0, total=80000)], slots=[slot("c0", 0, capacity=room)])]
    result = plan(queue, fleet, NOW, starvation_s=math.inf)
    first = sorted(queue, key=lambda j: (-j.priority, j.submitted_at, j.job_id))[:room]
    assert {pl.job_id for pl in result.placements} == {j.job_id for j in first}


@pytest.fixture
def coord(tmp_path: Path) -> tuple[Coordinator, Clock]:
    clock = Clock()
    config = CoordinatorConfig(data_dir=tmp_path / "coord")
    coord = Coordinator(config, MemoryStore(), OutputFiles(tmp_path / "o", 1 << 20), clock=clock)
    coord.register(register_msg("a1"))
    return coord, clock


async def lease(coord: Coordinator) -> list[p.Assignment]:
    return (await coord.lease(p.LeaseRequest(agent_id="a1", free={"i0": 1}, wait_s=0))).jobs


async def test_a_requeued_job_runs_before_jobs_submitted_after_it(coord) -> None:
    coord, clock = coord
    first, _ = coord.submit(JobSpec(workflow=WORKFLOW))
    assert coord.schedule_once() == 1
    (got,) = await lease(coord)
    coord.started(p.Started(agent_id="a1", job_id=first.id, attempt=1, prompt_id="pr"))
    later = []
    for _ in range(3):
        clock.now += 1
        later.append(coord.submit(JobSpec(workflow=WORKFLOW))[0].id)
    clock.now += 1
    crashed = p.ErrorInfo(code="comfyui_lost", message="ComfyUI crashed", retryable=True)
    coord.finish(
        p.Finish(agent_id="a1", job_id=first.id, attempt=1, outcome="requeue", error=crashed)
    )
    assert coord.get(first.id).status == JobStatus.QUEUED
    assert coord.schedule_once() == 1
    assert [a.job_id for a in await lease(coord)] == [first.id]
    assert all(coord.get(i).status == JobStatus.QUEUED for i in later)


async def test_each_attempt_keeps_its_reason_and_the_final_error_names_them(coord) -> None:
    """Attempt 1 times out; attempt 2 is never started: the history shows the timeout and the
    final error names both causes, not only the last one."""
    coord, clock = coord
    job, _ = coord.submit(JobSpec(workflow=WORKFLOW, timeout_s=2, max_retries=1))
    coord.schedule_once()
    await lease(coord)
    coord.started(p.Started(agent_id="a1", job_id=job.id, attempt=1, prompt_id="pr"))
    clock.now += 3
    coord.sweep()  # the timeout: the agent is asked to stop
    assert coord.jobs[job.id].desired == "timeout"
    coord.finish(p.Finish(agent_id="a1", job_id=job.id, attempt=1, outcome="cancelled"))
    assert coord.schedule_once() == 1
    await lease(coord)  # attempt 2 handed out, never started
    beat = p.Heartbeat(agent_id="a1", instances=register_msg("a1").instances)
    for _ in range(int(coord.config.assign_timeout_s) + 1):
        clock.now += 1
        coord.heartbeat(beat)  # alive (a fleet token: it proves no host, takes no job)
        coord.sweep()
    failed = coord.get(job.id)
    assert failed.status == JobStatus.FAILED
    reasons = [t.reason for t in failed.history]
    assert "timed out after 2 s" in reasons
    message = failed.error["message"] if failed.error else ""
    assert "not started within 30 s" in message and "attempt 1: timed out after 2 s" in message
    assert [a["attempt"] for a in failed.error["attempts"]] == [1, 2]  # type: ignore[index]


async def test_a_timeout_the_agent_never_confirms_is_named_in_the_history(coord) -> None:
    coord, clock = coord
    job, _ = coord.submit(JobSpec(workflow=WORKFLOW, timeout_s=2, max_retries=1))
    coord.schedule_once()
    await lease(coord)
    coord.started(p.Started(agent_id="a1", job_id=job.id, attempt=1, prompt_id="pr"))
    beat = p.Heartbeat(agent_id="a1", instances=register_msg("a1").instances)
    for _ in range(int(coord.config.cancel_grace_s) + 4):
        clock.now += 1
        coord.heartbeat(beat)
        coord.sweep()
    requeued = coord.get(job.id)
    assert requeued.status == JobStatus.QUEUED
    assert requeued.history[-1].reason.startswith("timed out after 2 s")
