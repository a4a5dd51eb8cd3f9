"""The ComfyUI facade over a real fleet: many clients at once, and the coordinator killed.

- 24 clients, each with its own clientId, post random-size txt2img prompts at once over two
  GPUs: each sees exactly its own prompt's events (the strict form of comfyui-node's SmartPool
  test) and gets exactly its own image, at its own size, from /view.
- The coordinator is SIGKILLed while a prompt runs: after the restart /history answers for a
  prompt that ended before the kill and for the one that was running, and the client, which
  reconnects its WebSocket, gets that prompt's end.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.helpers import procs
from tests.helpers.fleet import Fleet, running_fleet, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SIZES = [(512, 512), (768, 512), (512, 768), (640, 384), (384, 640), (576, 576), (448, 320)]


class ComfyFleet:
    def __init__(self, fleet: Fleet, port: int) -> None:
        self.fleet = fleet
        self.url = f"http://127.0.0.1:{port}"

    async def ready(self, session: aiohttp.ClientSession, gpus: int, wait_s: float = 40) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                async with session.get(f"{self.url}/system_stats") as r:
                    stats = await r.json()
                async with session.get(f"{self.url}/object_info/KSampler") as r:
                    info = await r.json()
                if len(stats["devices"]) >= gpus and info:
                    return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, self.fleet.logs()
            await asyncio.sleep(0.2)

    async def gpus(self, *names: str, step_ms: int = 5) -> None:
        """A simulated ComfyUI and its agent per name, described to the facade."""
        for name in names:
            self.fleet.add_sim(name, 24576, "--step-ms", str(step_ms))
            self.fleet.add_agent(name, name)
        async with aiohttp.ClientSession() as session:
            await self.ready(session, gpus=len(names))


@pytest.fixture
def comfy(tmp_path: Path) -> Iterator[ComfyFleet]:
    port = procs.free_port()
    args = ["--heartbeat-interval", "0.5", "--restart-grace", "5", "--comfy-listen",
            f"127.0.0.1:{port}"]  # fmt: skip
    with running_fleet(tmp_path, args) as fleet:
        yield ComfyFleet(fleet, port)


async def one_client(
    session: aiohttp.ClientSession, url: str, n: int, size: tuple[int, int]
) -> dict[str, Any]:
    client_id = f"client-{n}"
    ws = await session.ws_connect(f"{url}/ws?clientId={client_id}")
    frames: list[Any] = []
    greeting = await ws.receive_json()
    assert greeting["data"]["sid"] == client_id
    workflow = txt2img(size[0], size[1], steps=3, prefix=f"c{n}", seed=n)
    async with session.post(
        f"{url}/prompt", json={"prompt": workflow, "client_id": client_id}
    ) as r:
        body = await r.json()
        assert r.status == 200, body
    pid = body["prompt_id"]
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(("binary", msg.data))
            continue
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        frames.append(("text", frame))
        if frame["type"] == "executing" and frame["data"].get("node") is None:
            assert frame["data"]["prompt_id"] == pid
            break
    await ws.close()
    return {"pid": pid, "size": size, "frames": frames, "prefix": f"c{n}"}


async def test_24_clients_each_get_their_own_events_and_image(comfy: ComfyFleet) -> None:
    await comfy.gpus("a", "b")
    rng = random.Random(24)
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(
            *(one_client(session, comfy.url, n, rng.choice(SIZES)) for n in range(24))
        )
        pids = {r["pid"] for r in results}
        assert len(pids) == 24
        for result in results:
            texts = [f for kind, f in result["frames"] if kind == "text"]
            types = [f["type"] for f in texts]
            assert types.count("execution_start") == 1 and types.count("execution_success") == 1
            assert types.index("execution_start") < types.index("execution_success")
            for frame in texts:  # nothing of any other prompt
                if "prompt_id" in frame["data"]:
                    assert frame["data"]["prompt_id"] == result["pid"], frame
            executed = [f for f in texts if f["type"] == "executed"]
            images = [img for f in executed for img in f["data"]["output"].get("images", [])]
            assert len(images) == 1, executed
            assert images[0]["filename"].startswith(result["prefix"])
            async with session.get(f"{comfy.url}/view", params=images[0]) as r:
                assert r.status == 200
                data = await r.read()
            assert Image.open(io.BytesIO(data)).size == result["size"]
            async with session.get(f"{comfy.url}/history/{result['pid']}") as r:
                entry = (await r.json())[result["pid"]]
            assert entry["status"]["status_str"] == "success"
            assert entry["outputs"] == {executed[0]["data"]["node"]: {"images": images}}
        async with session.get(f"{comfy.url}/history?max_items=5") as r:
            assert len(await r.json()) == 5
        async with session.get(f"{comfy.url}/prompt") as r:
            assert await r.json() == {"exec_info": {"queue_remaining": 0}}


async def next_text(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next text frame (previews skipped)."""
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type == aiohttp.WSMsgType.TEXT:
            frame: dict[str, Any] = json.loads(msg.data)
            return frame
        assert msg.type == aiohttp.WSMsgType.BINARY, msg


