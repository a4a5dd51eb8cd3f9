"""reconcile(): what an agent's report says about the jobs placed on it (pure, properties)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator.reconcile import Placed, reconcile
from comfyfleet.shared import protocol as p
from comfyfleet.shared.status import JobStatus

IDS = [f"j{i}" for i in range(6)]
times = st.one_of(st.none(), st.integers(0, 100).map(float))
floors = st.sampled_from([-math.inf, 0.0, 25.0, 50.0, 75.0, 100.0, math.inf])


@st.composite
def placed_st(draw: st.DrawFn) -> dict[str, Placed]:
    out = {}
    for job_id in draw(st.lists(st.sampled_from(IDS), unique=True, max_size=6)):
        status = draw(st.sampled_from([JobStatus.ASSIGNED, JobStatus.RUNNING]))
        out[job_id] = Placed(
            attempt=draw(st.integers(1, 3)),
            status=status,
            delivered_at=draw(times),
            held_at=draw(times),
        )
    return out


@st.composite
def report_st(draw: st.DrawFn, placed: dict[str, Placed]) -> list[p.RunningJob]:
    out = []
    for job_id in draw(st.lists(st.sampled_from(IDS), unique=True, max_size=6)):
        job = placed.get(job_id)
        attempt = (
            job.attempt if job is not None and draw(st.booleans()) else draw(st.integers(1, 3))
        )
        out.append(
            p.RunningJob(
                job_id=job_id,
                attempt=attempt,
                instance_id="0",
                prompt_id=draw(st.sampled_from([None, "pr"])),
                started=draw(st.booleans()),
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.data(), placed=placed_st(), floor=floors)
def test_a_report_only_takes_what_the_agent_must_already_know(
    data: st.DataObject, placed: dict[str, Placed], floor: float
) -> None:
    report = data.draw(report_st(placed))
    v = reconcile(placed, report, floor)
    current = {
        r.job_id for r in report if r.job_id in placed and placed[r.job_id].attempt == r.attempt
    }
    # every reported attempt is kept (current here) or dropped (stale or unknown), never both
    assert {r.job_id for r in v.kept} == current
    assert {(d.job_id, d.attempt) for d in v.drop} == {
        (r.job_id, r.attempt) for r in report if r.job_id not in current
    }
    # a job the agent reports is never taken from it
    assert not current & (set(v.lost) | set(v.redeliver))
    for job_id in v.lost:  # lost: it showed it held the job before the floor
        job = placed[job_id]
        held = job.held_at if job.held_at is not None else -math.inf
        assert job.status == JobStatus.RUNNING or job.held_at is not None
        assert held <= floor
    for job_id in v.redeliver:  # handed out before the floor, never shown held
        job = placed[job_id]
        assert job.status == JobStatus.ASSIGNED and job.held_at is None
        assert job.delivered_at is not None and job.delivered_at <= floor
    # what a report omits but was handed out after the floor (and never held) is left alone
    for job_id, job in placed.items():
        if job.held_at is None and job.status == JobStatus.ASSIGNED:
            if job.delivered_at is None or job.delivered_at > floor:
                assert job_id not in v.lost and job_id not in v.redeliver
    # ComfyUI's state moves ASSIGNED jobs forward only: started -> RUNNING, queued -> recorded
    for job_id in v.start:
        assert placed[job_id].status == JobStatus.ASSIGNED
        assert next(r for r in v.kept if r.job_id == job_id).started
    for job_id in v.queued:
        r = next(r for r in v.kept if r.job_id == job_id)
        assert placed[job_id].status == JobStatus.ASSIGNED and r.prompt_id and not r.started
    assert v.releases == bool(v.lost or v.redeliver)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), placed=placed_st(), floors=st.tuples(floors, floors))
def test_a_later_floor_takes_at_least_as_much(
    data: st.DataObject, placed: dict[str, Placed], floors: tuple[float, float]
) -> None:
    report = data.draw(report_st(placed))
    low, high = sorted(floors)
    early, late = reconcile(placed, report, low), reconcile(placed, report, high)
    assert set(early.lost) <= set(late.lost)
    assert set(early.lost) | set(early.redeliver) <= set(late.lost) | set(late.redeliver)


def test_a_queued_prompt_stays_assigned_and_a_started_one_runs() -> None:
    placed = {
        "q": Placed(attempt=1, status=JobStatus.ASSIGNED, delivered_at=1.0),
        "s": Placed(attempt=1, status=JobStatus.ASSIGNED, delivered_at=1.0),
        "r": Placed(attempt=2, status=JobStatus.RUNNING, delivered_at=1.0, held_at=2.0),
    }
    report = [
        p.RunningJob(job_id="q", attempt=1, instance_id="0", prompt_id="pq"),
        p.RunningJob(job_id="s", attempt=1, instance_id="0", prompt_id="ps", started=True),
        p.RunningJob(job_id="r", attempt=1, instance_id="0", prompt_id="old"),  # stale attempt
    ]
    v = reconcile(placed, report, floor=5.0)
    assert v.queued == ("q",) and v.start == ("s",)
    assert [(d.job_id, d.attempt) for d in v.drop] == [("r", 1)]
    assert v.lost == ("r",)  # attempt 2 was held at 2.0 and is not reported
