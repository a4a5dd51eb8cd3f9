"""Fault knobs of the ComfyUI simulator (POST /sim/faults, config) and GET /sim/stats."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.sim.config import FaultSettings, SimConfig
from comfyfleet.sim.recording import event_types
from comfyfleet.sim.server import create_app
from comfyfleet.sim.testing import SimSocket


def make_config(tmp_path: Path, **kwargs: Any) -> SimConfig:
    base: dict[str, Any] = {"step_ms": 4, "node_ms": 0.5, "load_ms_per_gb": 5, "seed": 7}
    return SimConfig.for_data_dir(tmp_path, **{**base, **kwargs})


@pytest.fixture
def exits() -> list[int]:
    return []


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path, exits: list[int]) -> Any:
    return await aiohttp_client(create_app(make_config(tmp_path), exit_fn=exits.append))


def txt2img(steps: int = 4, size: int = 512, batch: int = 1,
            ckpt: str = "v1-5-pruned-emaonly.safetensors") -> dict[str, Any]:  # fmt: skip
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": size, "height": size, "batch_size": batch}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 5, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "karras",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "f"}},
    }  # fmt: skip


async def set_faults(client: Any, **knobs: Any) -> dict[str, Any]:
    resp = await client.post("/sim/faults", json=knobs)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def run(client: Any, sock: SimSocket, prompt: dict[str, Any]) -> tuple[str, list[Any]]:
    resp = await client.post("/prompt", json={"prompt": prompt, "client_id": "c"})
    assert resp.status == 200
    pid = (await resp.json())["prompt_id"]
    return pid, await sock.wait_done(pid)


async def connect(client: Any) -> SimSocket:
    sock = await SimSocket.connect(client, "c")
    await sock.read()
    return sock


def error_of(frames: list[Any]) -> dict[str, Any]:
    assert event_types(frames)[-3:] == ["execution_error", "status", "executing"]
    return frames[-3]["msg"]["data"]


async def stats(client: Any) -> dict[str, Any]:
    return await (await client.get("/sim/stats")).json()


async def test_fail_class_type(client: Any) -> None:
    sock = await connect(client)
    await set_faults(client, fail_class_type="VAEDecode")
    pid, frames = await run(client, sock, txt2img())
    error = error_of(frames)
    assert (error["node_id"], error["node_type"], error["exception_type"]) == (
        "8", "VAEDecode", "RuntimeError",
    )  # fmt: skip
    assert sorted(error["executed"]) == ["3", "4", "5", "6"]
    assert error["current_inputs"]["samples"][0].startswith("{'samples': tensor(")
    history = (await (await client.get(f"/history/{pid}")).json())[pid]
    assert history["status"]["status_str"] == "error"
    assert history["status"]["messages"][-1][0] == "execution_error"
    assert (await stats(client))["injected_failures"] == 1


async def test_oom_node_class_looks_like_torch(client: Any) -> None:
    sock = await connect(client)
    await set_faults(client, oom_node_class="KSampler")
    _, frames = await run(client, sock, txt2img())
    error = error_of(frames)
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["exception_message"].startswith("Allocation on device")
    assert "ran out of memory on your GPU" in error["exception_message"]
    after = await stats(client)
    assert after["oom_errors"] == 1 and after["vram_used_mb"] == 0  # OOM unloads every model


async def test_oom_when_a_model_is_larger_than_the_gpu(aiohttp_client: Any, tmp_path: Path) -> None:
    config = make_config(tmp_path, vram_mb=4096)
    client = await aiohttp_client(create_app(config, exit_fn=lambda code: None))
    sock = await connect(client)
    _, frames = await run(client, sock, txt2img(ckpt="sd_xl_base_1.0.safetensors"))
    error = error_of(frames)
    assert (error["node_type"], error["exception_type"]) == (
        "CheckpointLoaderSimple", "torch.OutOfMemoryError",
    )  # fmt: skip
    _, frames = await run(client, sock, txt2img(size=1024, batch=2))  # 2048 + 2 * 4 * 768 MB
    assert error_of(frames)["node_type"] == "KSampler"
    _, frames = await run(client, sock, txt2img(size=512))
    assert event_types(frames)[-3] == "execution_success"


async def test_oom_probability(client: Any) -> None:
    sock = await connect(client)
    await set_faults(client, oom_probability=1.0)
    _, frames = await run(client, sock, txt2img())
    assert error_of(frames)["node_type"] == "CheckpointLoaderSimple"  # first VRAM-using node


async def test_hang_stops_the_worker_until_cleared(client: Any) -> None:
    sock = await connect(client)
    await set_faults(client, hang=True)
    resp = await client.post("/prompt", json={"prompt": txt2img(), "client_id": "c"})
    pid = (await resp.json())["prompt_id"]
    await sock.wait_executing("4")
    assert await sock.silent_for(0.3)
    queue = await (await client.get("/queue")).json()
    assert [item[1] for item in queue["queue_running"]] == [pid]
    hung = await stats(client)
    assert hung["hung"] is True and hung["hangs"] == 1
    await client.post("/interrupt")  # a hung server does not even see this
    assert await sock.silent_for(0.1)
    await set_faults(client, hang=False, reset=True)
    frames = await sock.wait_done(pid)
    assert event_types(frames)[-3:] == ["execution_interrupted", "status", "executing"]


async def test_hang_from_start_up_settings(aiohttp_client: Any, tmp_path: Path) -> None:
    config = make_config(tmp_path, faults=FaultSettings(hang=True))
    client = await aiohttp_client(create_app(config, exit_fn=lambda code: None))
    sock = await connect(client)
    await client.post("/prompt", json={"prompt": txt2img(), "client_id": "c"})
    await sock.wait_executing("4")
    assert await sock.silent_for(0.2)
    assert (await (await client.get("/sim/faults")).json())["hang"] is True


async def test_drop_ws_mid_run(client: Any) -> None:
    sock = await connect(client)
    await set_faults(client, drop_ws_after_s=0.05)
    resp = await client.post("/prompt", json={"prompt": txt2img(steps=100), "client_id": "c"})
    pid = (await resp.json())["prompt_id"]
    while await sock.read(5) is not None:
        pass
    assert sock.ws.closed
    assert not any(
        f["msg"].get("type") == "executing" and f["msg"]["data"].get("node") is None
        for f in sock.frames
    )
    for _ in range(200):  # the prompt itself goes on; history tells how it ended
        history = await (await client.get(f"/history/{pid}")).json()
        if history:
            break
        await asyncio.sleep(0.02)
    assert history[pid]["status"]["status_str"] == "success"
    assert (await stats(client))["ws_dropped"] == 1


async def test_crash_on_prompt(client: Any, exits: list[int]) -> None:
    sock = await connect(client)
    await set_faults(client, crash_on_prompt=2)
    await run(client, sock, txt2img(steps=1))
    resp = await client.post("/prompt", json={"prompt": txt2img(steps=2), "client_id": "c"})
    await sock.wait_executing("3")  # loader, encoder and latent are cached from prompt 1
    for _ in range(100):
        if exits:
            break
        await asyncio.sleep(0.01)
    assert exits == [1]
    after = await stats(client)
    assert (after["crashes"], after["dead"], after["prompts_executed"]) == (1, True, 1)
    assert resp.status == 200 and await sock.silent_for(0.1)


async def test_crash_after_seconds(client: Any, exits: list[int]) -> None:
    sock = await connect(client)
    await set_faults(client, crash_after_s=0.05)
    await client.post("/prompt", json={"prompt": txt2img(steps=200), "client_id": "c"})
    await sock.wait_executing("3")
    for _ in range(200):
        if exits:
            break
        await asyncio.sleep(0.01)
    assert exits == [1]
    assert (await stats(client))["dead"] is True


async def test_faults_endpoint_validation_and_reset(client: Any) -> None:
    resp = await client.post("/sim/faults", json={"no_such_knob": 1})
    assert resp.status == 400 and "no_such_knob" in (await resp.json())["error"]
    assert (await client.post("/sim/faults", data=b"{bad")).status == 400
    body = await set_faults(client, fail_class_type="SaveImage", oom_probability=0.25)
    assert (body["fail_class_type"], body["oom_probability"]) == ("SaveImage", 0.25)
    assert (await (await client.get("/api/sim/faults")).json()) == body
    body = await set_faults(client, reset=True)
    assert body["fail_class_type"] is None and body["oom_probability"] == 0.0


async def test_stats_counters(client: Any) -> None:
    sock = await connect(client)
    before = await stats(client)
    assert before["prompts_executed"] == 0 and before["vram_total_mb"] == 24576
    await run(client, sock, txt2img())
    bad = await client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope"}}})
    assert bad.status == 400
    await client.post("/interrupt")
    after = await stats(client)
    assert after["prompts_submitted"] == 1 and after["prompts_rejected"] == 1
    assert after["prompts_succeeded"] == 1 and after["prompts_executed"] == 1
    assert after["nodes_executed"] == 6 and after["files_saved"] == 1
    assert after["interrupt_requests"] == 1 and after["ws_clients"] == 1
    assert after["loaded_models"] == ["v1-5-pruned-emaonly.safetensors"]
    assert after["vram_used_mb"] == 2048 and after["running_prompt_id"] is None
