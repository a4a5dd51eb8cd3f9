"""A real coordinator process with protocol-level test agents; SIGKILL and restart."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from comfyfleet.shared import protocol as p
from tests.helpers import procs
from tests.helpers.protocol_agent import ProtocolAgent, ProtocolError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}
FAST = ["--heartbeat-interval", "0.3", "--restart-grace", "2", "--assign-timeout", "5"]


async def submit(session: aiohttp.ClientSession, url: str, **body: object) -> dict:
    body.setdefault("workflow", WORKFLOW)
    async with session.post(f"{url}/v1/jobs", json=body) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def one_running(
    session: aiohttp.ClientSession, url: str, agent_id: str
) -> tuple[ProtocolAgent, dict, p.Assignment]:
    """A registered test agent, a submitted job, leased and started on it."""
    agent = ProtocolAgent(session, url, agent_id)
    await agent.register()
    job = await submit(session, url)
    leased = (await agent.lease(3.0)).jobs[0]
    await agent.started(leased)
    return agent, job, leased


async def get(session: aiohttp.ClientSession, url: str, job_id: str) -> dict:
    async with session.get(f"{url}/v1/jobs/{job_id}") as resp:
        assert resp.status == 200
        return await resp.json()


class Killable:
    """A real coordinator on one data directory and port, which a test SIGKILLs and restarts."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = self._start()

    def _start(self) -> procs.Proc:
        return procs.coordinator(self.tmp_path / "data", self.tmp_path, self.port, FAST).start()

    def kill_and_restart(self) -> None:
        self.proc.kill(signal.SIGKILL)
        self.proc = self._start()


@pytest.fixture
async def killable(tmp_path: Path) -> AsyncIterator[tuple[Killable, aiohttp.ClientSession]]:
    coord = Killable(tmp_path)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            yield coord, session
    finally:
        coord.proc.kill()


async def test_kill9_restart_loses_nothing_and_duplicates_nothing(
    killable: tuple[Killable, aiohttp.ClientSession],
) -> None:
    coord, session = killable
    url = coord.url
    agent = ProtocolAgent(session, url, "a1")
    await agent.register()
    ids = [(await submit(session, url))["id"] for _ in range(6)]
    first = (await agent.lease(3.0)).jobs[0]
    await agent.started(first)
    out = await agent.upload(first, "o.png", b"one")
    await agent.finish(first, outputs=[out])
    running = (await agent.lease(3.0)).jobs[0]
    await agent.started(running, prompt_id="p-running")

    coord.kill_and_restart()

    statuses = {i: (await get(session, url, i))["status"] for i in ids}
    assert statuses[first.job_id] == "COMPLETED"
    assert statuses[running.job_id] == "RUNNING"  # not requeued: grace for agents
    assert sorted(statuses.values()).count("QUEUED") == 4
    # The agent comes back and reports the job it still runs.
    reply = await agent.register(
        [p.RunningJob(job_id=running.job_id, attempt=1, instance_id="0", prompt_id="p-running")]
    )
    assert reply.drop == []
    out = await agent.upload(running, "o.png", b"two")
    await agent.finish(running, outputs=[out])
    done = {first.job_id, running.job_id}
    while len(done) < len(ids):
        job = await agent.run_one(wait_s=3.0)
        assert job.job_id not in done, "a job was handed out twice after completing"
        done.add(job.job_id)
    final = [await get(session, url, i) for i in ids]
    assert all(j["status"] == "COMPLETED" for j in final)
    assert all(j["attempt"] == 1 for j in final)
    for j in final:
        completed = [t for t in j["history"] if t["to_status"] == "COMPLETED"]
        assert len(completed) == 1


async def test_agent_that_never_returns_after_restart_gets_its_jobs_requeued(
    killable: tuple[Killable, aiohttp.ClientSession],
) -> None:
    coord, session = killable
    url = coord.url
    gone, job, leased = await one_running(session, url, "gone")
    coord.kill_and_restart()
    other = ProtocolAgent(session, url, "other")
    await other.register()
    assert (await get(session, url, job["id"]))["status"] == "RUNNING"
    second = await other.run_one(wait_s=6.0)  # after the 2 s grace + lost timeout
    assert second.job_id == job["id"] and second.attempt == 2
    with pytest.raises(ProtocolError) as info:
        await gone.started(leased)
    assert info.value.status in (404, 409)


async def test_a_job_placed_just_before_a_kill_is_delivered_after_the_restart(
    killable: tuple[Killable, aiohttp.ClientSession],
) -> None:
    """Placed and stored, then SIGKILL before any lease reply went out (issue 12.3): after the
    restart the job is handed out again and completes at attempt 1, no retry spent, although it
    allows none."""
    coord, session = killable
    agent = ProtocolAgent(session, coord.url, "a1")
    await agent.register()
    job = await submit(session, coord.url, max_retries=0)
    deadline = time.monotonic() + 10
    while (await get(session, coord.url, job["id"]))["status"] != "ASSIGNED":
        assert time.monotonic() < deadline, "the job was never placed"
        await asyncio.sleep(0.05)
    coord.kill_and_restart()
    assert (await agent.heartbeat()).reregister
    await agent.register()  # it comes back holding nothing
    leased = (await agent.lease(3.0)).jobs
    assert [(a.job_id, a.attempt) for a in leased] == [(job["id"], 1)]
    await agent.started(leased[0])
    out = await agent.upload(leased[0], "o.png", b"after the restart")
    await agent.finish(leased[0], outputs=[out])
    done = await get(session, coord.url, job["id"])
    assert done["status"] == "COMPLETED", done
    assert done["attempt"] == 1 and done["retries_used"] == 0


async def test_cancel_of_queued_and_running_jobs_over_http(
    killable: tuple[Killable, aiohttp.ClientSession],
) -> None:
    coord, session = killable
    url = coord.url
    agent, run, leased = await one_running(session, url, "a1")
    queued = await submit(session, url)
    async with session.post(f"{url}/v1/jobs/{queued['id']}/cancel") as resp:
        assert resp.status == 200
    async with session.post(f"{url}/v1/jobs/{run['id']}/cancel") as resp:
        assert resp.status == 202
    reply = await agent.lease(3.0, free={"0": 0})
    assert [c.job_id for c in reply.cancel] == [run["id"]]
    await agent.finish(leased, outcome="cancelled")
    assert (await get(session, url, run["id"]))["status"] == "CANCELLED"
    assert (await get(session, url, queued["id"]))["status"] == "CANCELLED"


def test_bad_arguments_give_a_message_not_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "comfyfleet", "coordinator", "--listen", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "HOST:PORT" in out.stderr and "Traceback" not in out.stderr
