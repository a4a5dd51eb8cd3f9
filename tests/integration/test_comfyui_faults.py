"""A ComfyUI that answers garbage, hangs on /prompt, or never sends executing{null}: the agent
times out, reports the job with a clear reason, and stays healthy for the next job."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.fleet import Api, Fleet, sim_faults, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
ENDED = {"COMPLETED", "FAILED", "CANCELLED"}


async def one_agent(fleet: Fleet, api: Api) -> str:
    url = fleet.add_sim("a", 24576, "--step-ms", "20")
    fleet.add_agent("a", "a", "--comfyui-timeout", "2", "--cancel-wait", "3")
    await api.agents_online({"a"})
    return url


async def agent_info(api: Api, fleet: Fleet) -> dict:  # type: ignore[type-arg]
    async with api.s.get(f"{fleet.url}/v1/agents/a") as r:
        return await r.json()


async def still_serves(fleet: Fleet, api: Api, url: str) -> None:
    sim_faults(url, reset=True)
    await api.agents_online({"a"})
    job = await api.submit(txt2img(64, 64, steps=2))
    done = await api.wait(job["id"], ENDED, wait_s=30)
    assert done["status"] == "COMPLETED", done
    assert fleet.agents["a"].alive


async def test_garbage_answers_mark_the_instance_unhealthy(fleet: Fleet, api: Api) -> None:
    url = await one_agent(fleet, api)
    sim_faults(url, garbage=True)
    info = await agent_info(api, fleet)
    for _ in range(200):
        if not info["instances"][0]["healthy"]:
            break
        await asyncio.sleep(0.05)
        info = await agent_info(api, fleet)
    assert not info["instances"][0]["healthy"], info
    assert info["instances"][0]["error"], info  # the agent reports why
    assert info["status"] == "ONLINE"  # and keeps heartbeating
    job = await api.submit(txt2img(64, 64, steps=2))
    await asyncio.sleep(1.0)
    queued = await api.job(job["id"])
    assert queued["status"] == "QUEUED" and queued["pending_reason"], queued
    sim_faults(url, reset=True)
    done = await api.wait(job["id"], ENDED, wait_s=30)
    assert done["status"] == "COMPLETED", done
    await still_serves(fleet, api, url)


async def test_garbage_mid_job_fails_over_cleanly(fleet: Fleet, api: Api) -> None:
    url = fleet.add_sim("a", 24576, "--step-ms", "2000")
    fleet.add_agent("a", "a", "--comfyui-timeout", "2", "--cancel-wait", "3")
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=3))
    await api.wait(job["id"], {"RUNNING"})
    sim_faults(url, garbage=True)
    await asyncio.sleep(1.5)
    sim_faults(url, reset=True)
    done = await api.wait(job["id"], ENDED, wait_s=60)
    assert done["status"] == "COMPLETED", done
    assert await api.image_size(done["outputs"][0]) == (512, 512)
    await still_serves(fleet, api, url)


async def test_hung_prompt_post_times_out_and_requeues(fleet: Fleet, api: Api) -> None:
    url = await one_agent(fleet, api)
    sim_faults(url, hang_prompt=True)
    job = await api.submit(txt2img(64, 64, steps=2), max_retries=0)
    done = await api.wait(job["id"], ENDED, wait_s=40)
    assert done["status"] == "FAILED", done
    reasons = " | ".join(t["reason"] for t in done["history"])
    assert "POST /prompt failed" in reasons and "time" in reasons.lower(), reasons
    await still_serves(fleet, api, url)


async def test_never_finishing_prompt_times_out(fleet: Fleet, api: Api) -> None:
    url = await one_agent(fleet, api)
    sim_faults(url, hang=True)  # stops at the next node: no executing{null}, ever
    job = await api.submit(txt2img(64, 64, steps=2), max_retries=0, timeout_s=3)
    done = await api.wait(job["id"], ENDED, wait_s=60)
    assert done["status"] == "FAILED", done
    assert done["error"]["code"] == "timeout", done["error"]
    ended = done["history"][-1]
    # the agent itself gave up on the wedged prompt and reported, rather than the
    # coordinator forcing the job after its cancel grace ("agent did not confirm the cancel")
    assert ended["reason"] == "timed out after 3 s", done["history"]
    await still_serves(fleet, api, url)


async def test_agent_disk_full_while_spooling_outputs_requeues(fleet: Fleet, api: Api) -> None:
    """The agent's spool file for the output is a link to /dev/full: every write there fails
    with ENOSPC, exactly as on a full disk. The job goes back with that reason and completes on
    its next attempt; the agent keeps running."""
    fleet.add_sim("a", 24576, "--step-ms", "300")
    fleet.add_agent("a", "a")
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=8, prefix="diskfull"))
    running = await api.wait(job["id"], {"RUNNING"})
    spool = fleet.tmp / "agent-a" / "spool" / f"{job['id']}-{running['attempt']}"
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "diskfull_00001_.png").symlink_to("/dev/full")
    done = await api.wait(job["id"], ENDED, wait_s=60)
    assert done["status"] == "COMPLETED" and done["attempt"] >= 2, done
    requeues = [t["reason"] for t in done["history"] if t["event"] == "requeue"]
    # attempt 1 went back for the full disk (under heavy load another requeue may follow)
    assert any("No space left on device" in r for r in requeues), done["history"]
    assert await api.image_size(done["outputs"][0]) == (512, 512)
    assert fleet.agents["a"].alive
