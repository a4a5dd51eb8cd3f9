"""The ComfyUI facade: its cost per job, and many WebSocket clients at once.

1. Overhead: the same tiny job run one at a time through `POST /v1/jobs` (polling the job) and
   through `POST /prompt` with the client on `/ws` (ComfyUI's own frames relayed), on one
   coordinator with `--comfy-listen`, one zero-time simulated ComfyUI and its agent. The
   coordinator's CPU seconds per job are compared (target: the facade at most 10 % more).
2. Fan-out: `sockets` clients connected on `/ws`, each with its own clientId; prompts posted one
   after another; each post sends a `status` frame to every socket. The delay from the post to
   each socket's frame is the event delay (target: p99 at most 50 ms with 1,000 sockets).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import common
from tests.helpers import procs
from tests.helpers.fleet import Api, Fleet


def _prompt(tag: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": tag % 16777215},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}},
    }


async def _v1_job(s: aiohttp.ClientSession, url: str, tag: int) -> None:
    async with s.post(f"{url}/v1/jobs", json={"workflow": _prompt(tag)}) as r:
        job = await r.json()
        assert r.status == 201, job
    while job["status"] not in ("COMPLETED", "FAILED", "CANCELLED"):
        await asyncio.sleep(0.005)
        async with s.get(f"{url}/v1/jobs/{job['id']}") as r:
            job = await r.json()
    assert job["status"] == "COMPLETED", job


async def _comfy_job(
    s: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, url: str, tag: int
) -> None:
    body = {"prompt": _prompt(tag), "client_id": "bench"}
    async with s.post(f"{url}/prompt", json=body) as r:
        answer = await r.json()
        assert r.status == 200, answer
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        frame = json.loads(msg.data)
        if frame["type"] == "executing" and frame["data"].get("node") is None:
            if frame["data"]["prompt_id"] == answer["prompt_id"]:
                return


async def _overhead(fleet: Fleet, comfy: str, pid: int, jobs: int) -> dict[str, Any]:
    async with common.session() as s:
        await Api(s, fleet.url).agents_online({"a0"})
        ws = await s.ws_connect(f"{comfy}/ws?clientId=bench")
        for i in range(20):  # warm up both paths
            await _v1_job(s, fleet.url, 10**6 + i)
            await _comfy_job(s, ws, comfy, 10**6 + 100 + i)
        with common.Sampler(pid) as v1:
            for i in range(jobs):
                await _v1_job(s, fleet.url, i)
        with common.Sampler(pid) as facade:
            for i in range(jobs):
                await _comfy_job(s, ws, comfy, jobs + i)
        await ws.close()
    v1_ms = 1000 * (v1.cpu1 - v1.cpu0) / jobs
    facade_ms = 1000 * (facade.cpu1 - facade.cpu0) / jobs
    return {
        "jobs": jobs,
        "v1_cpu_ms_per_job": round(v1_ms, 3),
        "facade_cpu_ms_per_job": round(facade_ms, 3),
        "facade_overhead_pct": round(100 * (facade_ms - v1_ms) / max(v1_ms, 1e-9), 1),
    }


async def _fanout(comfy: str, sockets: int, posts: int) -> dict[str, Any]:
    delays: list[float] = []
    async with common.session() as s:
        conns = await common.gather_limited(
            [s.ws_connect(f"{comfy}/ws?clientId=fan-{i}") for i in range(sockets)], 64
        )
        for ws in conns:
            await ws.receive(timeout=30)  # the greeting
        for i in range(posts):
            # each post sends `status` to every socket of the tenant: its delay is measured
            t0 = time.perf_counter()
            async with s.post(
                f"{comfy}/prompt", json={"prompt": _prompt(i), "client_id": "fan-0"}
            ) as r:
                assert r.status == 200, await r.text()

            delays.extend(await asyncio.gather(*(_first_status(ws, t0) for ws in conns)))
            await asyncio.sleep(0.05)
        for ws in conns:
            await ws.close()
    return {
        "sockets": sockets,
        "posts": posts,
        "status_delay_ms": {k: round(v, 2) for k, v in common.percentiles(delays).items()},
    }


async def _first_status(ws: aiohttp.ClientWebSocketResponse, t0: float) -> float:
    """Milliseconds from `t0` to the next `status` frame on this socket."""
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type == aiohttp.WSMsgType.TEXT and '"status"' in msg.data:
            return (time.perf_counter() - t0) * 1000


def run(tmp: Path, jobs: int = 300, sockets: int = 1000, posts: int = 20) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    comfy = f"http://127.0.0.1:{port}"
    fleet = Fleet(
        tmp,
        [
            "--heartbeat-interval",
            "5",
            "--log-level",
            "warning",
            "--comfy-listen",
            f"127.0.0.1:{port}",
        ],  # fmt: skip
    )
    try:
        fleet.start_coordinator()
        fleet.add_sim("g0", 24576, "--node-ms", "0", "--step-ms", "0", "--log-level", "warning")
        fleet.add_agent("a0", "g0")
        assert fleet.coord.proc is not None
        pid = fleet.coord.proc.pid
        result = asyncio.run(_overhead(fleet, comfy, pid, jobs))
        result["fanout"] = asyncio.run(_fanout(comfy, sockets, posts))
        return result
    finally:
        fleet.stop()
