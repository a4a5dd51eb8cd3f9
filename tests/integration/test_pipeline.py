"""The agent's pipeline (capacity 2): the next prompt waits inside ComfyUI, honestly reported."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers.fleet import Api, Fleet, sim_stats, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def sim_queue(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/queue", timeout=5) as resp:
        return json.loads(resp.read())


async def until(check: Any, wait_s: float = 30.0) -> None:
    deadline = time.monotonic() + wait_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_queued_prompt_is_assigned_not_running_and_cancel_deletes_it(
    fleet: Fleet, api: Api
) -> None:
    url = fleet.add_sim("g", 24576, "--step-ms", "150")
    fleet.add_agent("a", "g", "--capacity", "2")
    await api.agents_online({"a"})
    first = await api.submit(
        txt2img(512, 512, steps=20, prefix="first"), resources={"vram_mb": 4000}
    )
    second = await api.submit(
        txt2img(512, 512, steps=20, prefix="second"), resources={"vram_mb": 4000}
    )
    await api.wait(first["id"], {"RUNNING"}, 30)
    # The second prompt is handed to ComfyUI while the first runs: it waits in ComfyUI's queue.
    await until(lambda: len(sim_queue(url)["queue_pending"]) == 1)
    pending = sim_queue(url)["queue_pending"][0][1]
    assert pending.startswith(f"cf-{second['id']}-"), pending
    job = await api.job(second["id"])
    assert job["status"] == "ASSIGNED", job  # RUNNING only once ComfyUI starts it
    # Cancelling it removes it from ComfyUI's queue; it never runs.
    async with api.s.post(f"{fleet.url}/v1/jobs/{second['id']}/cancel") as r:
        assert r.status in (200, 202), await r.text()
    done = await api.wait(second["id"], {"CANCELLED", "COMPLETED", "FAILED"}, 30)
    assert done["status"] == "CANCELLED", done
    assert sim_queue(url)["queue_pending"] == []
    first_done = await api.wait(first["id"], {"COMPLETED", "FAILED", "CANCELLED"}, 60)
    assert first_done["status"] == "COMPLETED", first_done
    assert sim_stats(url)["prompts_started"] == 1


async def test_pipelined_prompt_starts_without_a_gap_and_reports_running(
    fleet: Fleet, api: Api
) -> None:
    url = fleet.add_sim("g", 24576, "--step-ms", "100")
    fleet.add_agent("a", "g", "--capacity", "2")
    await api.agents_online({"a"})
    ids = [
        (
            await api.submit(
                txt2img(512, 512, steps=10, prefix=f"p{i}"), resources={"vram_mb": 4000}
            )
        )["id"]
        for i in range(3)
    ]
    jobs = [await api.wait(i, {"COMPLETED", "FAILED", "CANCELLED"}, 60) for i in ids]
    assert [j["status"] for j in jobs] == ["COMPLETED"] * 3, jobs
    for j in jobs:
        # the RUNNING time is when ComfyUI started it: after its predecessor's start
        assert j["timestamps"]["RUNNING"] >= j["timestamps"]["ASSIGNED"]
    assert jobs[1]["timestamps"]["RUNNING"] > jobs[0]["timestamps"]["RUNNING"]
    assert sim_stats(url)["prompts_succeeded"] == 3


async def test_pipeline_never_overcommits_vram(fleet: Fleet, api: Api) -> None:
    url = fleet.add_sim("g", 24576, "--step-ms", "150")
    fleet.add_agent("a", "g", "--capacity", "2")
    await api.agents_online({"a"})
    big = [
        await api.submit(
            txt2img(512, 512, steps=12, prefix=f"big{i}"), resources={"vram_mb": 16000}
        )
        for i in range(2)
    ]
    await api.wait(big[0]["id"], {"RUNNING"}, 30)
    await asyncio.sleep(0.5)
    other = await api.job(big[1]["id"])
    # Two 16 GB reservations do not fit a 24 GB GPU: the second is not queued into ComfyUI.
    assert other["status"] == "QUEUED", other
    assert sim_queue(url)["queue_pending"] == []
    for b in big:
        done = await api.wait(b["id"], {"COMPLETED", "FAILED", "CANCELLED"}, 60)
        assert done["status"] == "COMPLETED", done


async def test_waiting_in_comfyui_queue_counts_against_no_timeout(tmp_path: Path) -> None:
    """Neither the job timeout nor the coordinator's assign timeout (2 s here) fires while a
    pipelined prompt waits ~5 s in ComfyUI's queue: the agent reports it held there."""
    fleet = Fleet(
        tmp_path,
        ["--heartbeat-interval", "0.5", "--restart-grace", "3", "--assign-timeout", "2"],
    )
    fleet.start_coordinator()
    try:
        async with aiohttp.ClientSession() as s:
            api = Api(s, fleet.url)
            fleet.add_sim("g", 24576, "--step-ms", "150")
            fleet.add_agent("a", "g", "--capacity", "2")
            await api.agents_online({"a"})
            long = await api.submit(
                txt2img(512, 512, steps=40, prefix="long"), resources={"vram_mb": 4000}
            )
            await api.wait(long["id"], {"RUNNING"}, 30)
            short = await api.submit(
                txt2img(512, 512, steps=3, prefix="short"),
                resources={"vram_mb": 4000},
                timeout_s=2.5,
            )
            done = await api.wait(short["id"], {"COMPLETED", "FAILED", "CANCELLED"}, 60)
            assert done["status"] == "COMPLETED", done
            assert done["timestamps"]["RUNNING"] - done["timestamps"]["ASSIGNED"] > 2.5, done
            assert done["attempt"] == 1 and done["retries_used"] == 0, done
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        fleet.stop()
