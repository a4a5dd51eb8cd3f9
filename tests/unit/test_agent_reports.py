"""What the coordinator does with an agent's register and heartbeat reports (issue 12.2, 12.7,
12.8, 12.16): a job the agent no longer holds is taken back at once, but only one it must
already know of, only from the agent instance (or a host that proves itself), and a prompt
waiting in ComfyUI's queue stays ASSIGNED with its prompt id recorded."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.errors import Conflict
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.coordinator.store import MemoryStore
from comfyfleet.shared import protocol as p
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus
from tests.unit.test_write_then_memory import WORKFLOW, Clock, register_msg


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Coordinator, Clock]:
    clock = Clock()
    config = CoordinatorConfig(data_dir=tmp_path / "coord")
    coord = Coordinator(config, MemoryStore(), OutputFiles(tmp_path / "out", 1 << 20), clock=clock)
    return coord, clock


def heartbeat(
    coord: Coordinator, running: list[p.RunningJob], proven: bool = True
) -> p.HeartbeatReply:
    msg = register_msg("a1")
    beat = p.Heartbeat(
        agent_id="a1", host=msg.host, gpus=msg.gpus, instances=msg.instances, running=running
    )
    return coord.heartbeat(beat, host_proven=proven)


def beats(
    coord: Coordinator,
    clock: Clock,
    n: int,
    running: list[p.RunningJob],
    proven: bool = True,
    step_s: float = 1.0,
) -> None:
    """`n` heartbeats `step_s` apart, each followed by a sweep."""
    for _ in range(n):
        clock.now += step_s
        heartbeat(coord, running, proven)
        coord.sweep()


def register(
    coord: Coordinator, running: list[p.RunningJob], instance: str = "i-1", proven: bool = False
) -> p.RegisterReply:
    msg = msgspec.structs.replace(register_msg("a1", running), instance_id=instance)
    return coord.register(msg, host_proven=proven)


def report(job: JobRecord, prompt_id: str | None = None, started: bool = False) -> p.RunningJob:
    return p.RunningJob(
        job_id=job.id, attempt=job.attempt, instance_id="i0", prompt_id=prompt_id, started=started
    )


async def placed(coord: Coordinator, clock: Clock, max_retries: int = 2) -> JobRecord:
    """A job submitted, placed on a1 and handed out by a lease."""
    job, _ = coord.submit(JobSpec(workflow=WORKFLOW, max_retries=max_retries))
    assert coord.schedule_once() == 1
    clock.now += 0.1
    lease = await coord.lease(p.LeaseRequest(agent_id="a1", free={"i0": 1}, wait_s=0))
    assert [a.job_id for a in lease.jobs] == [job.id]
    return coord.jobs[job.id]


async def running(coord: Coordinator, clock: Clock, max_retries: int = 2) -> JobRecord:
    job = await placed(coord, clock, max_retries)
    coord.started(p.Started(agent_id="a1", job_id=job.id, attempt=1, prompt_id="pr-1"))
    return coord.jobs[job.id]


async def test_a_running_job_the_agent_no_longer_reports_is_requeued_at_once(fleet) -> None:
    coord, clock = fleet
    register(coord, [])
    job = await running(coord, clock)
    clock.now += 1
    heartbeat(coord, [report(job, "pr-1", started=True)])  # holds it
    clock.now += 1
    heartbeat(coord, [])  # its runner is gone (a finish it gave up on, a crash)
    stored = coord.store.get_job(job.id)
    assert stored is not None and stored.status == JobStatus.QUEUED
    assert stored.retries_used == 1 and stored.attempt == 1
    assert stored.history[-1].reason == "agent a1 no longer reports this job"
    assert job.id not in coord.agents["a1"].jobs


async def test_a_job_the_agent_reports_holding_is_never_requeued(fleet) -> None:
    """A finished attempt whose report waits in the agent's outbox is still reported held."""
    coord, clock = fleet
    register(coord, [])
    job = await running(coord, clock)
    beats(coord, clock, 20, [report(job, "pr-1", started=True)], step_s=5)
    assert coord.jobs[job.id].status == JobStatus.RUNNING and coord.jobs[job.id].attempt == 1


