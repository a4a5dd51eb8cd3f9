"""A whole fleet as real processes on 127.0.0.1: coordinator, simulated ComfyUIs, agents."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from comfyfleet.shared import sample_workflows as sample
from tests.helpers import procs


def txt2img(
    width: int, height: int, steps: int = 4, prefix: str = "t", seed: int = -1
) -> dict[str, Any]:
    return sample.txt2img(
        width, height, steps=steps, seed=seed, ckpt=sample.SDXL, prefix=prefix, text=prefix
    )


class Fleet:
    def __init__(self, tmp: Path, coordinator_args: list[str] | None = None) -> None:
        self.tmp = tmp
        self.port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.coord_args = coordinator_args or [
            "--heartbeat-interval",
            "0.5",
            "--restart-grace",
            "3",
        ]
        self.coord = self._coordinator()
        self.sims: dict[str, procs.Proc] = {}
        self.sim_urls: dict[str, str] = {}
        self.agents: dict[str, procs.Proc] = {}

    def _coordinator(self) -> procs.Proc:
        return procs.coordinator(self.tmp / "coord", self.tmp, self.port, self.coord_args)

    def start_coordinator(self) -> None:
        self.coord = self._coordinator().start()

    def add_sim(self, name: str, vram_mb: int = 24576, *extra: str, port: int | None = None) -> str:
        port = port or procs.free_port()
        url = f"http://127.0.0.1:{port}"
        self.sims[name] = procs.Proc(
            f"sim-{name}",
            [
                "comfyui-sim",
                "--listen",
                f"127.0.0.1:{port}",
                "--vram-mb",
                str(vram_mb),
                "--data-dir",
                str(self.tmp / f"sim-{name}"),
                *extra,
            ],
            self.tmp,
            f"{url}/system_stats",
        ).start()
        self.sim_urls[name] = url
        return url

    def add_agent(self, name: str, sim: str, *extra: str) -> procs.Proc:
        self.agents[name] = procs.Proc(
            f"agent-{name}",
            [
                "agent",
                "--coordinator",
                self.url,
                "--comfyui",
                self.sim_urls[sim],
                "--agent-id",
                name,
                "--data-dir",
                str(self.tmp / f"agent-{name}"),
                "--stall",
                "1",
                "--drain-grace",
                "5",
                *extra,
            ],
            self.tmp,
            f"{self.url}/v1/agents/{name}",
        ).start(wait=False)
        return self.agents[name]

    def stop(self) -> None:
        for p in [*self.agents.values(), *self.sims.values(), self.coord]:
            p.kill(signal.SIGKILL)

    def logs(self) -> str:
        parts = []
        for p in [self.coord, *self.sims.values(), *self.agents.values()]:
            parts.append(f"===== {p.name}\n{p.log()[-4000:]}")
        return "\n".join(parts)


def sim_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/sim/stats", timeout=5) as resp:
        return json.loads(resp.read())


def sim_faults(url: str, **faults: Any) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/sim/faults",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.s = session
        self.url = url

    async def submit(self, workflow: dict[str, Any], **body: Any) -> dict[str, Any]:
        async with self.s.post(f"{self.url}/v1/jobs", json={"workflow": workflow, **body}) as r:
            data = await r.json()
            assert r.status == 201, data
            return data

    async def job(self, job_id: str) -> dict[str, Any]:
        async with self.s.get(f"{self.url}/v1/jobs/{job_id}") as r:
            return await r.json()

    async def wait(self, job_id: str, statuses: set[str], wait_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + wait_s
        while True:
            job = await self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} stuck in {job['status']}: {job}")
            await asyncio.sleep(0.1)

    async def agents_online(self, names: set[str], wait_s: float = 30.0) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            async with self.s.get(f"{self.url}/v1/agents") as r:
                data = await r.json()
            online = {
                a["id"]
                for a in data["agents"]
                if a["status"] == "ONLINE"
                and a["instances"]
                and all(i["healthy"] for i in a["instances"])
            }
            if names <= online:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"agents not online: {names - online}: {data}")
            await asyncio.sleep(0.1)

    async def image_size(self, output: dict[str, Any]) -> tuple[int, int]:
        from PIL import Image

        async with self.s.get(f"{self.url}{output['url']}") as r:
            data = await r.read()
        return Image.open(io.BytesIO(data)).size


@contextlib.contextmanager
def running_fleet(tmp: Path, coordinator_args: list[str] | None = None) -> Iterator[Fleet]:
    """A fleet with its coordinator started, stopped at the end; its logs are printed when
    setting it up fails."""
    fleet = Fleet(tmp, coordinator_args)
    fleet.start_coordinator()
    try:
        yield fleet
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        fleet.stop()


@contextlib.asynccontextmanager
async def api_session(url: str) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        yield Api(s, url)
