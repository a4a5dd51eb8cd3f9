"""Runners are keyed by (job id, attempt): attempt 2 of a job leased to the agent that still
holds attempt 1 runs, and attempt 1 is dropped (issue: a retry on the same agent was skipped)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfyfleet.agent import daemon
from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.probe import ResourceProbe
from comfyfleet.agent.state import HeldJob, StateFile
from comfyfleet.shared import protocol as p

pytestmark = pytest.mark.timeout(30)


class FakeRunner:
    """Stands in for JobRunner: runs until told, records why it was stopped."""

    def __init__(self, job: p.Assignment, client: Any, client_id: str, *args: Any, **kw: Any):
        self.job = job
        self.client_id = client_id
        self.stops: list[str] = []
        self.release = asyncio.Event()

    def stop(self, reason: str) -> None:
        self.stops.append(reason)

    async def run(self) -> None:
        await self.release.wait()


class FakeCoordinator:
    """Answers the agent's lease polls with `replies`, then waits (and says it got there)."""

    def __init__(self, replies: list[p.LeaseReply]) -> None:
        self.replies = replies
        self.exhausted = asyncio.Event()

    async def lease(self, free: dict[str, int], wait_s: float) -> p.LeaseReply:
        if self.replies:
            return self.replies.pop(0)
        self.exhausted.set()  # every reply before this one was handled in full
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def assignment(attempt: int) -> p.Assignment:
    return p.Assignment(job_id="j1", attempt=attempt, instance_id="0", workflow={}, timeout_s=2)


async def test_a_second_attempt_on_the_same_agent_runs_and_the_first_is_dropped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made: list[FakeRunner] = []

    def make(*args: Any, **kw: Any) -> FakeRunner:
        made.append(FakeRunner(*args, **kw))
        return made[-1]

    monkeypatch.setattr(daemon, "JobRunner", make)
    config = AgentConfig(
        coordinator_url="http://127.0.0.1:9",
        comfyui_urls=("http://127.0.0.1:9",),
        agent_id="a1",
        data_dir=tmp_path,
        capacity=3,  # a slot stays free, so the agent polls again after attempt 2
        gpu_source="comfyui",
    )
    async with aiohttp.ClientSession() as session:
        agent = daemon.Agent(config, session, ResourceProbe("comfyui"))
        agent.instances["0"].healthy = True
        agent.registered.set()
        fake = FakeCoordinator(
            [p.LeaseReply(jobs=[assignment(1)]), p.LeaseReply(jobs=[assignment(2)])]
        )
        agent.coord = fake  # type: ignore[assignment]
        loop = asyncio.create_task(agent.lease_loop())
        await fake.exhausted.wait()
        assert [r.job.attempt for r in made] == [1, 2]  # attempt 2 was not skipped
        assert made[0].stops == ["drop"] and made[1].stops == []
        # the stale attempt ending does not take the new one out of the map
        made[0].release.set()
        [first] = [t for t in agent.tasks if t.get_name() == "job:j1:1"]
        await first
        assert list(agent.runners) == [("j1", 2)]
        # orders are for one attempt: a cancel of attempt 1 leaves attempt 2 alone
        agent.apply_orders([p.JobRef(job_id="j1", attempt=1)])
        assert made[1].stops == []
        agent.apply_orders([p.JobRef(job_id="j1", attempt=2)])
        assert made[1].stops == ["cancel"]
        loop.cancel()
        made[1].release.set()
        await asyncio.gather(loop, *agent.tasks, return_exceptions=True)


def test_state_file_keeps_each_attempt_apart(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    state.put(HeldJob("j1", 1, "0", "p1", 60.0, 0.0))
    state.put(HeldJob("j1", 2, "0", "p2", 60.0, 0.0))
    state.remove("j1", 1)  # the stale attempt's runner ends after attempt 2 began
    again = StateFile(tmp_path / "state.json")
    assert [(j.job_id, j.attempt, j.prompt_id) for j in again.load()] == [("j1", 2, "p2")]
