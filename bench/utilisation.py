"""4. GPU utilisation: 4 simulated GPUs, jobs of fixed GPU time, fleet efficiency and idle gaps.

Real processes: a coordinator, four simulated ComfyUIs (each one GPU) whose node time is set so
that one job (a 64x64 EmptyImage -> SaveImage, distinct each time) takes `gpu_ms` on the GPU, and
one agent driving all four. All jobs are submitted at once. Each simulator's /history gives when
every prompt started and ended on its GPU (execution_start / execution_success timestamps), so:

- ideal makespan = jobs x gpu_ms / 4 (the nominal GPU time, as if comfyfleet added nothing)
- measured makespan = first prompt start on any GPU to the last prompt end on any GPU
- efficiency = ideal / measured; busy share = time the simulators spent executing / (4 x measured)
- idle gap = on each GPU, end of one prompt to start of the next (p50 / p99 over all GPUs)

The agent knows the simulators' output folders (`--comfyui-output-dir`, as a deployment should
configure them) and removes each job's output once stored; `--no-output-dirs` leaves them out.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import common
from tests.helpers.fleet import Api, Fleet, sim_stats

GPUS = 4


def history(url: str, n: int) -> list[tuple[float, float]]:
    """(start, end) in seconds of every finished prompt the simulator remembers."""
    with urllib.request.urlopen(f"{url}/history?max_items={n + 100}", timeout=60) as r:
        hist = json.loads(r.read())
    spans = []
    for entry in hist.values():
        ts = {m[0]: m[1].get("timestamp") for m in entry["status"]["messages"]}
        if "execution_start" in ts and "execution_success" in ts:
            spans.append((ts["execution_start"] / 1000, ts["execution_success"] / 1000))
    return sorted(spans)


async def measure(fleet: Fleet, jobs: int, gpu_ms: float) -> dict[str, Any]:
    async with common.session() as s:
        api = Api(s, fleet.url)
        await api.agents_online({"a0"})
        # warm each GPU (first prompt pays one-off costs), then forget it
        ids, _ = await common.submit_many(
            s,
            fleet.url,
            [
                {"workflow": common.tiny_workflow(10**6 + i), "resources": {"vram_mb": 1000}}
                for i in range(GPUS * 2)
            ],
        )
        for i in ids:
            await api.wait(i, {"COMPLETED"}, 120)
        base = sum(sim_stats(u)["prompts_succeeded"] for u in fleet.sim_urls.values())
        t0 = time.time()
        bodies = [
            {"workflow": common.tiny_workflow(i), "resources": {"vram_mb": 1000}}
            for i in range(jobs)
        ]
        ids, rate = await common.submit_many(s, fleet.url, bodies, concurrency=16)
        deadline = time.monotonic() + max(120.0, jobs * gpu_ms / 1000 / GPUS * 3)
        while True:
            done = sum(sim_stats(u)["prompts_succeeded"] for u in fleet.sim_urls.values())
            if done - base >= jobs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done - base} of {jobs} prompts finished")
            await asyncio.sleep(0.2)
        for i in ids[-GPUS * 2 :]:
            await api.wait(i, {"COMPLETED"}, 120)
    per_gpu = [
        [sp for sp in history(u, jobs + GPUS * 2) if sp[0] >= t0] for u in fleet.sim_urls.values()
    ]
    spans = [sp for g in per_gpu for sp in g]
    start = min(sp[0] for sp in spans)
    end = max(sp[1] for sp in spans)
    measured = end - start
    busy = sum(e - b for b, e in spans)
    gaps = [(g[i + 1][0] - g[i][1]) * 1000 for g in per_gpu for i in range(len(g) - 1)]
    ideal = jobs * gpu_ms / 1000 / GPUS
    pct = common.percentiles(gaps)
    return {
        "jobs": jobs,
        "gpu_ms": gpu_ms,
        "prompts_seen": len(spans),
        "ideal_makespan_s": round(ideal, 2),
        "measured_makespan_s": round(measured, 2),
        "efficiency_pct": round(100 * ideal / measured, 1),
        "busy_pct": round(100 * busy / (GPUS * measured), 1),
        "mean_prompt_ms": round(1000 * busy / len(spans), 1),
        "idle_gap_ms": {k: round(pct[k], 1) for k in ("p50", "p99", "max")},
        "submit_per_s": round(rate),
    }


def run(tmp: Path, jobs: int, gpu_ms: float, agent_args: tuple[str, ...] = ()) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(tmp, ["--heartbeat-interval", "5", "--log-level", "warning"])
    try:
        fleet.start_coordinator()
        for g in range(GPUS):
            # 64x64 EmptyImage costs node_ms/64, SaveImage node_ms: one prompt ~ gpu_ms
            fleet.add_sim(
                f"g{g}", 24576, "--node-ms", str(gpu_ms / (1 + 1 / 64)), "--log-level", "warning"
            )
        more = [a for g in range(1, GPUS) for a in ("--comfyui", fleet.sim_urls[f"g{g}"])]
        # their output folders, in the same order: the agent removes each job's output once
        # stored (else every SaveImage lists a folder that keeps growing, as ComfyUI's does)
        folders = [
            a
            for g in range(GPUS)
            for a in ("--comfyui-output-dir", str(tmp / f"sim-g{g}" / "output"))
        ]
        if "--no-output-dirs" in agent_args:
            folders, agent_args = [], tuple(a for a in agent_args if a != "--no-output-dirs")
        fleet.add_agent("a0", "g0", *more, *folders, "--log-level", "warning", *agent_args)
        return asyncio.run(measure(fleet, jobs, gpu_ms))
    finally:
        fleet.stop()


if __name__ == "__main__":
    import sys
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    ms = float(sys.argv[2]) if len(sys.argv) > 2 else 200.0
    with tempfile.TemporaryDirectory() as d:
        print(run(Path(d), n, ms, tuple(sys.argv[3:])))
