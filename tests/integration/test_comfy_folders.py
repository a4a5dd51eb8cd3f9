"""The agent keeps ComfyUI's output and input folders from growing: what its jobs created goes once
the coordinator has it, what an earlier run left goes at start, and nothing else is touched."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.fleet import Api, Fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def workflow(color: int, prefix: str, load: str | None = None) -> dict[str, object]:
    image: object = ["1", 0]
    graph: dict[str, object] = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": color},
        },
    }
    if load is not None:
        graph["4"] = {"class_type": "LoadImage", "inputs": {"image": load}}
        image = ["4", 0]
    graph["2"] = {"class_type": "ImageInvert", "inputs": {"image": image}}
    graph["3"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["2", 0], "filename_prefix": prefix},
    }
    return graph


def png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


async def until(check: Callable[[], bool], wait_s: float = 10.0) -> None:
    for _ in range(int(wait_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


async def test_jobs_leave_nothing_in_comfyuis_folders_and_others_files_stay(
    fleet: Fleet, api: Api
) -> None:
    fleet.add_sim("g", 24576)
    sim_root = fleet.tmp / "sim-g"
    out_dir, in_dir = sim_root / "output", sim_root / "input"
    out_dir.mkdir(parents=True, exist_ok=True)
    in_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "someone_00001_.png").write_bytes(png(8))  # not the agent's: stays
    (in_dir / "in.png").write_bytes(png(16))  # the same name and bytes a job sends: stays
    fleet.add_agent(
        "a", "g", "--comfyui-output-dir", str(out_dir), "--comfyui-input-dir", str(in_dir)
    )
    await api.agents_online({"a"})
    before_out, before_in = files_in(out_dir), files_in(in_dir)
    jobs = [await api.submit(workflow(i, "fleet"), resources={"vram_mb": 500}) for i in range(6)]
    # the same prompt twice, one after the other: the second is not answered from ComfyUI's
    # cache with the file the first one's cleanup removed
    for _ in range(2):
        again = await api.submit(workflow(99, "again"), resources={"vram_mb": 500})
        done = await api.wait(again["id"], {"COMPLETED", "FAILED", "CANCELLED"}, 60)
        assert done["status"] == "COMPLETED", done
        await until(lambda: not any(n.startswith("again") for n in files_in(out_dir)))
        jobs.append(again)
    jobs.append(
        await api.submit(
            workflow(5, "loaded", load="in.png"),
            resources={"vram_mb": 500},
            inputs={"in.png": base64.b64encode(png(16)).decode()},
        )
    )
    for job in jobs:
        done = await api.wait(job["id"], {"COMPLETED", "FAILED", "CANCELLED"}, 60)
        assert done["status"] == "COMPLETED", done
        assert len(done["outputs"]) == 1
        assert await api.image_size(done["outputs"][0]) in ((32, 32), (16, 16))
    # the last report acknowledged: the folders are as they were
    await until(lambda: files_in(out_dir) == before_out and files_in(in_dir) == before_in)
    assert files_in(out_dir) == before_out
    assert files_in(in_dir) == before_in
    assert not list((fleet.tmp / "agent-a" / "comfy-files" / "0").glob("*.json"))


async def test_a_restarted_agent_sweeps_what_an_earlier_run_left(fleet: Fleet, api: Api) -> None:
    fleet.add_sim("g", 24576)
    out_dir = fleet.tmp / "sim-g" / "output"
    out_dir.mkdir(parents=True, exist_ok=True)
    left = out_dir / "left_00001_.png"
    left.write_bytes(png(8))
    other = out_dir / "other_00001_.png"
    other.write_bytes(png(8))
    # what an agent killed before its report was acknowledged leaves behind (SIGKILL)
    ledger = fleet.tmp / "agent-a" / "comfy-files" / "0"
    ledger.mkdir(parents=True)
    (ledger / "j-old-1.json").write_text(json.dumps({"outputs": [left.name], "inputs": []}))
    fleet.add_agent("a", "g", "--comfyui-output-dir", str(out_dir))
    await api.agents_online({"a"})
    assert not left.exists()
    assert other.exists()
    assert not (ledger / "j-old-1.json").exists()
