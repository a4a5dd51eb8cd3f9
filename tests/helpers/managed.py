"""Agents that run their own simulated ComfyUIs (process mode), for the healing tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests.helpers import procs
from tests.helpers.fleet import Api, Fleet, running_fleet

ENDED = {"COMPLETED", "FAILED", "CANCELLED"}


def sim_command(tmp: Path, name: str, *extra: str, listen: str = "{host}:{port}") -> str:
    """`comfyfleet comfyui-sim` as a --comfyui-command template ({host} and {port} filled in);
    `listen` is put in as it is (e.g. `127.0.0.1:"$1"` in a shell script)."""
    argv = [sys.executable, "-m", "comfyfleet", "comfyui-sim"]
    rest = shlex.join([*argv, "--data-dir", str(tmp / f"sim-{name}"), *extra])
    return f"{rest} --listen {listen}"


def add_managed_agent(
    fleet: Fleet, name: str, command: str, *extra: str, port: int | None = None
) -> procs.Proc:
    port = port or procs.free_port()
    fleet.agents[name] = procs.Proc(
        f"agent-{name}",
        [
            "agent",
            "--coordinator",
            fleet.url,
            "--comfyui-mode",
            "process",
            "--comfyui-command",
            command,
            "--comfyui-port",
            str(port),
            "--agent-id",
            name,
            "--data-dir",
            str(fleet.tmp / f"agent-{name}"),
            "--stall",
            "1",
            "--drain-grace",
            "5",
            "--set",
            "heal_http_silent_s=3",
            "--set",
            "backoff_max_s=2",
            *extra,
        ],
        fleet.tmp,
        f"{fleet.url}/v1/agents/{name}",
    ).start(wait=False)
    fleet.sim_urls[name] = f"http://127.0.0.1:{port}"
    return fleet.agents[name]


def instance_record(fleet: Fleet, name: str, instance: str = "0") -> dict[str, Any] | None:
    path = fleet.tmp / f"agent-{name}" / "run" / f"instance-{instance}.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def kill_managed(tmp: Path) -> None:
    """SIGKILL every ComfyUI process group the agents under `tmp` recorded (pid reuse checked)."""
    for path in tmp.glob("agent-*/run/instance-*.json"):
        try:
            rec = json.loads(path.read_text())
            proc = psutil.Process(int(rec["pid"]))
            if abs(proc.create_time() - float(rec["create_time"])) < 0.01:
                os.killpg(proc.pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError, psutil.Error):
            continue


@contextlib.contextmanager
def managed_fleet(tmp: Path, coordinator_args: list[str] | None = None) -> Iterator[Fleet]:
    with running_fleet(tmp, coordinator_args) as fleet:
        try:
            yield fleet
        finally:
            kill_managed(tmp)


async def instance(api: Api, name: str, index: int = 0) -> dict[str, Any]:
    async with api.s.get(f"{api.url}/v1/agents/{name}") as r:
        data = await r.json()
    return dict(data["instances"][index]) if data.get("instances") else {}


async def wait_instance(
    api: Api, name: str, what: str, pred: Callable[[dict[str, Any]], bool], wait_s: float = 40
) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        info = await instance(api, name)
        if info and pred(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"instance of {name} never {what}: {info}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def fleet_events(url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Collect the fleet stream's events (kind + data) while the block runs."""
    seen: list[dict[str, Any]] = []

    async def read() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{url}/v1/events", timeout=aiohttp.ClientTimeout(total=None)) as r,
        ):
            kind = None
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind is not None:
                    seen.append({"kind": kind, "data": json.loads(line[6:])})

    task = asyncio.create_task(read())
    await asyncio.sleep(0.2)
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def metrics(api: Api) -> str:
    async with api.s.get(f"{api.url}/metrics") as r:
        return await r.text()
