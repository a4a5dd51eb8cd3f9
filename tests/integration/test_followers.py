"""What a follower does for clients and agents, with two coordinators on one PostgreSQL store
(real processes): it reports its role, stores submissions, turns cancels and drains into orders
the leader applies, serves outputs from the shared directory, and sends agents and leader-only
reads to the leader. Clients and the CLI given several URLs get past a dead one; a leader stopped
with SIGTERM gives its lease up."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfyfleet.client import Client
from tests.helpers.fleet import txt2img
from tests.helpers.multi import MultiFleet, running_multi_fleet
from tests.helpers.postgres import Cluster
from tests.helpers.procs import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

DONE = {"COMPLETED", "FAILED", "CANCELLED"}


@pytest.fixture
def fleet(tmp_path: Path, pg_cluster: Cluster) -> Iterator[MultiFleet]:
    schema = pg_cluster.new_schema()
    try:
        url = pg_cluster.url(search_path=schema)
        with running_multi_fleet(tmp_path, url, 2, {"a": ["--step-ms", "8000"]}) as fleet:
            yield fleet
    finally:
        pg_cluster.drop_schemas([schema])


async def call(
    s: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with s.request(method, url, allow_redirects=False, **kw) as r:
        body = await r.read()
        return r.status, json.loads(body) if body else {}, dict(r.headers)


async def wait_status(
    s: aiohttp.ClientSession, url: str, job_id: str, want: set[str], wait_s: float = 40
) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        _, job, _ = await call(s, "GET", f"{url}/v1/jobs/{job_id}")
        if job.get("status") in want:
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


async def test_a_follower_serves_clients_and_sends_agents_to_the_leader(
    fleet: MultiFleet,
) -> None:
    leader = await asyncio.to_thread(fleet.leader)
    lurl, furl = fleet.urls[leader], fleet.urls[1 - leader]
    async with aiohttp.ClientSession() as s:
        _, lh, _ = await call(s, "GET", f"{lurl}/healthz")
        _, fh, _ = await call(s, "GET", f"{furl}/healthz")
        assert (lh["role"], fh["role"]) == ("leader", "follower")
        assert lh["leader"] == fh["leader"] == lurl and lh["epoch"] >= 1 and fh["epoch"] is None

        # agents and leader-only reads are sent to the leader
        status, body, headers = await call(s, "POST", f"{furl}/agent/v1/register", json={})
        assert status == 307 and headers["Location"] == f"{lurl}/agent/v1/register"
        assert body["error"]["code"] == "not_leader" and body["error"]["leader"] == lurl
        status, _, headers = await call(s, "GET", f"{furl}/v1/agents?x=1")
        assert status == 307 and headers["Location"] == f"{lurl}/v1/agents?x=1"
        deadline = time.monotonic() + 30
        while True:  # followed, the redirect gives the leader's live view
            async with s.get(f"{furl}/v1/agents") as r:
                agents = (await r.json())["agents"]
            if [a["status"] for a in agents] == ["ONLINE"]:
                break
            assert time.monotonic() < deadline, agents
            await asyncio.sleep(0.2)

        # a submission on the follower runs; its output is served by the follower too
        status, job, _ = await call(
            s, "POST", f"{furl}/v1/jobs", json={"workflow": txt2img(64, 64, steps=2)}
        )
        assert status == 201 and job["status"] == "QUEUED"
        done = await wait_status(s, furl, job["id"], DONE)
        assert done["status"] == "COMPLETED" and done["history"][-1]["epoch"] == lh["epoch"]
        async with s.get(f"{furl}{done['outputs'][0]['url']}") as r:
            assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")

        # a cancel on the follower: 202, then the leader ends the job
        status, long_job, _ = await call(
            s, "POST", f"{furl}/v1/jobs", json={"workflow": txt2img(512, 512, steps=40)}
        )
        await wait_status(s, furl, long_job["id"], {"RUNNING"})
        status, body, _ = await call(s, "POST", f"{furl}/v1/jobs/{long_job['id']}/cancel")
        assert status == 202 and body["cancel_requested"] is True
        assert (await wait_status(s, furl, long_job["id"], DONE))["status"] == "CANCELLED"
        status, queued, _ = await call(
            s,
            "POST",
            f"{furl}/v1/jobs",
            json={"workflow": txt2img(64, 64), "resources": {"vram_mb": 40000}},
        )
        status, body, _ = await call(s, "POST", f"{furl}/v1/jobs/{queued['id']}/cancel")
        assert status == 202 and body["status"] == "QUEUED" and body["cancel_requested"]
        assert (await wait_status(s, lurl, queued["id"], DONE))["status"] == "CANCELLED"
        status, body, _ = await call(s, "POST", f"{furl}/v1/jobs/{queued['id']}/cancel")
        assert status == 409

        # a drain on the follower reaches the agent through the leader
        status, body, _ = await call(s, "POST", f"{furl}/v1/agents/a/drain")
        assert status == 202 and body["status"] == "DRAINING"
        status, _, _ = await call(s, "POST", f"{furl}/v1/agents/nobody/drain")
        assert status == 404
        deadline = time.monotonic() + 20
        while True:
            _, agent, _ = await call(s, "GET", f"{lurl}/v1/agents/a")
            if agent["status"] == "DRAINING":
                break
            assert time.monotonic() < deadline, agent
            await asyncio.sleep(0.2)


async def test_clients_get_past_a_dead_coordinator_and_sigterm_hands_the_lease_over(
    fleet: MultiFleet,
) -> None:
    leader = await asyncio.to_thread(fleet.leader)
    dead = f"http://127.0.0.1:{free_port()}"
    with Client([dead, fleet.urls[1 - leader]], timeout_s=10) as client:
        job = client.submit(txt2img(64, 64, steps=2))
        assert client.wait(job.id, timeout_s=40).status == "COMPLETED"
        assert client.url == fleet.urls[1 - leader]
    env = {**os.environ, "COMFYFLEET_COORDINATOR": f"{dead},{fleet.urls[leader]}"}
    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "comfyfleet", "jobs", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert job.id in listed.stdout

    fleet.coords[leader].kill(signal.SIGTERM)
    new = await asyncio.to_thread(fleet.leader, 30.0, leader)
    assert new == 1 - leader
    assert '"lease_released"' in fleet.coords[leader].log()