async def test_a_job_just_handed_out_is_not_taken_from_a_report_built_before_it(fleet) -> None:
    coord, clock = fleet
    register(coord, [])
    clock.now += 1
    heartbeat(coord, [])  # answered before the lease below
    job = await placed(coord, clock)  # handed out after that answer
    clock.now += 0.1
    heartbeat(coord, [])  # built before the agent read the lease reply: says nothing of it
    assert coord.jobs[job.id].status == JobStatus.ASSIGNED
    assert job.id in coord.live.delivered and not coord.agents["a1"].to_deliver
    # The next report was built after the agent read that answer: it should know the job by
    # now. It never showed it held it, so the lease reply was lost: hand it out again, free.
    clock.now += 1
    heartbeat(coord, [])
    assert coord.jobs[job.id].status == JobStatus.ASSIGNED and coord.jobs[job.id].retries_used == 0
    again = await coord.lease(p.LeaseRequest(agent_id="a1", free={"i0": 1}, wait_s=0))
    assert [(a.job_id, a.attempt) for a in again.jobs] == [(job.id, 1)]


async def test_a_heartbeat_that_proves_no_host_takes_no_job(fleet) -> None:
    """With a fleet-wide token anyone may send a1's heartbeat: omitting jobs takes none."""
    coord, clock = fleet
    register(coord, [])
    job = await running(coord, clock)
    beats(coord, clock, 3, [], proven=False)
    assert coord.jobs[job.id].status == JobStatus.RUNNING


async def test_a_queued_prompt_stays_assigned_with_its_prompt_id_until_comfyui_starts_it(
    fleet,
) -> None:
    coord, clock = fleet
    register(coord, [])
    job = await placed(coord, clock)
    clock.now += 1
    heartbeat(coord, [report(job, "pr-q")])  # ComfyUI holds it queued behind another prompt
    waiting = coord.store.get_job(job.id)
    assert waiting is not None and waiting.status == JobStatus.ASSIGNED
    assert waiting.prompt_id == "pr-q" and coord.get(job.id).prompt_id == "pr-q"
    clock.now += 1
    heartbeat(coord, [report(job, "pr-q", started=True)])
    assert coord.jobs[job.id].status == JobStatus.RUNNING


async def test_register_keeps_a_queued_prompt_assigned_after_an_agent_restart(fleet) -> None:
    coord, clock = fleet
    register(coord, [])
    job = await placed(coord, clock)
    clock.now += 1
    register(coord, [report(job, "pr-q")])  # same instance, the prompt waits in ComfyUI
    assert coord.jobs[job.id].status == JobStatus.ASSIGNED
    assert coord.jobs[job.id].prompt_id == "pr-q"
    register(coord, [report(job, "pr-q", started=True)])
    assert coord.jobs[job.id].status == JobStatus.RUNNING


async def test_a_new_instance_that_would_take_jobs_is_refused_unless_it_proves_the_host(
    fleet,
) -> None:
    coord, clock = fleet
    register(coord, [], instance="i-1")
    job = await running(coord, clock)
    clock.now += 1
    with pytest.raises(Conflict) as refused:
        register(coord, [], instance="i-2")
    assert refused.value.field == "instance_id" and refused.value.status == 409
    assert coord.jobs[job.id].status == JobStatus.RUNNING
    assert coord.agents["a1"].instance == "i-1"
    # An instance id from no agent ("", older agents) is no instance either.
    with pytest.raises(Conflict):
        register(coord, [], instance="")
    # Reporting every job it holds takes nothing: accepted.
    register(coord, [report(job, "pr-1", started=True)], instance="i-2")
    assert coord.agents["a1"].instance == "i-2" and coord.jobs[job.id].status == JobStatus.RUNNING
    # A token bound to a1 proves the host: a restarted agent lost its runners, requeued at once.
    register(coord, [], instance="i-3", proven=True)
    stored = coord.store.get_job(job.id)
    assert stored is not None and stored.status == JobStatus.QUEUED and stored.retries_used == 1
    assert stored.history[-1].reason == "agent restarted without this job"


async def test_the_same_instance_registering_again_gives_back_what_it_lost(fleet) -> None:
    coord, clock = fleet
    register(coord, [], instance="i-1")
    job = await running(coord, clock)
    clock.now += 1
    register(coord, [], instance="i-1")
    assert coord.get(job.id).status == JobStatus.QUEUED


async def test_a_new_instance_registers_once_the_old_one_is_lost(fleet) -> None:
    coord, clock = fleet
    register(coord, [], instance="i-1")
    job = await running(coord, clock)
    clock.now += coord.config.lost_after_s + 1
    coord.sweep()  # i-1 is silent: lost, its job requeued
    assert coord.get(job.id).status == JobStatus.QUEUED
    register(coord, [], instance="i-2")
    assert coord.agents["a1"].instance == "i-2"
