"""An agent whose report the coordinator refuses (4xx, not stale) hands the attempt back at once.

Real pieces in one process: the coordinator app, a simulated ComfyUI, and the agent's JobRunner
speaking HTTP to both. The coordinator accepts outputs of at most 100 bytes, so the upload of the
simulator's PNG is refused with 400; the job must not sit RUNNING until its timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfyfleet.agent.comfyui.client import ComfyUIClient
from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.coordinator_client import CoordinatorClient
from comfyfleet.agent.runner import JobRunner
from comfyfleet.agent.state import StateFile
from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.server import create_app as create_sim
from tests.api.conftest import MakeHarness
from tests.helpers.fleet import txt2img

pytestmark = pytest.mark.timeout(60)


async def test_refused_upload_gives_the_job_back(
    harness: MakeHarness, aiohttp_client: Any, tmp_path: Path
) -> None:
    h = await harness(max_output_bytes=100)
    sim = await aiohttp_client(
        create_sim(
            SimConfig.for_data_dir(
                tmp_path / "sim", step_ms=4, node_ms=0.5, load_ms_per_gb=5, seed=1
            )
        )
    )
    agent = h.agent("a1")
    await agent.register()
    job = await h.submit(workflow=txt2img(64, 64, steps=2, prefix="big"), max_retries=0)
    assignment = (await agent.lease(3.0)).jobs[0]
    config = AgentConfig(
        coordinator_url=str(h.client.make_url("/")),
        comfyui_urls=(str(sim.make_url("/")),),
        agent_id="a1",
        data_dir=tmp_path / "agent",
        stall_s=1.0,
    )
    async with aiohttp.ClientSession() as session:
        runner = JobRunner(
            assignment,
            ComfyUIClient(session, config.comfyui_urls[0]),
            "cid-1",
            CoordinatorClient(session, config.coordinator_url, "a1", 10.0),
            StateFile(config.state_file),
            config,
            chunk_size=1 << 20,
        )
        await runner.run()
    done = await h.job(job["id"])
    assert done["status"] == "FAILED", done  # max_retries=0: the give-back ends it now
    assert done["error"]["code"] == "report_refused", done["error"]
    assert "size" in done["error"]["message"], done["error"]
    assert h.coord.jobs.get(job["id"]) is None
