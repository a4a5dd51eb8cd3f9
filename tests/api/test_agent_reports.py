"""The agent's report of a finished attempt, end to end in one process: the coordinator app, a
simulated ComfyUI, and the agent's own JobRunner / Agent speaking HTTP to both.

- Output names ComfyUI writes (a leading `_` or `-`, parentheses, non-ASCII, subfolders)
  complete, and the original name is kept for the outputs list and the download.
- A report the coordinator refuses hands the attempt back at once.
- A coordinator answering 503 + Retry-After to the finish report does not lose the result.
- A report kept in the outbox by an agent that died is sent by the next one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from comfyfleet.agent.comfyui.client import ComfyUIClient
from comfyfleet.agent.config import AgentConfig
from comfyfleet.agent.coordinator_client import CoordinatorClient
from comfyfleet.agent.daemon import Agent
from comfyfleet.agent.outbox import REPORT_FILE
from comfyfleet.agent.probe import ResourceProbe
from comfyfleet.agent.runner import JobRunner
from comfyfleet.agent.state import StateFile
from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.server import create_app as create_sim
from tests.api.conftest import Harness, MakeHarness
from tests.helpers.fleet import txt2img
from tests.helpers.outage_proxy import create_app as create_proxy

pytestmark = pytest.mark.timeout(90)


async def sim_url(aiohttp_client: Any, tmp_path: Path) -> str:
    sim = await aiohttp_client(
        create_sim(
            SimConfig.for_data_dir(
                tmp_path / "sim", step_ms=4, node_ms=0.5, load_ms_per_gb=5, seed=1
            )
        )
    )
    return str(sim.make_url("/"))


def agent_config(coordinator: str, comfyui: str, tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        coordinator_url=coordinator,
        comfyui_urls=(comfyui,),
        agent_id="a1",
        data_dir=tmp_path / "agent",
        stall_s=1.0,
        gpu_source="comfyui",
    )


async def leased_runner(
    h: Harness, session: aiohttp.ClientSession, config: AgentConfig, **body: Any
) -> tuple[dict[str, Any], JobRunner]:
    """Submit a job, lease it as agent a1 and make the runner that will run it."""
    agent = h.agent("a1")
    await agent.register()
    job = await h.submit(**body)
    assignment = (await agent.lease(3.0)).jobs[0]
    runner = JobRunner(
        assignment,
        ComfyUIClient(session, config.comfyui_urls[0]),
        "cid-1",
        CoordinatorClient(session, config.coordinator_url, "a1", 10.0),
        StateFile(config.state_file),
        config,
        chunk_size=1 << 20,
    )
    return job, runner


@pytest.mark.parametrize(
    ("prefix", "original"),
    [
        ("_draft", "_draft_00001_.png"),
        ("-x", "-x_00001_.png"),
        ("(v2)", "(v2)_00001_.png"),
        ("猫", "猫_00001_.png"),
        ("sub/(v2) 猫", "sub/(v2) 猫_00001_.png"),
    ],
)
async def test_any_name_comfyui_writes_completes_and_downloads_as_written(
    harness: MakeHarness, aiohttp_client: Any, tmp_path: Path, prefix: str, original: str
) -> None:
    h = await harness()
    config = agent_config(
        str(h.client.make_url("/")), await sim_url(aiohttp_client, tmp_path), tmp_path
    )
    async with aiohttp.ClientSession() as session:
        job, runner = await leased_runner(
            h, session, config, workflow=txt2img(64, 64, steps=2, prefix=prefix), max_retries=0
        )
        await runner.run()
    done = await h.job(job["id"])
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done
    [out] = done["outputs"]
    assert out["original"] == original
    assert "/" not in out["name"] and not out["name"].startswith(".")
    resp = await h.client.get(out["url"])
    assert resp.status == 200
    data = await resp.read()
    assert hashlib.sha256(data).hexdigest() == out["sha256"] and len(data) == out["size"]
    base = original.rsplit("/", 1)[-1]
    assert f"filename*=UTF-8''{quote(base, safe='')}" in resp.headers["Content-Disposition"]
    assert not list((tmp_path / "agent" / "spool").iterdir())  # acknowledged: spool emptied


async def behind_proxy(
    harness: MakeHarness, aiohttp_client: Any, tmp_path: Path
) -> tuple[Harness, Any, AgentConfig]:
    """A coordinator, the outage proxy in front of it, and an agent config that goes through
    the proxy. No heartbeats are sent here, so the agent must not be declared lost."""
    h = await harness(lost_grace_s=60.0)
    proxy = await aiohttp_client(create_proxy(str(h.client.make_url("/")).rstrip("/")))
    comfyui = await sim_url(aiohttp_client, tmp_path)
    return h, proxy, agent_config(str(proxy.make_url("/")), comfyui, tmp_path)


async def test_refused_upload_gives_the_job_back(
    harness: MakeHarness, aiohttp_client: Any, tmp_path: Path
) -> None:
    """A report the coordinator refuses (4xx, not stale: here outputs over 100 bytes) hands
    the attempt back at once; the job must not sit RUNNING until its timeout."""
    h = await harness(max_output_bytes=100)
    comfyui = await sim_url(aiohttp_client, tmp_path)
    config = agent_config(str(h.client.make_url("/")), comfyui, tmp_path)
    async with aiohttp.ClientSession() as session:
        job, runner = await leased_runner(
            h, session, config, workflow=txt2img(64, 64, steps=2, prefix="big"), max_retries=0
        )
        await runner.run()
    done = await h.job(job["id"])
    assert done["status"] == "FAILED", done  # max_retries=0: the give-back ends it now
    assert done["error"]["code"] == "report_refused", done["error"]
    assert "size" in done["error"]["message"], done["error"]
    assert h.coord.jobs.get(job["id"]) is None
    assert not list((tmp_path / "agent" / "spool").iterdir())


async def test_finish_answered_503_with_retry_after_is_sent_again_not_dropped(
    harness: MakeHarness, aiohttp_client: Any, tmp_path: Path
) -> None:
    h, proxy, config = await behind_proxy(harness, aiohttp_client, tmp_path)
    async with aiohttp.ClientSession() as session:
        job, runner = await leased_runner(
            h, session, config, workflow=txt2img(64, 64, steps=2), max_retries=0
        )
        await proxy.post("/__outage", params={"seconds": "3", "retry_after": "1", "only": "finish"})
        await runner.run()
    outage = await (await proxy.get("/__outage")).json()
    assert outage["served_503"].get("finish", 0) >= 2, outage  # it kept asking, 1 s apart
    done = await h.job(job["id"])
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done
    assert len(done["outputs"]) == 1


async def test_a_kept_report_is_sent_by_the_next_agent_run(
    harness: MakeHarness, aiohttp_client: Any, tmp_path: Path
) -> None:
    h, proxy, config = await behind_proxy(harness, aiohttp_client, tmp_path)
    async with aiohttp.ClientSession() as session:
        job, runner = await leased_runner(
            h, session, config, workflow=txt2img(64, 64, steps=2), max_retries=0
        )
        await proxy.post("/__outage", params={"seconds": "600", "only": "finish,jobs"})
        task = asyncio.create_task(runner.run())
        spool = tmp_path / "agent" / "spool"
        while True:  # until the attempt is over and its report kept
            if list(spool.glob(f"*/{REPORT_FILE}")):
                break
            await asyncio.sleep(0.05)
        task.cancel()  # the agent dies before the coordinator has heard
        await asyncio.gather(task, return_exceptions=True)
    assert (await h.job(job["id"]))["status"] == "RUNNING"
    await proxy.post("/__outage", params={"seconds": "0"})
    async with aiohttp.ClientSession() as session:
        agent = Agent(config, session, ResourceProbe("comfyui"))
        agent.state.load()
        agent.load_outbox()
        await agent.check_instances()
        await agent.register()  # reports the kept attempt as its own, then sends it
        await asyncio.gather(*agent.tasks)
    done = await h.job(job["id"])
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done
    assert len(done["outputs"]) == 1
    assert not list(spool.iterdir())


async def test_an_agent_dying_before_its_report_is_kept_reattaches_and_sends_it(
    harness: MakeHarness, aiohttp_client: Any, tmp_path: Path
) -> None:
    """A report the coordinator has not acknowledged is kept only after `report_keep_s`; an
    agent that dies before that leaves the prompt in its state file, so the next run
    re-attaches to it (ComfyUI's /history) and sends the same outcome: nothing runs twice."""
    h, proxy, config = await behind_proxy(harness, aiohttp_client, tmp_path)
    config = dataclasses.replace(config, report_keep_s=600.0)
    data = tmp_path / "agent"
    async with aiohttp.ClientSession() as session:
        job, runner = await leased_runner(
            h, session, config, workflow=txt2img(64, 64, steps=2), max_retries=0
        )
        await proxy.post("/__outage", params={"seconds": "600", "only": "finish,jobs"})
        task = asyncio.create_task(runner.run())
        while runner.delivery is None:  # noqa: ASYNC110 (the prompt is over, its report on the way)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert not list((data / "spool").glob(f"*/{REPORT_FILE}"))  # not kept (yet)
        crashed = tmp_path / "crashed"
        shutil.copytree(data, crashed)  # the disk as a SIGKILL now would leave it
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    shutil.rmtree(data)
    crashed.rename(data)
    assert (await h.job(job["id"]))["status"] == "RUNNING"
    await proxy.post("/__outage", params={"seconds": "0"})
    async with aiohttp.ClientSession() as session:
        agent = Agent(config, session, ResourceProbe("comfyui"))
        assert [j.job_id for j in agent.state.load()] == [job["id"]]
        agent.load_outbox()
        await agent.check_instances()
        await agent.register()  # re-attaches to the finished prompt, then reports it
        await asyncio.gather(*agent.tasks)
        async with session.get(f"{config.comfyui_urls[0].rstrip('/')}/sim/stats") as r:
            stats = await r.json()
    assert stats["prompts_submitted"] == 1
    done = await h.job(job["id"])
    assert done["status"] == "COMPLETED" and done["attempt"] == 1, done
    assert len(done["outputs"]) == 1
