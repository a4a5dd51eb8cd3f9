"""A real coordinator SIGKILLed right after a placement, before any lease reply went out
(issue 12.3): after the restart the job is handed out again and completes at attempt 1, with
no retry spent, although it allows none."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import procs
from tests.helpers.protocol_agent import ProtocolAgent
from tests.integration.test_coordinator_process import FAST, get, submit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def test_a_job_placed_just_before_a_kill_is_delivered_after_the_restart(
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
            agent = ProtocolAgent(session, url, "a1")
            await agent.register()
            job = await submit(session, url, max_retries=0)
            deadline = time.monotonic() + 10
            while (await get(session, url, job["id"]))["status"] != "ASSIGNED":
                assert time.monotonic() < deadline, "the job was never placed"
                await asyncio.sleep(0.05)
            # Placed and stored; the agent never got a lease reply for it.
            coord.kill(signal.SIGKILL)
            coord = procs.coordinator(data, tmp_path, port, FAST).start()

            assert (await agent.heartbeat()).reregister
            await agent.register()  # it comes back holding nothing
            leased = (await agent.lease(3.0)).jobs
            assert [(a.job_id, a.attempt) for a in leased] == [(job["id"], 1)]
            await agent.started(leased[0])
            out = await agent.upload(leased[0], "o.png", b"after the restart")
            await agent.finish(leased[0], outputs=[out])
            done = await get(session, url, job["id"])
            assert done["status"] == "COMPLETED", done
            assert done["attempt"] == 1 and done["retries_used"] == 0
    finally:
        coord.kill()
