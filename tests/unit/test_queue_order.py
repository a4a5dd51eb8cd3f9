"""The coordinator keeps its queue in plan order between plans instead of sorting every queued
job for every plan: after any sequence of job moves (queued, placed, requeued with a new
priority, finished), `Live.queue_in_order()` is exactly the queued requests sorted afresh; and
equal signatures of queued jobs are one shared object."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.events import EventBus
from comfyfleet.coordinator.feed import Feed
from comfyfleet.coordinator.metrics import Metrics
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.scheduler.plan import job_order
from comfyfleet.coordinator.state import Live
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus

pytestmark = pytest.mark.timeout(120)

WORKFLOWS = [
    {"1": {"class_type": "EmptyImage", "inputs": {}}},
    {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}}},
]


def live() -> Live:
    feed = Feed(EventBus(), Metrics())
    return Live(CoordinatorConfig(data_dir=Path("unused")), feed, lambda: 1000.0)


def record(job_id: str, status: JobStatus, priority: int, created: float, wf: int) -> JobRecord:
    return JobRecord(
        id=job_id,
        spec=JobSpec(workflow=WORKFLOWS[wf], priority=priority),
        workflow_hash="h",
        created_at=created,
        status=status,
        agent_id="a" if status in (JobStatus.ASSIGNED, JobStatus.RUNNING) else None,
    )


moves = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from([f"j{n}" for n in range(12)]),
            st.sampled_from([JobStatus.QUEUED, JobStatus.ASSIGNED, JobStatus.COMPLETED]),
            st.integers(-2, 2),
            st.floats(0, 10),
            st.integers(0, 1),
        ),
        st.just("plan"),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(moves)
def test_queue_in_order_is_the_queue_sorted(script: list[object]) -> None:
    state = live()
    for move in script:
        if move == "plan":
            assert state.queue_in_order() == sorted(state.queued.values(), key=job_order)
            continue
        assert isinstance(move, tuple)
        job_id, status, priority, created, wf = move
        old = state.jobs.get(job_id)
        new = record(job_id, status, priority, created, wf)
        if old is not None:
            new = dataclasses.replace(new, created_at=old.created_at)  # submission stays
        state.index(old, new)
    assert state.queue_in_order() == sorted(state.queued.values(), key=job_order)
    assert len(state.queue_in_order()) == len(state.queued)


def test_equal_signatures_of_queued_jobs_are_shared() -> None:
    state = live()
    for n in range(4):
        state.index(None, record(f"j{n}", JobStatus.QUEUED, 0, float(n), n % 2))
    sigs = [state.queued[f"j{n}"].signature for n in range(4)]
    assert sigs[0] is sigs[2] and sigs[1] is sigs[3] and sigs[0] != sigs[1]


def test_a_request_put_back_behind_its_back_is_in_order_again() -> None:
    """A failed report batch puts memory's tables back entry by entry (ledger_batch.py): a
    request can return to `queued` after the order dropped it."""
    state = live()
    for n in range(3):
        state.index(None, record(f"j{n}", JobStatus.QUEUED, 0, float(n), 0))
    state.queue_in_order()
    request = state.queued.pop("j1")
    assert [r.job_id for r in state.queue_in_order()] == ["j0", "j2"]
    state.queued["j1"] = request  # as Pending.undo does
    assert [r.job_id for r in state.queue_in_order()] == ["j0", "j1", "j2"]
