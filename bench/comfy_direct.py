"""Driving one ComfyUI directly, the way a plain client does: one WebSocket, every prompt POSTed
at once, each output fetched once with /view. The baseline `bench.real_comfy` compares the fleet
with; also the workload both drive (model-free: EmptyImage -> ImageInvert -> SaveImage).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

# Six sizes, cycled; every prompt gets its own colour so ComfyUI caches nothing between them.
SIZES = (64, 128, 192, 256, 384, 512)


def workflow(tag: int, prefix: str) -> dict[str, Any]:
    size = SIZES[tag % len(SIZES)]
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": tag % 0xFFFFFF},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def comfy_pid(url: str) -> int | None:
    """The process listening on the ComfyUI URL's port (COMFY_PID overrides)."""
    if os.environ.get("COMFY_PID"):
        return int(os.environ["COMFY_PID"])
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    except (psutil.Error, OSError):
        return None
    return None


class CpuMeter:
    """CPU seconds a process spends between `start` and `stop` (None: no such process)."""

    def __init__(self, pid: int | None) -> None:
        self.proc = psutil.Process(pid) if pid else None
        self.t0 = 0.0

    def _now(self) -> float:
        assert self.proc is not None
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def start(self) -> None:
        if self.proc is not None:
            self.t0 = self._now()

    def stop(self) -> float | None:
        return None if self.proc is None else self._now() - self.t0


async def run_direct(
    url: str,
    tags: list[int],
    prefix: str,
    output_dir: Path | None = None,
    clock_stopped: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """POST every prompt at once, follow the socket, /view each output; check every image.
    With ComfyUI's `output_dir`, the outputs are then removed (after the clock stops), as the
    agent does, so both sides meet a folder of the same size."""
    client_id = uuid.uuid4().hex
    expected: dict[str, int] = {}
    outputs: dict[str, list[dict[str, Any]]] = {}
    done: set[str] = set()
    all_done = asyncio.Event()
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?clientId={client_id}")

        async def follow() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                data = frame.get("data") or {}
                pid = data.get("prompt_id")
                if frame.get("type") == "executed" and pid in expected:
                    outputs.setdefault(pid, []).extend((data.get("output") or {}).get("images", []))
                elif frame.get("type") == "executing" and data.get("node") is None and pid:
                    if pid in expected:
                        done.add(pid)
                        if len(done) == len(expected):
                            all_done.set()

        follower = asyncio.create_task(follow())
        t0 = time.perf_counter()
        for tag in tags:
            pid = uuid.uuid4().hex
            expected[pid] = SIZES[tag % len(SIZES)]
            body = {"prompt": workflow(tag, prefix), "client_id": client_id, "prompt_id": pid}
            async with s.post(f"{url}/prompt", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"POST /prompt: {r.status} {await r.text()}")
        await asyncio.wait_for(all_done.wait(), 600)
        checked = 0
        for pid, size in expected.items():
            for img in outputs.get(pid, []):
                q = {k: img.get(k, "") for k in ("filename", "subfolder", "type")}
                async with s.get(f"{url}/view", params=q) as r:
                    data = await r.read()
                if r.status != 200 or png_size(data) != (size, size):
                    raise RuntimeError(f"prompt {pid}: bad output {q}")
                checked += 1
        elapsed = time.perf_counter() - t0
        if clock_stopped is not None:
            clock_stopped()
        follower.cancel()
        await ws.close()
    if checked != len(tags):
        raise RuntimeError(f"{checked} outputs for {len(tags)} prompts")
    if output_dir is not None:
        for images in outputs.values():
            for img in images:
                sub = img.get("subfolder") or ""
                (output_dir / sub / img["filename"]).unlink(missing_ok=True)
    return {"jobs": len(tags), "seconds": elapsed, "jobs_per_s": len(tags) / elapsed}
