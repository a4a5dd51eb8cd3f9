"""The simulator's HTTP/WebSocket server in-process: sampler runs, VRAM, routes, caching."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.recording import event_types
from comfyfleet.sim.server import create_app
from comfyfleet.sim.testing import SimSocket

MB = 1024 * 1024


@pytest.fixture
def config(tmp_path: Path) -> SimConfig:
    return SimConfig.for_data_dir(
        tmp_path, vram_mb=12288, step_ms=4, node_ms=0.5, load_ms_per_gb=5, seed=3
    )


@pytest.fixture
async def client(aiohttp_client: Any, config: SimConfig) -> Any:
    return await aiohttp_client(create_app(config, exit_fn=lambda code: None))


def txt2img(steps: int = 6, width: int = 512, height: int = 512, batch: int = 1,
            ckpt: str = "v1-5-pruned-emaonly.safetensors", prefix: str = "t2i",
            seed: int = 1) -> dict[str, Any]:  # fmt: skip
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": width, "height": height, "batch_size": batch}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }  # fmt: skip


def invert(color: int = 1, prefix: str = "inv") -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }  # fmt: skip


async def submit(client: Any, prompt: dict[str, Any], client_id: str | None = "c", **extra: Any
                 ) -> str:  # fmt: skip
    body: dict[str, Any] = {"prompt": prompt, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    resp = await client.post("/prompt", json=body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["prompt_id"]


async def connect(client: Any, client_id: str = "c") -> SimSocket:
    sock = await SimSocket.connect(client, client_id)
    await sock.read()
    return sock


async def test_txt2img_progress_previews_and_real_png(client: Any, config: SimConfig) -> None:
    sock = await connect(client)
    pid = await submit(client, txt2img(steps=6, width=512, height=384))
    frames = await sock.wait_done(pid)
    types = event_types(frames)
    progress = [f["msg"]["data"] for f in frames if f["msg"].get("type") == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [
        (i, 6, "3") for i in range(1, 7)
    ]
    previews = [f["msg"] for f in frames if f["kind"] == "binary"]
    assert len(previews) == 3  # preview_every=2
    assert all(p["binary_event"] == 1 and p["image_type"] == 1 for p in previews)  # JPEG
    assert all(p["image_magic"].startswith("ffd8") for p in previews)
    for i, kind in enumerate(types):
        if kind == "binary:1":  # legacy order: progress_state, progress, preview
            assert types[i - 2 : i] == ["progress_state", "progress"]
    assert types[-3:] == ["execution_success", "status", "executing"]
    with Image.open(config.output_dir / "t2i_00001_.png") as img:
        assert img.size == (512, 384) and img.format == "PNG"
        assert "prompt" in img.info  # ComfyUI embeds the prompt


async def test_feature_flag_client_gets_type_4_sampler_previews(client: Any) -> None:
    sock = await SimSocket.connect(client, "ff")
    await sock.ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    await sock.read()
    flags = await sock.read()
    assert flags is not None and flags["msg"] == {
        "type": "feature_flags",
        "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
    }
    pid = await submit(client, txt2img(steps=2), client_id="ff")
    frames = await sock.wait_done(pid)
    previews = [f["msg"] for f in frames if f["kind"] == "binary"]
    assert [p["binary_event"] for p in previews] == [4]
    assert previews[0]["metadata"]["image_type"] == "image/jpeg"
    assert previews[0]["metadata"]["prompt_id"] == pid


async def test_vram_in_system_stats_while_running_and_models_stay(client: Any) -> None:
    sock = await connect(client)
    stats = await (await client.get("/system_stats")).json()
    device = stats["devices"][0]
    assert device["name"] == "cuda:0 NVIDIA GeForce RTX 4090 (simulated) : cudaMallocAsync"
    assert device["vram_total"] == device["vram_free"] == 12288 * MB
    pid = await submit(client, txt2img(steps=40, width=1024, height=1024))
    await sock.read_until(lambda f: f["msg"].get("type") == "progress")
    running = (await (await client.get("/system_stats")).json())["devices"][0]
    assert running["vram_free"] == (12288 - 2048 - 4 * 768) * MB  # model + sampler working set
    await client.post("/interrupt", json={"prompt_id": pid})
    await sock.wait_done(pid)
    after = await (await client.get("/sim/stats")).json()
    assert after["loaded_models"] == ["v1-5-pruned-emaonly.safetensors"]
    assert after["vram_used_mb"] == 2048 and after["vram_peak_mb"] == 2048 + 4 * 768
    free = await client.post("/free", json={"unload_models": True})
    assert free.status == 200
    assert (await (await client.get("/sim/stats")).json())["vram_used_mb"] == 0


async def test_interrupt_is_seen_at_a_sampler_step(client: Any) -> None:
    sock = await connect(client)
    pid = await submit(client, txt2img(steps=500))
    await sock.read_until(lambda f: f["msg"].get("type") == "progress")
    resp = await client.post("/api/interrupt")
    assert resp.status == 200
    frames = await sock.wait_done(pid)
    assert event_types(frames)[-3:] == ["execution_interrupted", "status", "executing"]
    interrupted = frames[-3]["msg"]["data"]
    assert interrupted["node_id"] == "3" and interrupted["node_type"] == "KSampler"
    assert sorted(interrupted["executed"]) == ["4", "5", "6", "7"]
    stats = await (await client.get("/sim/stats")).json()
    assert stats["prompts_interrupted"] == 1 and stats["interrupt_requests"] == 1


async def test_cache_is_kept_for_the_latest_prompt_only(client: Any, config: SimConfig) -> None:
    sock = await connect(client)

    async def cached_nodes(prompt: dict[str, Any]) -> list[str]:
        pid = await submit(client, prompt)
        frames = await sock.wait_done(pid)
        return next(f["msg"]["data"]["nodes"] for f in frames
                    if f["msg"].get("type") == "execution_cached")  # fmt: skip

    assert await cached_nodes(invert(1)) == []
    assert await cached_nodes(invert(1)) == ["1", "2", "3"]
    assert await cached_nodes(invert(2)) == []
    assert await cached_nodes(invert(1)) == []  # ComfyUI's classic cache kept only prompt 3
    assert await cached_nodes(invert(1, prefix="other")) == ["1", "2"]
    names = sorted(p.name for p in config.output_dir.iterdir())
    assert names == ["inv_00001_.png", "inv_00002_.png", "inv_00003_.png", "other_00001_.png"]


async def test_queue_front_clear_and_numbers(client: Any) -> None:
    sock = await connect(client)
    blocker = await submit(client, txt2img(steps=300))
    await sock.read_until(lambda f: f["msg"].get("type") == "progress")
    late = await submit(client, invert(5, "late"))
    early = await submit(client, invert(6, "early"), front=True)
    queue = await (await client.get("/api/queue")).json()
    assert [item[1] for item in queue["queue_running"]] == [blocker]
    assert [item[1] for item in queue["queue_pending"]] == [early, late]
    assert queue["queue_pending"][0][0] == -2
    await client.post("/queue", json={"clear": True})
    assert (await (await client.get("/queue")).json())["queue_pending"] == []
    assert await (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 1}}
    await client.post("/interrupt")
    await sock.wait_done(blocker)
    assert await (await client.get(f"/history/{late}")).json() == {}


async def test_history_listing_and_clear(client: Any) -> None:
    sock = await connect(client)
    pids = []
    for color in (1, 2, 3):
        pids.append(await submit(client, invert(color)))
        await sock.wait_done(pids[-1])
    assert list(await (await client.get("/history")).json()) == pids
    assert list(await (await client.get("/history?max_items=2")).json()) == pids[1:]
    assert (await client.get("/history?max_items=x")).status == 400
    await client.post("/history", json={"clear": True})
    assert await (await client.get("/api/history")).json() == {}


async def test_bad_bodies_and_view_guards(client: Any, config: SimConfig) -> None:
    resp = await client.post("/prompt", data=b"{not json")
    assert resp.status == 500
    resp = await client.post("/api/prompt", json=["a", "list"])
    assert resp.status == 500
    (config.output_dir / "a.png").write_bytes(b"x")
    assert (await client.get("/view?filename=a.png")).status == 200
    assert (await client.get("/view?filename=../a.png")).status == 400
    assert (await client.get("/view?filename=a.png&type=secret")).status == 400
    assert (await client.get("/view?filename=a.png&subfolder=../..")).status == 403
    assert (await client.get("/view?filename=b.png")).status == 404
    assert (await client.get("/view")).status == 404
    form = aiohttp.FormData()
    form.add_field("image", b"x", filename="x.png", content_type="image/png")
    form.add_field("subfolder", "../../etc")
    assert (await client.post("/upload/image", data=form)).status == 400


async def test_models_listing_and_object_info(client: Any, config: SimConfig) -> None:
    assert "checkpoints" in await (await client.get("/models")).json()
    names = await (await client.get("/api/models/checkpoints")).json()
    assert names == [m.name for m in config.models]
    assert (await client.get("/models/nope")).status == 404
    info = await (await client.get("/object_info/KSampler")).json()
    assert info["KSampler"]["input"]["required"]["seed"][1]["max"] == 0xFFFFFFFFFFFFFFFF
    assert await (await client.get("/object_info/Nope")).json() == {}


async def test_events_go_only_to_the_prompts_client(client: Any) -> None:
    mine = await connect(client, "mine")
    other = await connect(client, "other")
    pid = await submit(client, invert(9), client_id="mine")
    await mine.wait_done(pid)
    await asyncio.sleep(0.05)
    while not await other.silent_for(0.1):
        pass
    assert set(event_types(other.frames)) == {"status"}
