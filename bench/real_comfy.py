"""9. One ComfyUI driven directly against the same ComfyUI through comfyfleet, alternating in one
run (`make bench` runs it when COMFY_URL names a reachable ComfyUI; the simulator otherwise).

Workload: `jobs` model-free prompts (EmptyImage -> ImageInvert -> SaveImage, six sizes, a colour
each so nothing is cached), all submitted at once.

- direct: one client, one WebSocket, every prompt POSTed at once, one /view per output.
- fleet: a coordinator and one agent (real processes) in front of the same ComfyUI; every job
  submitted at once to /v1/jobs; the time until the last is COMPLETED (seen on /v1/events).

Every output is checked (PNG of the right size), the fleet's after the clock stops. The ratio is
fleet jobs/s over direct jobs/s, the median of each side's rounds. CPU seconds per job of the
ComfyUI process (found by its port, or COMFY_PID), the coordinator and the agent come with it.

    COMFY_URL=http://127.0.0.1:8188 COMFY_OUTPUT_DIR=... .venv/bin/python -m bench.real_comfy \
        [JOBS] [ROUNDS] [--after N] [--sim] [AGENT FLAGS...]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import common
from bench.comfy_direct import (
    SIZES,
    CpuMeter,
    comfy_pid,
    png_size,
    run_direct,
    workflow,
)
from tests.helpers.fleet import Fleet

# A CPU-mode ComfyUI: its request costs (sim/costs.py) and prompts that spend CPU as 0.3.64's
# do on this workload (~8 ms in its worker threads: bench/notes.md, issue 18)
SIM_ARGS = ("--device", "cpu", "--node-cpu", "--node-ms", "5", "--log-level", "warning")


def reachable(url: str | None) -> bool:
    if not url:
        return False
    try:
        with urllib.request.urlopen(f"{url}/system_stats", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


class Completions:
    """Follows /v1/events from before the submission: which jobs reached COMPLETED (a FAILED or
    CANCELLED one is kept to fail the round)."""

    def __init__(self) -> None:
        self.completed: set[str] = set()
        self.failed: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self.open = asyncio.Event()

    async def follow(self, s: aiohttp.ClientSession, url: str) -> None:
        async with s.get(f"{url}/v1/events", timeout=aiohttp.ClientTimeout(total=None)) as r:
            self.open.set()
            event = ""
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "job":
                    data = json.loads(line[5:])
                    if data.get("status") == "COMPLETED":
                        self.completed.add(data["job_id"])
                    elif data.get("status") in ("FAILED", "CANCELLED"):
                        self.failed[data["job_id"]] = data.get("error")
                    self.changed.set()

    async def wait(self, ids: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ids <= self.completed:
            if ids & self.failed.keys():
                raise RuntimeError(
                    f"jobs failed: {[self.failed[i] for i in ids & self.failed.keys()]}"
                )
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))


async def run_fleet(
    url: str,
    tags: list[int],
    prefix: str,
    check: bool = True,
    clock_stopped: Callable[[], None] | None = None,
) -> dict[str, Any]:
    bodies = [{"workflow": workflow(t, prefix), "resources": {"gpus": 0}} for t in tags]
    async with common.session() as s:
        seen = Completions()
        follower = asyncio.create_task(seen.follow(s, url))
        await asyncio.wait_for(seen.open.wait(), 30)
        t0 = time.perf_counter()
        ids, _ = await common.submit_many(s, url, bodies, concurrency=len(bodies))
        try:
            await seen.wait(set(ids), 600)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        elapsed = time.perf_counter() - t0
        if clock_stopped is not None:  # CPU meters stop here: the checks below are not the work
            clock_stopped()
        if not check:
            return {"jobs": len(tags), "seconds": elapsed, "jobs_per_s": len(tags) / elapsed}
        checked = 0
        for job_id, tag in zip(ids, tags, strict=True):
            async with s.get(f"{url}/v1/jobs/{job_id}") as r:
                job = await r.json()
            size = SIZES[tag % len(SIZES)]
            for out in job.get("outputs", []):
                async with s.get(f"{url}/v1/jobs/{job_id}/outputs/{out['name']}") as r:
                    if png_size(await r.read()) != (size, size):
                        raise RuntimeError(f"job {job_id}: output {out['name']} is not {size}px")
                checked += 1
        if checked != len(tags):
            raise RuntimeError(f"{checked} outputs for {len(tags)} jobs")
    return {"jobs": len(tags), "seconds": elapsed, "jobs_per_s": len(tags) / elapsed}


async def _ready(url: str) -> None:
    async with common.session() as s:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            async with s.get(f"{url}/v1/agents") as r:
                agents = (await r.json()).get("agents", [])
            if any(
                a.get("status") == "ONLINE"
                and any(i.get("healthy") for i in a.get("instances", []))
                for a in agents
            ):
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("the agent did not come online")


def compare(
    tmp: Path,
    comfy_url: str | None,
    jobs: int = 100,
    rounds: int = 3,
    agent_args: tuple[str, ...] = (),
    warm_jobs: int = 20,
    sides: tuple[str, ...] = ("direct", "fleet"),
    output_dir: Path | None = None,
    after: int = 0,
) -> dict[str, Any]:
    """Alternate direct and fleet rounds against one ComfyUI at `comfy_url` (None: a simulator
    with ComfyUI's request costs, started here). With its `output_dir` known, the agent is told
    it (and removes its jobs' outputs) and the direct side removes its own after each round.
    `after`: then that many more jobs through the fleet, and the rounds again."""
    tmp.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(tmp, ["--heartbeat-interval", "5", "--log-level", "warning"])
    if comfy_url is None:
        comfy_url = fleet.add_sim("comfy", 24576, *SIM_ARGS)
        output_dir = tmp / "sim-comfy" / "output"
        sim = fleet.sims["comfy"].proc
        pid = sim.pid if sim is not None else None
        target = "simulator (a CPU-mode ComfyUI's request and prompt costs)"
    else:
        target = f"ComfyUI at {comfy_url}"
        fleet.sim_urls["comfy"] = comfy_url
        pid = comfy_pid(comfy_url)
    if output_dir is not None:
        agent_args = (*agent_args, "--comfyui-output-dir", str(output_dir))
    rows: list[dict[str, Any]] = []
    try:
        fleet.start_coordinator()
        agent = fleet.add_agent("a0", "comfy", "--log-level", "warning", *agent_args)
        asyncio.run(_ready(fleet.url))
        coord_pid = fleet.coord.proc.pid if fleet.coord.proc else None
        agent_pid = agent.proc.pid if agent.proc else None
        tag = int(time.time()) % 100_000 * 1000
        warm = list(range(tag, tag + warm_jobs))
        asyncio.run(run_direct(comfy_url, warm, "warm_direct", output_dir))
        tag += warm_jobs
        asyncio.run(run_fleet(fleet.url, list(range(tag, tag + warm_jobs)), "warm_fleet"))
        tag += warm_jobs
        stages = [(0, r) for r in range(rounds)]
        if after:
            stages += [(after, r) for r in range(rounds)]
        for done_before, r in stages:
            if done_before and r == 0:
                for start in range(0, after, 500):  # through the fleet, 500 at a time
                    batch = list(range(tag, tag + min(500, after - start)))
                    tag += len(batch)
                    asyncio.run(run_fleet(fleet.url, batch, "bench_after", check=False))
            for how in sides:
                tags = list(range(tag, tag + jobs))
                tag += jobs
                meters = {
                    "comfyui": CpuMeter(pid),
                    "coordinator": CpuMeter(coord_pid if how == "fleet" else None),
                    "agent": CpuMeter(agent_pid if how == "fleet" else None),
                }
                cpu: dict[str, float | None] = {}

                def stopped(
                    meters: dict[str, CpuMeter] = meters,
                    cpu: dict[str, float | None] = cpu,
                ) -> None:
                    cpu.update({name: m.stop() for name, m in meters.items()})

                for m in meters.values():
                    m.start()
                if how == "direct":
                    res = asyncio.run(
                        run_direct(comfy_url, tags, "bench_direct", output_dir, stopped)
                    )
                else:
                    res = asyncio.run(run_fleet(fleet.url, tags, "bench_fleet", True, stopped))
                for name, spent in cpu.items():
                    if spent is not None:
                        res[f"{name}_cpu_ms_per_job"] = round(1000 * spent / jobs, 2)
                res.update(how=how, round=r, after_jobs=done_before)
                res["jobs_per_s"] = round(res["jobs_per_s"], 1)
                res["seconds"] = round(res["seconds"], 3)
                rows.append(res)
    finally:
        fleet.stop()
    out = summary([r for r in rows if not r["after_jobs"]], jobs)
    out["target"] = target
    out["rounds"] = rows
    if after:
        out["after"] = {"jobs_before": after, **summary([r for r in rows if r["after_jobs"]], jobs)}
        del out["after"]["rounds"]
    return out


def summary(rows: list[dict[str, Any]], jobs: int) -> dict[str, Any]:
    def med(how: str, key: str) -> float | None:
        vals = [r[key] for r in rows if r["how"] == how and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    direct, fleet = med("direct", "jobs_per_s"), med("fleet", "jobs_per_s")
    out: dict[str, Any] = {
        "jobs": jobs,
        "rounds": rows,
        "direct_jobs_per_s": direct,
        "fleet_jobs_per_s": fleet,
        "ratio": round(fleet / direct, 3) if direct and fleet else None,
    }
    cd, cf = med("direct", "comfyui_cpu_ms_per_job"), med("fleet", "comfyui_cpu_ms_per_job")
    if cd and cf:
        out["comfyui_cpu_ms_per_job"] = {
            "direct": round(cd, 2),
            "fleet": round(cf, 2),
            "ratio": round(cf / cd, 3),
        }
    return out


def run(tmp: Path, jobs: int, rounds: int, after: int = 0) -> dict[str, Any]:
    """`make bench`: the real ComfyUI at COMFY_URL when it answers (its output folder from
    COMFY_OUTPUT_DIR), else the simulator."""
    url = os.environ.get("COMFY_URL")
    out = os.environ.get("COMFY_OUTPUT_DIR")
    return compare(
        tmp,
        url if reachable(url) else None,
        jobs,
        rounds,
        output_dir=Path(out) if out and reachable(url) else None,
        after=after,
    )


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("jobs", type=int, nargs="?", default=100)
    ap.add_argument("rounds", type=int, nargs="?", default=3)
    ap.add_argument("--after", type=int, default=0, help="then N jobs, and the rounds again")
    ap.add_argument("--sim", action="store_true", help="the simulator even if COMFY_URL answers")
    a, agent_args = ap.parse_known_args()  # what it does not know goes to the agent
    url = None if a.sim else os.environ.get("COMFY_URL")
    if url and not reachable(url):
        raise SystemExit(f"COMFY_URL={url!r} does not answer /system_stats")
    out = os.environ.get("COMFY_OUTPUT_DIR")
    with tempfile.TemporaryDirectory() as d:
        result = compare(
            Path(d),
            url,
            a.jobs,
            a.rounds,
            tuple(agent_args),
            sides=tuple(os.environ.get("BENCH_SIDES", "direct,fleet").split(",")),
            output_dir=Path(out) if out and url else None,
            after=a.after,
        )
        print(json.dumps(result, indent=1))