async def test_coordinator_sigkill_mid_run_keeps_history_and_the_end(comfy: ComfyFleet) -> None:
    comfy.fleet.add_sim("s", 24576, "--step-ms", "60")
    comfy.fleet.add_agent("s", "s")
    async with aiohttp.ClientSession() as session:
        await comfy.ready(session, gpus=1)
        url = comfy.url
        before = txt2img(384, 384, steps=2, prefix="before", seed=1)
        async with session.post(f"{url}/prompt", json={"prompt": before, "client_id": "k"}) as r:
            done_pid = (await r.json())["prompt_id"]
        ws = await session.ws_connect(f"{url}/ws?clientId=k")
        await ws.receive_json()
        slow = txt2img(512, 512, steps=60, prefix="slow", seed=2)
        async with session.post(f"{url}/prompt", json={"prompt": slow, "client_id": "k"}) as r:
            pid = (await r.json())["prompt_id"]
        while True:  # the slow prompt is sampling
            frame = await next_text(ws)
            if frame["type"] == "progress" and frame["data"].get("prompt_id") == pid:
                break
        async with session.get(f"{url}/history/{done_pid}") as r:
            assert done_pid in await r.json()

        comfy.fleet.coord.kill(signal.SIGKILL)
        await ws.close()
        comfy.fleet.start_coordinator()

        deadline = time.monotonic() + 60
        while True:  # the client reconnects, as ComfyUI clients do
            try:
                ws = await session.ws_connect(f"{url}/ws?clientId=k")
                break
            except aiohttp.ClientError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        greeting = await ws.receive_json()
        assert greeting["type"] == "status" and greeting["data"]["sid"] == "k"
        seen = []
        while True:
            frame = await next_text(ws)
            seen.append(frame["type"])
            if frame["type"] == "executing" and frame["data"].get("node") is None:
                assert frame["data"]["prompt_id"] == pid
                break
        assert "execution_success" in seen, seen
        async with session.get(f"{url}/history/{done_pid}") as r:
            assert (await r.json())[done_pid]["status"]["status_str"] == "success"
        async with session.get(f"{url}/history/{pid}") as r:
            entry = (await r.json())[pid]
        assert entry["status"]["status_str"] == "success"
        image = next(iter(entry["outputs"].values()))["images"][0]
        async with session.get(f"{url}/view", params=image) as r:
            assert r.status == 200
            assert Image.open(io.BytesIO(await r.read())).size == (512, 512)
        await ws.close()


async def test_a_retry_on_another_gpu_looks_like_one_run(comfy: ComfyFleet) -> None:
    """The first GPU runs out of memory in the sampler; the prompt is retried on another one.
    The client sees one run: one execution_start, no execution_error, then success."""
    comfy.fleet.add_sim("oom", 24576, "--step-ms", "5", "--oom-node-class", "KSampler")
    comfy.fleet.add_agent("oom", "oom")
    async with aiohttp.ClientSession() as session:
        await comfy.ready(session, gpus=1)
        url = comfy.url
        ws = await session.ws_connect(f"{url}/ws?clientId=r")
        await ws.receive_json()
        workflow = txt2img(512, 384, steps=3, prefix="retry", seed=3)
        async with session.post(f"{url}/prompt", json={"prompt": workflow, "client_id": "r"}) as r:
            pid = (await r.json())["prompt_id"]
        seen: list[dict[str, Any]] = []
        while not any(f["type"] == "executing" and f["data"].get("node") for f in seen):
            seen.append(await next_text(ws))
        comfy.fleet.add_sim("ok", 24576, "--step-ms", "5")
        comfy.fleet.add_agent("ok", "ok")
        while True:
            frame = await next_text(ws)
            seen.append(frame)
            if frame["type"] == "executing" and frame["data"].get("node") is None:
                break
        types = [f["type"] for f in seen]
        assert types.count("execution_start") == 1, types
        assert "execution_error" not in types and types[-3:] == [
            "execution_success", "status", "executing"]  # fmt: skip
        async with session.get(f"{url}/history/{pid}") as r:
            entry = (await r.json())[pid]
        assert entry["status"]["status_str"] == "success"
        image = next(iter(entry["outputs"].values()))["images"][0]
        async with session.get(f"{url}/view", params=image) as r:
            assert Image.open(io.BytesIO(await r.read())).size == (512, 384)
        async with session.get(f"{comfy.fleet.url}/v1/jobs") as r:
            (job,) = (await r.json())["jobs"]
        assert job["attempt"] >= 2 and job["agent_id"] == "ok"  # the failed tries are hidden
        await ws.close()
