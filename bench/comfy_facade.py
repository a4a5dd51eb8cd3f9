"""The ComfyUI facade: its cost per job, and many WebSocket clients at once.

1. Overhead: the same tiny job run one at a time through `POST /v1/jobs` (polling the job) and
   through `POST /prompt` with the client on `/ws` (ComfyUI's own frames relayed), on one
   coordinator with `--comfy-listen`, one zero-time simulated ComfyUI and its agent. The
   coordinator's CPU seconds per job are compared (target: the facade at most 10 % more).
2. Fan-out: `sockets` clients connected on `/ws`, each with its own clientId, read by `clients`
   processes; prompts posted one after another; each post sends a `status` frame to every
   socket. The delay from the post to each socket's frame is the event delay (target: p99 at
   most 50 ms with 1,000 sockets); the coordinator's CPU per broadcast is its own share. The
   same with one client process is kept beside it (how it was first measured).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import time
import urllib.request
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


def _fanout(comfy: str, pid: int, sockets: int, posts: int, clients: int) -> dict[str, Any]:
    """`sockets` clients on /ws read by `clients` processes (so one client process working
    through its frames in turn is not what is measured); the post's time and each frame's
    arrival are read on CLOCK_MONOTONIC, which every process shares. The coordinator's CPU
    per broadcast is its own share, apart from the clients."""
    ctx = mp.get_context("spawn")
    pipes, readers = [], []
    for k in range(clients):
        ids = [f"fan-{i}" for i in range(k, sockets, clients)]
        parent, child = ctx.Pipe()
        reader = ctx.Process(target=_reader, args=(comfy, ids, posts, child), daemon=True)
        reader.start()
        pipes.append(parent)
        readers.append(reader)
    try:
        for pipe in pipes:
            assert pipe.recv() == "ready"
        delays: list[float] = []
        with common.Sampler(pid) as cpu:
            for i in range(posts):
                # each post sends `status` to every socket of the tenant: its delay is measured
                t0 = time.monotonic()
                _post(f"{comfy}/prompt", {"prompt": _prompt(i), "client_id": "fan-0"})
                for pipe in pipes:
                    delays.extend((t - t0) * 1000 for t in pipe.recv())
                time.sleep(0.05)
    finally:
        for reader in readers:
            reader.join(timeout=30)
            if reader.is_alive():
                reader.kill()
    return {
        "sockets": sockets,
        "posts": posts,
        "client_processes": clients,
        "status_delay_ms": {k: round(v, 2) for k, v in common.percentiles(delays).items()},
        "coordinator_cpu_ms_per_broadcast": round(1000 * (cpu.cpu1 - cpu.cpu0) / posts, 2),
    }


def _post(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json", **common.headers()}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200, resp.read()


def _reader(comfy: str, ids: list[str], posts: int, pipe: Any) -> None:
    asyncio.run(_read(comfy, ids, posts, pipe))


async def _read(comfy: str, ids: list[str], posts: int, pipe: Any) -> None:
    """One client process: its sockets, and for each post the moment each got its `status`."""
    async with common.session() as s:
        conns = await common.gather_limited(
            [s.ws_connect(f"{comfy}/ws?clientId={i}") for i in ids], 64
        )
        greetings = [await ws.receive_json(timeout=30) for ws in conns]
        waiting = greetings[0]["data"]["status"]["exec_info"]["queue_remaining"]
        pipe.send("ready")
        for n in range(1, posts + 1):  # post n: the status that counts n more waiting prompts
            pipe.send(await asyncio.gather(*(_status(ws, waiting + n) for ws in conns)))
        for ws in conns:
            await ws.close()


async def _status(ws: aiohttp.ClientWebSocketResponse, remaining: int) -> float:
    """When (time.monotonic) the `status` frame saying `remaining` arrived on this socket."""
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        frame = json.loads(msg.data)
        if frame["type"] == "status":
            if frame["data"]["status"]["exec_info"]["queue_remaining"] == remaining:
                return time.monotonic()


def run(
    tmp: Path, jobs: int = 300, sockets: int = 1000, posts: int = 20, clients: int = 4
) -> dict[str, Any]:
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
        assert fleet.coord.proc is not None
        pid = fleet.coord.proc.pid
        # fan-out first, with no agent: each post adds one waiting prompt, one `status` frame
        fanout = _fanout(comfy, pid, sockets, posts, clients)
        fanout_one = _fanout(comfy, pid, sockets, posts, 1)
        _post(f"{comfy}/queue", {"clear": True})
        fleet.add_sim("g0", 24576, "--node-ms", "0", "--step-ms", "0", "--log-level", "warning")
        fleet.add_agent("a0", "g0")
        result = asyncio.run(_overhead(fleet, comfy, pid, jobs))
        return {**result, "fanout": fanout, "fanout_one_client": fanout_one}
    finally:
        fleet.stop()
