"""A store write the medium refuses leaves the coordinator's memory as it was (DESIGN.md §8).

Every change is: pure move, guarded store write, then memory. Here the store raises
StoreUnavailable on its writes during cancel, schedule_once and register; the in-memory indexes
(jobs, queued, delivered, agents and what they hold) must be exactly as before, and still match
the store. Once the store works again, the same call goes through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.errors import StoreUnavailable
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.coordinator.store import MemoryStore
from comfyfleet.shared import protocol as p
from comfyfleet.shared.jobspec import Constraints, JobSpec
from comfyfleet.shared.status import JobStatus

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}
WRITES = ("update_job", "update_jobs", "save_agent", "insert_job")


class RefusingStore:
    """A MemoryStore whose writes named in `refusing` raise StoreUnavailable."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.refusing: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in WRITES:

            def write(*args: Any, **kw: Any) -> Any:
                if name in self.refusing:
                    raise StoreUnavailable("disk full")
                return attr(*args, **kw)

            return write
        return attr


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def register_msg(agent_id: str, running: list[p.RunningJob] | None = None) -> p.Register:
    return p.Register(
        agent_id=agent_id,
        version="test",
        host=p.HostInfo(ram_total_mb=64000, ram_available_mb=64000, cpu_count=8),
        gpus=[p.GpuInfo(index=0, name="RTX", vram_total_mb=24000, vram_free_mb=24000)],
        instances=[p.InstanceInfo(instance_id="i0", gpu_index=0, capacity=1)],
        running=running or [],
    )


def snapshot(coord: Coordinator) -> dict[str, Any]:
    """Everything the in-memory indexes hold that a write could change."""
    return {
        "jobs": {
            j.id: (j.status, j.attempt, j.agent_id, j.desired, j.pending_reason, j.prompt_id)
            for j in coord.jobs.values()
        },
        "queued": sorted(coord.queued),
        "delivered": sorted(coord.live.delivered),
        "cancel_sent": dict(coord.live.cancel_sent),
        "unexplained": sorted(coord.live.unexplained),
        "agents": {
            a.agent_id: (
                a.status,
                a.registered_at,
                a.last_seen,
                sorted(a.jobs),
                list(a.to_deliver),
                sorted(a.to_cancel),
                len(a.gpus),
            )
            for a in coord.agents.values()
        },
    }


def assert_matches_store(coord: Coordinator, store: RefusingStore) -> None:
    for job in coord.jobs.values():
        stored = store.inner.get_job(job.id)
        assert stored is not None
        assert (stored.status, stored.attempt, stored.agent_id, stored.desired) == (
            job.status,
            job.attempt,
            job.agent_id,
            job.desired,
        )
    active = {j.id for j in store.inner.non_terminal_jobs()}
    assert active == set(coord.jobs)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Coordinator, RefusingStore, Clock]:
    config = CoordinatorConfig(data_dir=tmp_path / "coord")
    store = RefusingStore()
    clock = Clock()
    outputs = OutputFiles(tmp_path / "outputs", 1 << 20)
    coord = Coordinator(config, store, outputs, clock=clock)  # type: ignore[arg-type]
    return coord, store, clock


def refused(
    coord: Coordinator, store: RefusingStore, call: Any, writes: tuple[str, ...] = WRITES
) -> None:
    before = snapshot(coord)
    store.refusing = writes
    with pytest.raises(StoreUnavailable):
        call()
    store.refusing = ()
    assert snapshot(coord) == before
    assert_matches_store(coord, store)


def test_register_of_a_new_agent_refused_by_the_store_adds_no_agent(setup: Any) -> None:
    coord, store, clock = setup
    refused(coord, store, lambda: coord.register(register_msg("a1")))
    assert coord.agents == {}
    coord.register(register_msg("a1"))
    assert [r.agent_id for r in store.inner.load_agents()] == ["a1"]
    assert list(coord.agents) == ["a1"]


def test_register_reporting_a_job_refused_by_the_store_changes_nothing(setup: Any) -> None:
    coord, store, clock = setup
    coord.register(register_msg("a1"))
    job, _ = coord.submit(JobSpec(workflow=WORKFLOW))
    assert coord.schedule_once() == 1
    assert coord.jobs[job.id].status == JobStatus.ASSIGNED
    clock.now += 5
    running = [
        p.RunningJob(job_id=job.id, attempt=1, instance_id="i0", prompt_id="pr-1", started=True)
    ]
    again = register_msg("a1", running)
    # Only the job's START refused (the agent record is saved): memory keeps neither change.
    refused(coord, store, lambda: coord.register(again), ("update_job", "update_jobs"))
    # Every write refused: nothing either.
    refused(coord, store, lambda: coord.register(again))
    coord.register(again)
    assert coord.jobs[job.id].status == JobStatus.RUNNING
    assert job.id in coord.live.delivered
    assert_matches_store(coord, store)


def test_cancel_refused_by_the_store_keeps_the_job_ready_to_deliver(setup: Any) -> None:
    coord, store, clock = setup
    coord.register(register_msg("a1"))
    job, _ = coord.submit(JobSpec(workflow=WORKFLOW))
    assert coord.schedule_once() == 1
    assert list(coord.agents["a1"].to_deliver) == [job.id]
    refused(coord, store, lambda: coord.cancel(job.id))
    assert list(coord.agents["a1"].to_deliver) == [job.id]
    assert coord.cancel(job.id).status == JobStatus.CANCELLED
    assert coord.jobs == {} and not coord.agents["a1"].jobs
    assert_matches_store(coord, store)


def test_cancel_of_a_running_job_refused_by_the_store_sends_no_cancel(setup: Any) -> None:
    coord, store, clock = setup
    coord.register(register_msg("a1"))
    job, _ = coord.submit(JobSpec(workflow=WORKFLOW))
    coord.schedule_once()
    coord.started(p.Started(agent_id="a1", job_id=job.id, attempt=1, prompt_id="pr"))
    refused(coord, store, lambda: coord.cancel(job.id))
    assert coord.live.cancel_sent == {} and not coord.agents["a1"].to_cancel
    assert coord.cancel(job.id).desired == "cancel"
    assert list(coord.agents["a1"].to_cancel) == [job.id]


def test_schedule_once_refused_by_the_store_places_and_explains_nothing(setup: Any) -> None:
    coord, store, clock = setup
    coord.register(register_msg("a1"))
    fits, _ = coord.submit(JobSpec(workflow=WORKFLOW))
    nowhere, _ = coord.submit(
        JobSpec(workflow=WORKFLOW, constraints=Constraints(labels={"zone": "mars"}))
    )
    refused(coord, store, coord.schedule_once)
    assert coord.jobs[nowhere.id].pending_reason is None
    assert sorted(coord.live.unexplained) == sorted([fits.id, nowhere.id])
    assert coord.schedule_once() == 1
    assert coord.jobs[fits.id].status == JobStatus.ASSIGNED
    assert coord.jobs[nowhere.id].pending_reason
    assert list(coord.agents["a1"].to_deliver) == [fits.id]
    assert_matches_store(coord, store)
