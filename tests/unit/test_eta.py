"""The time left of a job (issue 12.13): from learned per-node times, falling with wall time when
the job runs on schedule, never growing without a reason; CPU slots learn too."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator import eta as e
from comfyfleet.coordinator.api.views import job_eta
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.estimates import CPU_SLOT
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.coordinator.store import MemoryStore
from comfyfleet.shared import protocol as p
from comfyfleet.shared.jobspec import JobSpec, Resources
from tests.unit.test_write_then_memory import WORKFLOW, Clock, register_msg

EPS = 1e-6


def test_eta_for_waiting_running_and_finished_jobs() -> None:
    ten = e.Expected(total_s=10.0)
    assert e.eta(ten, "QUEUED", None, None, None, 100.0) == {
        "expected_s": 10.0,
        "remaining_s": 10.0,
    }
    running = e.eta(ten, "RUNNING", 96.0, None, None, 100.0)
    assert running is not None and running["remaining_s"] == 6.0 and running["eta_at"] == 106.0
    slow = e.eta(ten, "RUNNING", 90.0, None, 0.5, 100.0)  # past the estimate: progress speaks
    assert slow is not None and slow["remaining_s"] == 10.0
    assert e.eta(None, "RUNNING", 90.0, None, None, 100.0) is None
    assert e.eta(ten, "COMPLETED", 90.0, None, 1.0, 100.0) is None


# A run: (node, learned seconds, seconds spent outside nodes before it); then a tail outside.
runs = st.lists(
    st.tuples(st.floats(0.1, 30.0), st.floats(0.0, 3.0), st.booleans()), min_size=1, max_size=6
)


def schedule(run: list[tuple[float, float, bool]], tail: float) -> list[tuple[float, str, str]]:
    """The events of a run exactly on its learned schedule, from t=0: (time, kind, node)."""
    events: list[tuple[float, str, str]] = []
    t = 0.0
    for i, (seconds, before, output) in enumerate(run):
        t += before
        events.append((t, "executing", f"n{i}"))
        for k in (1, 2, 3):  # the node's step counter on schedule
            events.append((t + seconds * k / 4, f"step{k}", f"n{i}"))
        t += seconds
        if output:
            events.append((t, "executed", f"n{i}"))
    return events


def position_at(events: list[tuple[float, str, str]], until: float, plan: dict[str, float]):
    pos = e.Position()
    for t, kind, node in events:
        if t > until:
            break
        if kind == "executing":
            pos = e.executing(pos, node, t, plan)
        elif kind == "executed":
            pos = e.executed(pos, node, t, plan)
        else:
            pos = e.stepped(pos, node, float(kind[-1]), 4.0, t, plan)
    return pos


@settings(max_examples=300, deadline=None)
@given(run=runs, tail=st.floats(0.0, 5.0), probes=st.lists(st.floats(0, 1), min_size=2))
def test_on_schedule_the_time_left_falls_as_fast_as_wall_time(
    run: list[tuple[float, float, bool]], tail: float, probes: list[float]
) -> None:
    plan = {f"n{i}": seconds for i, (seconds, _, _) in enumerate(run)}
    total = sum(s + b for s, b, _ in run) + tail
    expected = e.Expected(total_s=total, node_s=plan)
    events = schedule(run, tail)
    times = sorted(x * total for x in probes)
    left = [e.remaining_s(expected, 0.0, position_at(events, t, plan), None, t) for t in times]
    for t, r in zip(times, left, strict=True):
        assert r is not None and abs(r - (total - t)) <= EPS * total + EPS
    for i in range(1, len(times)):
        fell = left[i - 1] - left[i]  # type: ignore[operator]
        assert fell >= times[i] - times[i - 1] - EPS * total - EPS


@settings(max_examples=300, deadline=None)
@given(
    run=runs,
    actual=st.lists(st.tuples(st.floats(0.0, 60.0), st.floats(0.0, 10.0)), min_size=6, max_size=6),
    cached=st.sets(st.integers(0, 5)),
    probes=st.lists(st.floats(0, 1), min_size=2),
)
def test_the_time_left_never_grows_without_a_reason(
    run: list[tuple[float, float, bool]],
    actual: list[tuple[float, float]],
    cached: set[int],
    probes: list[float],
) -> None:
    """Nodes run faster or slower than learned, gaps differ, some nodes come from the cache;
    with no step counter to show a node is behind, the estimate only ever falls."""
    plan = {f"n{i}": seconds for i, (seconds, _, _) in enumerate(run)}
    expected = e.Expected(total_s=sum(s + b for s, b, _ in run) + 1.0, node_s=plan)
    pos, t, end = e.served_from_cache(e.Position(), [f"n{i}" for i in cached]), 0.0, 0.0
    timeline: list[tuple[float, e.Position]] = [(0.0, pos)]
    for i in range(len(run)):
        if i in cached:
            continue
        seconds, before = actual[i]
        t += before
        pos = e.executing(pos, f"n{i}", t, plan)
        timeline.append((t, pos))
        t += seconds
    end = t + 5.0
    times = sorted(x * end for x in probes)
    left = []
    for now in times:
        at = [pos for t, pos in timeline if t <= now][-1]
        left.append(e.remaining_s(expected, 0.0, at, None, now))
    assert all(r is not None for r in left)
    assert all(left[i] <= left[i - 1] + EPS for i in range(1, len(left)))  # type: ignore[operator]


def test_a_node_running_past_its_learned_time_lets_its_steps_speak() -> None:
    plan = {"k": 10.0}
    expected = e.Expected(total_s=10.0, node_s=plan)
    pos = e.stepped(e.executing(e.Position(), "k", 0.0, plan), "k", 2.0, 10.0, 12.0, plan)
    assert e.remaining_s(expected, 0.0, pos, None, 12.0) == pytest.approx(48.0)  # 20 % in 12 s


@pytest.fixture
def coord(tmp_path: Path) -> tuple[Coordinator, Clock]:
    clock = Clock()
    config = CoordinatorConfig(data_dir=tmp_path / "coord")
    return Coordinator(
        config, MemoryStore(), OutputFiles(tmp_path / "o", 1 << 20), clock=clock
    ), clock


def run_job(
    coord: Coordinator, clock: Clock, cpu: bool, events: list[tuple[float, p.JobEvent]]
) -> tuple[str, list[tuple[float, float | None]]]:
    """Submit, place and start one job, then every 0.25 s until 10 s feed it the `events` due
    (seconds after the start): the job and its (time, time left) as its view shows them."""
    spec = JobSpec(workflow=WORKFLOW, resources=Resources(gpus=0) if cpu else Resources())
    job, _ = coord.submit(spec)
    assert coord.schedule_once() == 1
    coord.started(p.Started(agent_id="a1", job_id=job.id, attempt=1, prompt_id="pr"))
    start, left, due = clock.now, [], list(events)
    for tick in range(1, 41 if events else 0):
        clock.now = start + tick / 4
        while due and due[0][0] <= tick / 4:
            _, event = due.pop(0)
            coord.events(p.Events(agent_id="a1", job_id=job.id, attempt=1, events=[event]))
        view = job_eta(coord, coord.jobs[job.id], coord.progress.get(job.id))
        left.append((tick / 4, (view or {}).get("remaining_s")))
    return job.id, left


def one_slow_node(t0: float) -> list[tuple[float, p.JobEvent]]:
    """A single 10 s node whose overall progress is weighted by node count, so it jumps
    0.35 -> 0.65 -> 0.99 and stalls in between (the issue's run), while its own step counter
    moves evenly."""
    return [
        (0.25, p.JobEvent(kind="executing", t=t0 + 0.25, node="1", node_type="Slow")),
        (0.5, p.JobEvent(kind="progress", t=t0 + 0.5, node="1", value=1, max=40, fraction=0.35)),
        (5.0, p.JobEvent(kind="progress", t=t0 + 5, node="1", value=19, max=40, fraction=0.65)),
        (9.5, p.JobEvent(kind="progress", t=t0 + 9.5, node="1", value=37, max=40, fraction=0.99)),
    ]


@pytest.mark.parametrize("cpu", [False, True], ids=["gpu", "cpu"])
def test_a_job_view_counts_down_from_what_the_shape_took(coord, cpu: bool) -> None:
    coord, clock = coord
    msg = register_msg("a1")
    if cpu:  # a CPU-only ComfyUI: its slot learns durations too
        msg = p.Register(
            agent_id="a1", instances=[p.InstanceInfo(instance_id="c0", gpu_index=None)]
        )
    coord.register(msg)
    profile = [p.NodeTiming(node="1", node_type="Slow", ms=10_000.0)]
    first, _ = run_job(coord, clock, cpu, [])  # the first run teaches the estimate
    clock.now += 10.5
    coord.finish(
        p.Finish(agent_id="a1", job_id=first, attempt=1, outcome="completed", profile=profile)
    )
    assert any(slot == CPU_SLOT for _, slot in coord.estimates) == cpu
    _, left = run_job(coord, clock, cpu, one_slow_node(clock.now))
    assert all(r is not None for _, r in left), left
    for (t1, r1), (t2, r2) in zip(left, left[1:], strict=False):
        assert r2 <= r1 + 1e-6, f"the time left grew from {r1} at {t1} s to {r2} at {t2} s"  # type: ignore[operator]
    assert left[-1][1] == pytest.approx(0.5, abs=0.01)  # on schedule: 10.5 s learned, 10 s in
