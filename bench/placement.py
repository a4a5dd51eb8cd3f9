"""2 and 6. Placement throughput with many agents, and coordinator memory per job and per agent.

A coordinator in its own process; N jobs of mixed sizes are queued first (no agent yet), then M
lightweight agents (asyncio tasks in this process speaking the real agent protocol, msgpack over
HTTP, 4 heterogeneous GPUs each) register, heartbeat every 5 s and run a loop of lease, then one
reports request holding started and finish of every job leased (0 ms jobs), until the queue is
empty; `--single` sends started and finish one request each (the protocol before batches). The
coordinator's RSS is read after the queue is filled (bytes per queued job) and after the agents
registered (bytes per agent).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

from bench import common
from comfyfleet.shared import protocol as p
from tests.helpers.protocol_agent import ProtocolAgent


class Counter:
    def __init__(self, total: int) -> None:
        self.total = total
        self.leased = 0
        self.done = 0
        self.first_lease = 0.0
        self.last_lease = 0.0
        self.last_done = 0.0
        self.finished = asyncio.Event()


async def agent_loop(
    a: ProtocolAgent, c: Counter, heartbeat_s: float, single: bool = False
) -> None:
    async def beat() -> None:
        while not c.finished.is_set():
            await asyncio.sleep(heartbeat_s * random.random() if c.done == 0 else heartbeat_s)
            await a.heartbeat()

    hb = asyncio.create_task(beat())
    try:
        while not c.finished.is_set():
            reply = await a.lease(wait_s=2.0)
            if not reply.jobs:
                continue
            now = time.monotonic()
            c.first_lease = c.first_lease or now
            c.last_lease = now
            c.leased += len(reply.jobs)

            if single:

                async def run(job: Any) -> None:
                    await a.started(job)
                    await a.finish(job, outputs=[])

                await asyncio.gather(*(run(j) for j in reply.jobs))
            else:
                await a.reports(
                    [p.Report(started=a.started_msg(j)) for j in reply.jobs]
                    + [p.Report(finish=a.finish_msg(j)) for j in reply.jobs]
                )
            c.done += len(reply.jobs)
            c.last_done = time.monotonic()
            if c.done >= c.total:
                c.finished.set()
    finally:
        hb.cancel()


def job_bodies(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "workflow": common.txt2img(i),
            "priority": rng.choice([0, 0, 0, 1, 5]),
            "resources": {"vram_mb": rng.choice(common.JOB_VRAM)},
        }
        for i in range(n)
    ]


async def measure(
    coord: common.Coordinator, agents: int, jobs: int, single: bool = False
) -> dict[str, Any]:
    import psutil

    proc = psutil.Process(coord.pid)
    out: dict[str, Any] = {
        "agents": agents,
        "jobs": jobs,
        "reports": "single" if single else "batch",
    }
    async with common.session() as s:
        rss0 = proc.memory_info().rss
        _, rate = await common.submit_many(s, coord.url, job_bodies(jobs))
        await asyncio.sleep(1.0)
        rss1 = proc.memory_info().rss
        out["submit_per_s"] = round(rate)
        out["bytes_per_queued_job"] = round((rss1 - rss0) / jobs)
        fleet = common.make_agents(s, coord.url, agents)
        await common.gather_limited([a.register() for a in fleet], 64)
        await asyncio.sleep(1.0)
        rss2 = proc.memory_info().rss
        out["bytes_per_agent"] = round((rss2 - rss1) / agents)
        c = Counter(jobs)
        me = common.Sampler(__import__("os").getpid())
        with common.Sampler(coord.pid) as sampler, me:
            t0 = time.monotonic()
            tasks = [asyncio.create_task(agent_loop(a, c, 5.0, single)) for a in fleet]
            await c.finished.wait()
            wall = c.last_done - t0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out["placements_per_s"] = round(c.leased / max(1e-9, c.last_lease - t0))
    out["completions_per_s"] = round(c.done / max(1e-9, wall))
    out["wall_s"] = round(wall, 1)
    out["coordinator"] = sampler.summary()
    out["load_generator"] = me.summary()
    return out


def run(
    tmp: Path,
    agents: int,
    jobs: int,
    coordinator_args: list[str] | None = None,
    single: bool = False,
) -> dict[str, Any]:
    coord = common.Coordinator(tmp, ["--heartbeat-interval", "5", *(coordinator_args or [])])
    coord.start()
    try:
        common.wait_leading(coord.url)  # on PostgreSQL it takes the lease first
        return asyncio.run(measure(coord, agents, jobs, single))
    finally:
        coord.stop()


def plan_only(agents: int, jobs: int) -> dict[str, Any]:
    """The pure scheduler alone (coordinator/scheduler/bench.py's fleet): placements/s of plan()."""
    from comfyfleet.coordinator.scheduler import bench as sb
    from comfyfleet.coordinator.scheduler.plan import plan

    rng = random.Random(1)
    fleet = sb.make_agents(agents, rng)
    queue = sb.make_jobs(jobs, sb.NOW, rng)
    t0 = time.perf_counter()
    result = plan(queue, fleet, sb.NOW, max_placements=2000)
    dt = time.perf_counter() - t0
    return {
        "agents": agents,
        "queue": jobs,
        "placed": len(result.placements),
        "plan_ms": round(dt * 1000, 1),
        "placements_per_s": round(len(result.placements) / max(dt, 1e-9)),
    }


if __name__ == "__main__":
    import sys
    import tempfile

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    m = int(args[0]) if args else 100
    n = int(args[1]) if len(args) > 1 else 2000
    with tempfile.TemporaryDirectory() as d:
        print(run(Path(d), m, n, single="--single" in sys.argv))
    print(plan_only(m, n))
