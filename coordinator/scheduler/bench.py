"""Benchmark: `python -m comfyfleet.coordinator.scheduler.bench [agents] [jobs]`.

Builds a fleet of agents with 4 GPUs each (mixed GPU models, labels, models, some load) and a
mixed queue, runs `plan()` and prints placements per second.
"""

from __future__ import annotations

import random
import sys
import time

from comfyfleet.coordinator.scheduler.model import AgentView, GpuView, JobRequest, SlotView
from comfyfleet.coordinator.scheduler.plan import plan

GPU_MODELS = [("NVIDIA GeForce RTX 4090", 24564), ("NVIDIA L40S", 46068), ("NVIDIA A100", 81920)]
MODELS = [f"model-{i}.safetensors" for i in range(20)]
HASHES = [f"wf-{i}" for i in range(50)]
NOW = 1_700_000_000.0


def make_agents(n: int, rng: random.Random, busy_share: float = 0.25) -> list[AgentView]:
    agents = []
    for i in range(n):
        name, total = GPU_MODELS[i % len(GPU_MODELS)]
        gpus, slots = [], []
        for g in range(4):
            busy = rng.random() < busy_share
            reserved = rng.choice([4000, 8000, 12000]) if busy else 0
            external = rng.choice([0, 0, 500, 1500])
            free = total - external - (reserved // 2 if busy else 0)
            gpus.append(GpuView(g, name, total, free, reserved, reserved // 2 if busy else 0))
            slots.append(SlotView(f"comfy-{g}", g, rng.random() > 0.02, 1, 1 if busy else 0))
        if i % 10 == 0:
            slots.append(SlotView("comfy-cpu", None, True, 2, 0))
        ram_total = rng.choice([131072, 262144])
        agents.append(
            AgentView(
                agent_id=f"agent-{i:04d}",
                schedulable=rng.random() > 0.03,
                labels={"zone": f"z{i % 4}", "tier": "spot" if i % 3 else "ondemand"},
                ram_available_mb=ram_total - rng.randrange(8000, 40000),
                ram_reserved_mb=rng.randrange(0, 20000),
                ram_total_mb=ram_total,
                cpu_count=32,
                cpu_reserved=float(rng.randrange(0, 8)),
                gpus=tuple(gpus),
                slots=tuple(slots),
                models=frozenset(rng.sample(MODELS, 15)),
                recent_hashes=tuple(rng.sample(HASHES, 5)),
                recent_failures=rng.choice([0, 0, 0, 1, 3]),
            )
        )
    return agents


def make_jobs(n: int, now: float, rng: random.Random) -> list[JobRequest]:
    jobs = []
    for i in range(n):
        r = rng.random()
        jobs.append(
            JobRequest(
                job_id=f"job-{i:06d}",
                priority=rng.choice([0, 0, 0, 1, 5]),
                submitted_at=(queued := now - rng.uniform(0, 900)),
                queued_at=queued,
                gpus=0 if r < 0.02 else 1,
                vram_mb=rng.choice([2000, 4000, 6000, 8000, 12000, 16000, 20000, 30000, 60000]),
                ram_mb=rng.choice([0, 2000, 4000, 8000, 16000]),
                cpu=rng.choice([0.0, 1.0, 2.0]),
                labels={"zone": "z1"} if r > 0.9 else {},
                gpu_name="*A100*" if 0.85 < r <= 0.9 else None,
                models=tuple(rng.sample(MODELS, 2)) if 0.5 < r <= 0.7 else (),
                workflow_hash=rng.choice(HASHES),
                avoid_agents=frozenset({f"agent-{rng.randrange(1000):04d}"})
                if r < 0.05
                else frozenset(),
                blocked_agents=frozenset(),
            )
        )
    return jobs


def run(label: str, agents: list[AgentView], jobs: list[JobRequest], limit: int | None) -> None:
    now = NOW
    t0 = time.perf_counter()
    result = plan(jobs, agents, now, max_placements=limit)
    dt = time.perf_counter() - t0
    n = len(result.placements)
    print(
        f"{label}: {len(agents)} agents x 4 GPUs, {len(jobs)} jobs, max_placements={limit}: "
        f"{n} placed, {len(result.pending)} pending in {dt * 1000:.0f} ms "
        f"-> {n / dt:,.0f} placements/s"
    )


def main(argv: list[str]) -> None:
    n_agents = int(argv[0]) if argv else 1000
    n_jobs = int(argv[1]) if len(argv) > 1 else 20000
    rng = random.Random(42)
    loaded = make_agents(n_agents, rng)
    idle = make_agents(n_agents, rng, busy_share=0.0)
    jobs = make_jobs(n_jobs, NOW, rng)
    run("loaded fleet", loaded, jobs, None)
    run("loaded fleet", loaded, jobs, 1000)
    run("idle fleet", idle, jobs, None)


if __name__ == "__main__":
    main(sys.argv[1:])
