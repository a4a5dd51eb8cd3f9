"""Placement in a real fleet: failure blocking with recovery, model inventory, learned numbers."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fleet import Api, Fleet, running_fleet, sim_faults, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]
COOLDOWN_S = 8.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    args = [
        "--heartbeat-interval",
        "0.5",
        "--restart-grace",
        "3",
        "--block-after-failures",
        "1",
        "--block-cooldown",
        str(COOLDOWN_S),
    ]
    with running_fleet(tmp_path, args) as f:
        yield f


async def agent_json(api: Api, name: str) -> dict[str, Any]:
    async with api.s.get(f"{api.url}/v1/agents/{name}") as r:
        return await r.json()


async def until(check: Any, wait_s: float = 30.0) -> Any:
    deadline = time.monotonic() + wait_s
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def assigned(job: dict[str, Any]) -> list[tuple[float, str]]:
    return [(t["at"], t["agent_id"]) for t in job["history"] if t["to_status"] == "ASSIGNED"]


async def test_failing_host_is_routed_around_then_recovers_after_cooldown(
    fleet: Fleet, api: Api
) -> None:
    url_a = fleet.add_sim("a", 24576, "--step-ms", "5", "--oom-node-class", "KSampler")
    fleet.add_sim("b", 24576, "--step-ms", "5")
    fleet.add_agent("a", "a")
    await api.agents_online({"a"})
    first = await api.submit(txt2img(512, 512, prefix="first"))
    blocked = await until(lambda: _blocked(api, "a"))
    [(shape, blocked_until)] = blocked.items()
    assert shape == (await api.job(first["id"]))["shape_hash"]
    sim_faults(url_a, oom_node_class=None)  # the host is repaired; the block still holds
    fleet.add_agent("b", "b")
    done = await api.wait(first["id"], {"COMPLETED", "FAILED"}, wait_s=60)
    assert done["status"] == "COMPLETED" and done["agent_id"] == "b"
    assert done["error"] is None and done["retries_used"] == 1
    assert done["vram_peak_mb"] > 0 and done["profile"]
    assert {n["node_type"] for n in done["profile"]} >= {"KSampler", "SaveImage"}

    # while the pair is blocked, jobs of the same shape (other prompts, seeds) avoid agent a
    during = [await api.submit(txt2img(512, 512, prefix=f"during{i}")) for i in range(3)]
    finished = [await api.wait(j["id"], {"COMPLETED"}, wait_s=60) for j in during]
    early = [a for j in finished for a in assigned(j) if a[0] < blocked_until]
    assert early, "every job was placed after the cooldown: the machine is too slow"
    assert {agent for _, agent in early} == {"b"}

    # after the cooldown the block lifts by itself and agent a takes jobs again
    await until(lambda: _unblocked(api, "a"), wait_s=COOLDOWN_S + 20)
    after = [await api.submit(txt2img(512, 512, steps=20, prefix=f"after{i}")) for i in range(4)]
    results = [await api.wait(j["id"], {"COMPLETED", "FAILED"}, wait_s=60) for j in after]
    assert all(r["status"] == "COMPLETED" for r in results)
    assert "a" in {r["agent_id"] for r in results}


async def _blocked(api: Api, name: str) -> dict[str, float]:
    return (await agent_json(api, name)).get("blocked_workflows") or {}


async def _unblocked(api: Api, name: str) -> bool:
    return not await _blocked(api, name)


async def test_inventory_routes_by_model_and_node_class_and_refuses_the_impossible(
    fleet: Fleet, api: Api
) -> None:
    fleet.add_sim("a", 24576, "--step-ms", "5", "--models", "v1-5-pruned-emaonly.safetensors")
    fleet.add_sim("b", 24576, "--step-ms", "5", "--hide-node-class", "ImageBlur")
    fleet.add_agent("a", "a")
    fleet.add_agent("b", "b")
    await api.agents_online({"a", "b"})
    await until(lambda: _inventory_known(api, {"a", "b"}))
    sdxl = [await api.submit(txt2img(512, 512, prefix=f"x{i}")) for i in range(3)]
    for j in sdxl:  # sd_xl_base_1.0 exists only on b
        assert (await api.wait(j["id"], {"COMPLETED"}, wait_s=60))["agent_id"] == "b"
    blur = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
        },
        "2": {
            "class_type": "ImageBlur",
            "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "b"}},
    }
    await submit_cli_waits_with_time_left(fleet, api)
    jobs = [await api.submit(blur) for _ in range(3)]
    for j in jobs:  # ImageBlur is not installed on b
        assert (await api.wait(j["id"], {"COMPLETED"}, wait_s=60))["agent_id"] == "a"
    await input_files_are_uploaded_before_the_prompt(fleet, api)
    impossible = txt2img(512, 512)
    impossible["4"]["inputs"]["ckpt_name"] = "flux1-dev.safetensors"
    async with api.s.post(f"{api.url}/v1/jobs", json={"workflow": impossible}) as r:
        body = await r.json()
        assert r.status == 422, body
    assert body["error"]["field"] == "workflow"
    assert "flux1-dev.safetensors" in body["error"]["message"]


async def submit_cli_waits_with_time_left(fleet: Fleet, api: Api) -> None:
    """`comfyfleet submit --wait` on a shape that ran before shows the learned time left from
    the moment the job runs, before any progress event could give a rate."""
    path = fleet.tmp / "wf.json"
    path.write_text(json.dumps(txt2img(512, 512, steps=150, prefix="cli")))
    out_dir = fleet.tmp / "cli-out"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyfleet",
        "submit",
        str(path),
        "--coordinator",
        api.url,
        "--wait",
        "--out",
        str(out_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert [Path(p).name for p in out.decode().split()] == ["cli_00001_.png"]
    running = [line for line in err.decode().splitlines() if " RUNNING " in line]
    assert running and all("eta --:--" not in line for line in running), err.decode()


def png(width: int, height: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def input_files_are_uploaded_before_the_prompt(fleet: Fleet, api: Api) -> None:
    """LoadImage reads the job's own upload; a second file under the same name (other bytes) is
    stored by ComfyUI as `in (1).png` and the agent points the workflow at it."""
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "up"}},
    }
    ran_on = []
    for size in [(40, 30), (24, 56), (40, 30)]:
        job = await api.submit(wf, inputs={"in.png": png(*size)})
        done = await api.wait(job["id"], {"COMPLETED", "FAILED"}, wait_s=60)
        assert done["status"] == "COMPLETED", done["error"]
        assert await api.image_size(done["outputs"][0]) == size
        ran_on.append(done["agent_id"])
    if ran_on[0] == ran_on[1]:  # affinity keeps the shape on one host: the rename happened
        stored = sorted(p.name for p in (fleet.tmp / f"sim-{ran_on[0]}" / "input").iterdir())
        assert stored == ["in (1).png", "in.png"]


async def _inventory_known(api: Api, names: set[str]) -> bool:
    for name in names:
        if not (await agent_json(api, name)).get("node_classes"):
            return False
    return True
