"""Comfy API v2 over a real fleet (coordinator, agents, simulated ComfyUIs as processes).

- Comfy's own Python SDK, `comfy-sdk`, unchanged, pointed at the facade with COMFY_BASE_URL:
  it runs a workflow and follows its events, uploads an asset (and finds it again by hash),
  runs a workflow that names it, downloads the outputs, lists and rehydrates jobs, and cancels.
- 24 clients at once through /api/v2 (the v2 form of the /prompt + /ws test): each follows only
  its own job's events and gets exactly its own image, at its own size.
"""

from __future__ import annotations

import asyncio
import io
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from comfy_sdk import AsyncComfy, Comfy
from comfy_sdk.events import OutputReady, Preview, Progress, StatusChange
from PIL import Image

from tests.helpers import procs
from tests.helpers.fleet import running_fleet, txt2img
from tests.integration.test_comfy_fleet import SIZES, ComfyFleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def comfy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ComfyFleet]:
    port = procs.free_port()
    args = ["--heartbeat-interval", "0.5", "--restart-grace", "5", "--comfy-listen",
            f"127.0.0.1:{port}"]  # fmt: skip
    with running_fleet(tmp_path, args) as fleet:
        monkeypatch.setenv("COMFY_BASE_URL", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("COMFY_API_KEY", raising=False)
        yield ComfyFleet(fleet, port)


def png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def ready(comfy: ComfyFleet, gpus: int) -> None:
    async def wait() -> None:
        async with aiohttp.ClientSession() as session:
            await comfy.ready(session, gpus)

    asyncio.run(wait())


def one_gpu(comfy: ComfyFleet, step_ms: int) -> None:
    asyncio.run(comfy.gpus("a", step_ms=step_ms))


def save_node(workflow: dict[str, Any]) -> str:
    return next(k for k, v in workflow.items() if v["class_type"] == "SaveImage")


def test_comfy_sdk_runs_follows_uploads_downloads_and_cancels(comfy: ComfyFleet) -> None:
    one_gpu(comfy, step_ms=20)
    with Comfy() as client:
        # a workflow, followed live
        graph = txt2img(640, 384, steps=8, prefix="sdk", seed=5)
        job = client.submit(client.workflows.from_json(graph), metadata={"suite": "v2"})
        seen: list[Any] = []
        for event in job.events():
            seen.append(event)
        assert isinstance(seen[-1], StatusChange) and seen[-1].status == "succeeded", seen
        progress = [e for e in seen if isinstance(e, Progress)]
        assert progress and progress[-1].value == 1.0
        assert any(p.step is not None and p.steps == 8 for p in progress), progress
        assert any(isinstance(e, Preview) and e.data for e in seen)
        ready_outputs = [e.output for e in seen if isinstance(e, OutputReady)]
        assert [o.name for o in ready_outputs] and ready_outputs[0].name.startswith("sdk")
        job.result()
        (output,) = job.get_outputs(save_node(graph))
        assert output.job_id == job.id and output.type == "image"
        assert Image.open(io.BytesIO(output.to_bytes())).size == (640, 384)
        assert output.to_bytes(range=(0, 7)) == output.to_bytes()[:8]
        again = client.jobs.get(job.id)
        assert again.status == "succeeded" and again.metadata == {"suite": "v2"}
        assert again.get_workflow().format == "api"
        assert [s.id for s in client.list_jobs(metadata={"suite": "v2"})] == [job.id]

        # an asset: uploaded once, found again by its hash, used by a workflow
        data = png((96, 80), (200, 10, 10))
        asset = client.assets.from_bytes(data, filename="red.png")
        asset_id = asset.commit()
        assert asset.created_new is True
        twin = client.assets.from_bytes(data, filename="red.png")
        assert twin.commit() == asset_id and twin.created_new is False  # HEAD, then from-hash
        invert = {
            "1": {"class_type": "LoadImage", "inputs": {"image": twin}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0],
                                                        "filename_prefix": "inv"}},
        }  # fmt: skip
        done = client.run(client.workflows.from_json(invert))
        (inverted,) = done.get_outputs("3")
        with Image.open(io.BytesIO(inverted.to_bytes())) as img:
            assert img.size == (96, 80)
        assert client.assets.get(asset_id).file_path == "red.png"
        asset.delete()
        with pytest.raises(Exception, match="(?i)not.found|unknown"):
            client.assets.get(asset_id)

        # cancel a long job while it runs
        slow = client.submit(client.workflows.from_json(txt2img(512, 512, steps=400, seed=9)))
        for event in slow.events():
            if isinstance(event, Progress) and event.step:
                break
        slow.cancel()
        assert slow.status in ("canceling", "canceled")
        assert slow.wait(timeout=60).status == "canceled"


async def one_v2_client(url: str, n: int, size: tuple[int, int]) -> dict[str, Any]:
    async with AsyncComfy() as client:
        graph = txt2img(size[0], size[1], steps=3, prefix=f"v{n}", seed=n)
        job = await client.submit(client.workflows.from_json(graph))
        events = [event async for event in job.events()]
        await job.result()
        (output,) = job.get_outputs(save_node(graph))
        data = await output.to_bytes()
        return {"id": job.id, "size": size, "prefix": f"v{n}", "events": events, "data": data}


async def test_24_v2_clients_each_get_their_own_events_and_image(comfy: ComfyFleet) -> None:
    await comfy.gpus("a", "b")
    rng = random.Random(24)
    results = await asyncio.gather(
        *(one_v2_client(comfy.url, n, rng.choice(SIZES)) for n in range(24))
    )
    assert len({r["id"] for r in results}) == 24
    for result in results:
        events = result["events"]
        statuses = [e.status for e in events if isinstance(e, StatusChange)]
        assert statuses[-1] == "succeeded" and statuses.count("succeeded") == 1, statuses
        outputs = [e.output for e in events if isinstance(e, OutputReady)]
        assert len(outputs) == 1, events  # exactly its own output, nothing of another job
        assert outputs[0].job_id == result["id"] and outputs[0].name.startswith(result["prefix"])
        assert Image.open(io.BytesIO(result["data"])).size == result["size"]


def test_assets_and_jobs_survive_a_coordinator_sigkill(comfy: ComfyFleet) -> None:
    one_gpu(comfy, step_ms=5)
    data = png((40, 30), (1, 2, 3))
    with Comfy() as client:
        asset = client.assets.from_bytes(data, filename="keep.png")
        asset_id = asset.commit()
        job = client.run(client.workflows.from_json(txt2img(320, 256, steps=2, seed=1)))
    comfy.fleet.coord.kill(signal.SIGKILL)
    comfy.fleet.start_coordinator()
    ready(comfy, gpus=1)
    with Comfy() as client:
        kept = client.assets.get(asset_id)
        assert kept.hash == asset.hash and kept.file_path == "keep.png"
        twin = client.assets.from_bytes(data, filename="keep.png")
        assert twin.commit() == asset_id  # found by its hash after the restart
        again = client.jobs.get(job.id)
        assert again.status == "succeeded"
        (output,) = again.outputs
        assert Image.open(io.BytesIO(output.to_bytes())).size == (320, 256)
