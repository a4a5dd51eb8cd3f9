"""A real coordinator process with protocol-level test agents; SIGKILL and restart."""

from __future__ import annotations

import signal
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


async def get(session: aiohttp.ClientSession, url: str, job_id: str) -> dict:
    async with session.get(f"{url}/v1/jobs/{job_id}") as resp:
        assert resp.status == 200
        return await resp.json()


async def test_kill9_restart_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = procs.free_port()
    coord = procs.coordinator(data, tmp_path, port, FAST).start()
    url = coord.url  # type: ignore[attr-defined]
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            agent = ProtocolAgent(session, url, "a1")
            await agent.register()
            ids = [(await submit(session, url))["id"] for _ in range(6)]
            first = (await agent.lease(3.0)).jobs[0]
            await agent.started(first)
            out = await agent.upload(first, "o.png", b"one")
            await agent.finish(first, outputs=[out])
            running = (await agent.lease(3.0)).jobs[0]
            await agent.started(running, prompt_id="p-running")

            coord.kill(signal.SIGKILL)
            coord = procs.coordinator(data, tmp_path, port, FAST).start()

            statuses = {i: (await get(session, url, i))["status"] for i in ids}
            assert statuses[first.job_id] == "COMPLETED"
            assert statuses[running.job_id] == "RUNNING"  # not requeued: grace for agents
            assert sorted(statuses.values()).count("QUEUED") == 4
            # The agent comes back and reports the job it still runs.
            reply = await agent.register(
                [
                    p.RunningJob(
                        job_id=running.job_id, attempt=1, instance_id="0", prompt_id="p-running"
                    )
                ]
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
    finally:
        coord.kill()


async def test_agent_that_never_returns_after_restart_gets_its_jobs_requeued(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    port = procs.free_port()
    coord = procs.coordinator(data, tmp_path, port, FAST).start()
    url = coord.url  # type: ignore[attr-defined]
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            gone = ProtocolAgent(session, url, "gone")
            await gone.register()
            job = await submit(session, url)
            leased = (await gone.lease(3.0)).jobs[0]
            await gone.started(leased)
            coord.kill(signal.SIGKILL)
            coord = procs.coordinator(data, tmp_path, port, FAST).start()
            other = ProtocolAgent(session, url, "other")
            await other.register()
            assert (await get(session, url, job["id"]))["status"] == "RUNNING"
            second = await other.run_one(wait_s=6.0)  # after the 2 s grace + lost timeout
            assert second.job_id == job["id"] and second.attempt == 2
            with pytest.raises(ProtocolError) as info:
                await gone.started(leased)
            assert info.value.status in (404, 409)
    finally:
        coord.kill()


async def test_cancel_of_queued_and_running_jobs_over_http(tmp_path: Path) -> None:
    coord = procs.coordinator(tmp_path / "d", tmp_path, None, FAST).start()
    url = coord.url  # type: ignore[attr-defined]
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            agent = ProtocolAgent(session, url, "a1")
            await agent.register()
            run = await submit(session, url)
            leased = (await agent.lease(3.0)).jobs[0]
            await agent.started(leased)
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
    finally:
        coord.kill()


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
