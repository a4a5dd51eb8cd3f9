"""What only the simulator is asked of the recorded ComfyUI 0.3.64 sessions: a CPU-only device
reported as ComfyUI reports it, and a warm job as quick as ComfyUI's. The recordings that a fleet
replays too (tests/helpers/replay.py) run against the simulator in test_comfy_replay.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.recording import shape
from comfyfleet.sim.server import create_app
from comfyfleet.sim.testing import SimSocket
from tests.helpers.replay import CLIENT
from tests.helpers.replay_target import load, post


async def test_cpu_device_reports_like_recorded(aiohttp_client: Any, tmp_path: Path) -> None:
    rec = load("10_misc.json")["system_stats"]["json"]
    config = SimConfig.for_data_dir(tmp_path, device="cpu")
    client = await aiohttp_client(create_app(config, exit_fn=lambda code: None))
    stats = await (await client.get("/api/system_stats")).json()
    assert shape(stats) == shape(rec)
    device = stats["devices"][0]
    assert (device["name"], device["type"], device["index"]) == ("cpu", "cpu", None)


async def test_warm_job_is_fast(aiohttp_client: Any, tmp_path: Path) -> None:
    """11_timing_512: a warm 512x512 EmptyImage -> SaveImage job took 13-21 ms in ComfyUI."""
    timing = load("11_timing_512.json")
    client = await aiohttp_client(create_app(SimConfig.for_data_dir(tmp_path)))
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    normal = load("01_normal.json")["post"]["request_json"]
    loop = asyncio.get_running_loop()
    for color in (1, 2):
        body = json.loads(json.dumps(normal))
        body["prompt"]["1"]["inputs"]["color"] = color
        start = loop.time()
        _, answer = await post(client, body)
        await sock.wait_done(answer["prompt_id"])
        elapsed = loop.time() - start
    assert elapsed < 0.5 and max(t["ws_done_s"] for t in timing) < 0.5
