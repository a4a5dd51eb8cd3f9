"""1. Dispatch latency: idle fleet, 0 ms jobs, submit->RUNNING and submit->COMPLETED.

Real processes: a coordinator, one simulated ComfyUI with zero node time, one agent. Jobs are
submitted one at a time (the fleet is idle for each); times come from the coordinator's own
timestamps (created_at, RUNNING, COMPLETED), plus the client's submit round trip.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench import common
from tests.helpers.fleet import Fleet


async def measure(url: str, jobs: int) -> dict[str, Any]:
    running: list[float] = []
    completed: list[float] = []
    submit_rtt: list[float] = []
    assigned: list[float] = []
    async with common.session() as s:
        for _ in range(20):  # warm up: first prompt, connections, caches
            await _one(s, url, 10**6 + _)
        for i in range(jobs):
            rtt, job = await _one(s, url, i)
            ts = job["timestamps"]
            submit_rtt.append(rtt)
            running.append((ts["RUNNING"] - job["created_at"]) * 1000)
            assigned.append((ts["ASSIGNED"] - job["created_at"]) * 1000)
            completed.append((ts["COMPLETED"] - job["created_at"]) * 1000)
    return {
        "jobs": jobs,
        "submit_to_running_ms": _r(common.percentiles(running)),
        "submit_to_completed_ms": _r(common.percentiles(completed)),
        "submit_http_rtt_ms": _r(common.percentiles(submit_rtt)),
        "submit_to_assigned_ms": _r(common.percentiles(assigned)),
    }


async def _one(s: Any, url: str, tag: int) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    async with s.post(
        f"{url}/v1/jobs",
        json={"workflow": common.tiny_workflow(tag, 8), "resources": {"vram_mb": 1000}},
    ) as r:
        job = await r.json()
        assert r.status == 201, job
    rtt = (time.perf_counter() - t0) * 1000
    while job["status"] not in ("COMPLETED", "FAILED", "CANCELLED"):
        await asyncio.sleep(0.005)
        async with s.get(f"{url}/v1/jobs/{job['id']}") as r:
            job = await r.json()
    if job["status"] != "COMPLETED":
        raise RuntimeError(f"job ended {job['status']}: {job.get('error')}")
    return rtt, job


def _r(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in d.items()}


def run(tmp: Path, jobs: int = 1000, agent_args: tuple[str, ...] = ()) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(tmp, ["--heartbeat-interval", "5", "--log-level", "warning"])
    try:
        fleet.start_coordinator()
        fleet.add_sim("g0", 24576, "--node-ms", "0", "--step-ms", "0", "--log-level", "warning")
        fleet.add_agent("a0", "g0", *agent_args)

        async def go() -> dict[str, Any]:
            async with common.session() as s:
                from tests.helpers.fleet import Api

                await Api(s, fleet.url).agents_online({"a0"})
            return await measure(fleet.url, jobs)

        return asyncio.run(go())
    finally:
        fleet.stop()


if __name__ == "__main__":
    import sys
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as d:
        print(run(Path(d), n))
