"""Benchmark: cache-hit rate of placement with and without the workflow-affinity bonus.

    .venv/bin/python bench/affinity.py [agents] [rounds] [shapes]

A simulated fleet (one ComfyUI instance per GPU, mixed 24/48/80 GB GPUs) takes rounds of jobs
drawn from a skewed mix of workflow shapes, each loading its own checkpoint. Each round the real
`plan()` places the queue, every placed job runs to completion, and each instance remembers the
last few shapes and models it ran (a ComfyUI keeps a few models resident). A placement is a cache
hit when the instance had run the job's shape or loaded its model before. The same job stream is
placed twice: with warmth visible to the scheduler (affinity on) and with it hidden (affinity off,
plain best fit); hits are counted the same way both times.
"""

from __future__ import annotations

import random
import sys
import time
from collections import deque

from comfyfleet.coordinator.scheduler import plan
from comfyfleet.coordinator.scheduler.model import AgentView, GpuView, JobRequest, SlotView

GPUS = [("RTX 4090", 24576), ("L40S", 46068), ("A100", 81920)]
RESIDENT = 3  # shapes/models an instance keeps warm
NOW = 1_700_000_000.0


def run(
    n_agents: int, rounds: int, n_shapes: int, affinity: bool, seed: int = 7
) -> tuple[int, int, float]:
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(n_shapes)]  # Zipf-like: a few popular workflows
    recent: dict[str, deque[str]] = {
        f"agent-{i:03d}": deque(maxlen=2 * RESIDENT) for i in range(n_agents)
    }
    hits = placed = 0
    elapsed = 0.0
    for r in range(rounds):
        jobs = []
        for j in range(int(n_agents * rng.uniform(0.5, 1.0))):
            shape = rng.choices(range(n_shapes), weights)[0]
            jobs.append(
                JobRequest(
                    job_id=f"r{r}-j{j}",
                    priority=0,
                    submitted_at=NOW - j,
                    queued_at=NOW - j,
                    gpus=1,
                    vram_mb=rng.choice([6000, 8000, 12000, 18000]),
                    ram_mb=0,
                    cpu=0.0,
                    labels={},
                    gpu_name=None,
                    models=(),
                    workflow_hash=f"s:{shape}",
                    avoid_agents=frozenset(),
                    blocked_agents=frozenset(),
                    model_refs=(f"model-{shape}.safetensors",),
                )
            )
        agents = []
        for i, (agent_id, keys) in enumerate(recent.items()):
            name, total = GPUS[i % len(GPUS)]
            agents.append(
                AgentView(
                    agent_id=agent_id,
                    schedulable=True,
                    labels={},
                    ram_available_mb=128000,
                    ram_reserved_mb=0,
                    ram_total_mb=128000,
                    cpu_count=32,
                    cpu_reserved=0.0,
                    gpus=(GpuView(0, name, total, total, 0, 0),),
                    slots=(
                        SlotView("0", 0, True, 1, 0, frozenset(keys) if affinity else frozenset()),
                    ),
                    models=frozenset(),
                    recent_hashes=(),
                    recent_failures=0,
                )
            )
        t0 = time.perf_counter()
        result = plan(jobs, agents, NOW)
        elapsed += time.perf_counter() - t0
        by_id = {j.job_id: j for j in jobs}
        for p in result.placements:
            job = by_id[p.job_id]
            keys = recent[p.agent_id]
            placed += 1
            hits += job.workflow_hash in keys or any(m in keys for m in job.model_refs)
            for k in (job.workflow_hash, *job.model_refs):
                if k in keys:
                    keys.remove(k)
                keys.append(k)
    return hits, placed, elapsed


def main(argv: list[str]) -> None:
    n_agents = int(argv[0]) if argv else 60
    rounds = int(argv[1]) if len(argv) > 1 else 200
    n_shapes = int(argv[2]) if len(argv) > 2 else 12
    for affinity in (False, True):
        hits, placed, elapsed = run(n_agents, rounds, n_shapes, affinity)
        print(
            f"affinity {'on ' if affinity else 'off'}: {n_agents} agents, {rounds} rounds, "
            f"{n_shapes} workflow shapes: {placed} placements, cache-hit rate "
            f"{hits / placed:.1%} ({placed / elapsed:,.0f} placements/s in plan())"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
