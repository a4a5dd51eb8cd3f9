"""A coordinator restarted on the store another one left (issue 12.3, 12.10): an ASSIGNED job
whose lease reply may never have been sent is handed out again, without a retry; the files of
attempts that ended are swept."""

from __future__ import annotations

from pathlib import Path

import msgspec

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.coordinator.store import open_store
from comfyfleet.shared import protocol as p
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobEvent, JobStatus
from tests.unit.test_write_then_memory import WORKFLOW, Clock, register_msg


def coordinator(tmp_path: Path, clock: Clock) -> Coordinator:
    """A coordinator on the data directory in `tmp_path` (what a restart finds there)."""
    config = CoordinatorConfig(data_dir=tmp_path / "coord")
    outputs = OutputFiles(config.outputs_dir, 1 << 20)
    return Coordinator(config, open_store(config.data_dir), outputs, clock=clock)


def restarted(tmp_path: Path, clock: Clock, down_s: float) -> Coordinator:
    clock.now += down_s
    coord = coordinator(tmp_path, clock)
    coord.recover()
    return coord


async def lease(coord: Coordinator) -> list[tuple[str, int]]:
    reply = await coord.lease(p.LeaseRequest(agent_id="a1", free={"i0": 1}, wait_s=0))
    return [(a.job_id, a.attempt) for a in reply.jobs]


def placed_then_killed(tmp_path: Path, clock: Clock) -> JobRecord:
    """A job placed on a1 by a coordinator that died before any lease reply went out."""
    first = coordinator(tmp_path, clock)
    first.register(register_msg("a1"))
    job, _ = first.submit(JobSpec(workflow=WORKFLOW, max_retries=0))
    assert first.schedule_once() == 1
    first.store.close()
    return first.jobs[job.id]


async def test_an_assigned_job_whose_lease_reply_was_never_sent_is_delivered_after_a_restart(
    tmp_path: Path,
) -> None:
    clock = Clock()
    job = placed_then_killed(tmp_path, clock)
    coord = restarted(tmp_path, clock, down_s=60.0)  # longer than the assign timeout
    coord.register(register_msg("a1"))  # the agent comes back holding nothing
    clock.now += 1
    coord.sweep()
    assert await lease(coord) == [(job.id, 1)]
    coord.started(p.Started(agent_id="a1", job_id=job.id, attempt=1, prompt_id="pr"))
    now = coord.get(job.id)
    assert now.status == JobStatus.RUNNING and now.attempt == 1 and now.retries_used == 0


async def test_an_assigned_job_the_agent_holds_is_not_handed_out_twice(tmp_path: Path) -> None:
    clock = Clock()
    job = placed_then_killed(tmp_path, clock)
    coord = restarted(tmp_path, clock, down_s=5.0)
    held = p.RunningJob(job_id=job.id, attempt=1, instance_id="i0", prompt_id="pr")
    coord.register(register_msg("a1", [held]))
    assert await lease(coord) == []
    assert coord.get(job.id).status == JobStatus.ASSIGNED


def test_the_assign_timeout_after_a_restart_counts_from_the_restart(tmp_path: Path) -> None:
    clock = Clock()
    job = placed_then_killed(tmp_path, clock)
    coord = restarted(tmp_path, clock, down_s=60.0)
    coord.register(register_msg("a1"))
    beat = p.Heartbeat(agent_id="a1", instances=register_msg("a1").instances)
    for _ in range(int(coord.config.assign_timeout_s) - 1):
        clock.now += 1
        coord.heartbeat(beat, host_proven=True)
        coord.sweep()
    assert coord.get(job.id).status == JobStatus.ASSIGNED
    clock.now += 2  # never leased: the agent does not take work; released as before
    coord.sweep()
    assert coord.get(job.id).status == JobStatus.FAILED


def write_attempt(tmp_path: Path, job_id: str, attempt: int) -> Path:
    config = CoordinatorConfig(data_dir=tmp_path / "coord")
    folder = OutputFiles(config.outputs_dir, 1 << 20).attempt_dir(job_id, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "out.png").write_bytes(b"png")
    return folder


def test_files_of_attempts_that_ended_are_swept_at_start(tmp_path: Path) -> None:
    clock = Clock()
    first = coordinator(tmp_path, clock)
    first.register(register_msg("a1"))
    jobs = [first.submit(JobSpec(workflow=WORKFLOW))[0] for _ in range(3)]
    first.agents["a1"].instances = [
        msgspec.structs.replace(first.agents["a1"].instances[0], capacity=3)
    ]
    assert first.schedule_once() == 3
    failed, cancelled, running = (first.jobs[j.id] for j in jobs)
    # The store says FAILED / CANCELLED, then the coordinator died before removing the files.
    for job, event in ((failed, JobEvent.FAIL), (cancelled, JobEvent.CANCEL)):
        assert first.store.update_job(moves.advance(job, event, clock.now, "x"), job.status, 1)
    ended = [write_attempt(tmp_path, failed.id, 1), write_attempt(tmp_path, cancelled.id, 1)]
    stale = write_attempt(tmp_path, running.id, 7)  # an attempt that is not the current one
    current = write_attempt(tmp_path, running.id, 1)
    first.store.close()

    coord = restarted(tmp_path, clock, down_s=1.0)
    assert [f.exists() for f in ended] == [False, False]
    assert not ended[0].parent.exists()
    assert not stale.exists()
    assert (current / "out.png").read_bytes() == b"png"
    assert coord.get(running.id).status == JobStatus.ASSIGNED
