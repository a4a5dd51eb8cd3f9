"""What every benchmark shares: real processes, resource sampling, percentiles, workflows."""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from comfyfleet.shared import sample_workflows as sample
from tests.helpers import procs
from tests.helpers.protocol_agent import ProtocolAgent

# Heterogeneous GPUs the lightweight agents claim to have (name, VRAM MB).
GPU_MODELS = [
    ("NVIDIA GeForce RTX 4090", 24564),
    ("NVIDIA L40S", 46068),
    ("NVIDIA A100 80GB", 81920),
    ("NVIDIA RTX A4000", 16376),
]
# Mixed job sizes (VRAM MB) for the queue.
JOB_VRAM = [2000, 4000, 6000, 8000, 12000, 20000, 30000, 60000]


def percentiles(values: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{q}": float("nan") for q in qs}
    ordered = sorted(values)
    out = {}
    for q in qs:
        idx = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
        out[f"p{q}"] = ordered[idx]
    out["mean"] = statistics.fmean(ordered)
    out["max"] = ordered[-1]
    return out


def headers() -> dict[str, str]:
    """Credentials, if the coordinator asks for them (agreed: Authorization: Bearer)."""
    out = {}
    token = os.environ.get("COMFYFLEET_AGENT_TOKEN") or os.environ.get("COMFYFLEET_API_KEY")
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


def tiny_workflow(tag: int, size: int = 64) -> dict[str, Any]:
    """A model-free two-node prompt; `tag` (the colour) makes every prompt distinct (no cache)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": size, "height": size, "batch_size": 1, "color": tag % 0xFFFFFF},
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": f"b{tag}"},
        },
    }


def txt2img(tag: int) -> dict[str, Any]:
    """A typical 7-node SDXL text-to-image graph (what most queued jobs look like)."""
    text = f"a cat number {tag}, photorealistic"
    return sample.txt2img(1024, 1024, steps=30, seed=tag, ckpt=sample.SDXL, prefix=text, text=text)


class Sampler:
    """Samples a process's RSS in a thread; CPU seconds from psutil at start and stop."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        self.proc = psutil.Process(pid)
        self.every_s = every_s
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu0 = 0.0
        self.cpu1 = 0.0
        self.t0 = 0.0
        self.t1 = 0.0

    def cpu_s(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_rss = max(self.peak_rss, self.rss())
            except psutil.Error:
                return
            self._stop.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self.cpu0, self.t0 = self.cpu_s(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu1, self.t1 = self.cpu_s(), time.monotonic()
        self._stop.set()
        self._thread.join(2)

    def summary(self) -> dict[str, float]:
        wall = max(1e-9, self.t1 - self.t0)
        return {
            "cpu_s": round(self.cpu1 - self.cpu0, 2),
            "cpu_pct": round(100 * (self.cpu1 - self.cpu0) / wall, 1),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
        }


@dataclass
class Coordinator:
    """A coordinator in its own process (so its CPU and memory can be measured)."""

    tmp: Path
    args: list[str] = field(default_factory=list)
    proc: procs.Proc | None = None

    def start(self) -> Coordinator:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.proc = procs.coordinator(
            self.tmp / "coord", self.tmp, extra=[*self.args, "--log-level", "warning"]
        ).start()
        return self

    @property
    def url(self) -> str:
        assert self.proc is not None
        return str(self.proc.url)  # type: ignore[attr-defined]

    @property
    def pid(self) -> int:
        assert self.proc is not None and self.proc.proc is not None
        return self.proc.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()


def session(limit: int = 0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        headers=headers(),
        timeout=aiohttp.ClientTimeout(total=120),
    )


def make_agents(
    s: aiohttp.ClientSession, url: str, n: int, gpus_each: int = 4, prefix: str = "la"
) -> list[ProtocolAgent]:
    agents = []
    for i in range(n):
        name, vram = GPU_MODELS[i % len(GPU_MODELS)]
        agents.append(ProtocolAgent(s, url, f"{prefix}-{i:05d}", gpus=[(name, vram)] * gpus_each))
    return agents


async def gather_limited(coros: list[Any], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def submit_many(
    s: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]], concurrency: int = 32
) -> tuple[list[str], float]:
    """Submit jobs; returns their ids, in the order of `bodies` (whatever order the answers
    came in), and the submission rate (jobs/s)."""
    ids: list[str] = [""] * len(bodies)

    async def one(i: int, body: dict[str, Any]) -> None:
        async with s.post(f"{url}/v1/jobs", json=body) as r:
            data = await r.json()
            if r.status != 201:
                raise RuntimeError(f"submit refused: {r.status} {data}")
            ids[i] = data["id"]

    t0 = time.monotonic()
    await gather_limited([one(i, b) for i, b in enumerate(bodies)], concurrency)
    return ids, len(bodies) / max(1e-9, time.monotonic() - t0)


def wait_leading(url: str, wait_s: float = 30.0) -> None:
    """Until the coordinator at `url` says it leads (at once with one coordinator on SQLite)."""
    import json
    import urllib.request

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
            if json.loads(resp.read()).get("role") == "leader":
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not lead within {wait_s} s")
