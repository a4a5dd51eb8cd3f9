"""Ranking: best fit, as one lexicographic key (smaller is better).

    (avoid, vram_left, ram_left, cold, failures, agent_id, instance_id)

- avoid: 1 on agents where an earlier attempt of this job failed (allowed, but last resort);
- vram_left: free VRAM the GPU keeps after placing (0 for CPU slots), so large GPUs stay free
  for large jobs;
- ram_left: free host RAM kept after placing;
- cold: 0 when the workflow hash ran there recently (warm cache), else 1 — it only breaks ties
  of fit, it never beats a tighter fit;
- failures: recent failures on that agent (fewer first);
- agent_id, instance_id: deterministic final tie-break.
"""

from __future__ import annotations

from comfyfleet.coordinator.scheduler.capacity import KIND_GPU, Capacity
from comfyfleet.coordinator.scheduler.feasibility import feasible
from comfyfleet.coordinator.scheduler.model import JobRequest

RankKey = tuple[int, int, int, int, int, str, str]


def rank_key(
    *,
    avoid: bool,
    vram_left: int,
    ram_left: int,
    warm: bool,
    failures: int,
    agent_id: str,
    instance_id: str,
) -> RankKey:
    return (int(avoid), vram_left, ram_left, 0 if warm else 1, failures, agent_id, instance_id)


def candidate_key(job: JobRequest, cap: Capacity, sid: int) -> RankKey:
    """Rank key of placing `job` on slot `sid` given the free capacity in `cap`."""
    pos = cap.slot_agent[sid]
    agent = cap.agents[pos]
    gid = cap.slot_gpu[sid]
    vram_left = cap.vram[gid] - job.vram_mb if cap.slot_kind[sid] == KIND_GPU else 0
    return rank_key(
        avoid=agent.agent_id in job.avoid_agents,
        vram_left=vram_left,
        ram_left=cap.ram[pos] - job.ram_mb,
        warm=job.workflow_hash in agent.recent_hashes,
        failures=agent.recent_failures,
        agent_id=agent.agent_id,
        instance_id=cap.slots[sid].instance_id,
    )


def fit_score(job: JobRequest, cap: Capacity, sid: int) -> float:
    """How tightly the job fills its GPU (CPU slot: its host RAM), 0..1; informational only.
    Call before committing the placement."""
    if cap.slot_kind[sid] == KIND_GPU:
        gid = cap.slot_gpu[sid]
        total, left = cap.gpus[gid].vram_total_mb, cap.vram[gid] - job.vram_mb
    else:
        pos = cap.slot_agent[sid]
        total, left = cap.agents[pos].ram_total_mb, cap.ram[pos] - job.ram_mb
    if total <= 0:
        return 1.0
    return round(min(1.0, max(0.0, 1.0 - left / total)), 6)


def best_by_scan(job: JobRequest, cap: Capacity) -> int | None:
    """Reference: run every slot through the feasibility pipeline and take the smallest rank key.
    O(slots); `plan()` finds the same slot through its index."""
    best: tuple[RankKey, int] | None = None
    for sid, slot in enumerate(cap.slots):
        agent = cap.agents[cap.slot_agent[sid]]
        if not feasible(job, agent, slot, cap):
            continue
        key = candidate_key(job, cap, sid)
        if best is None or key < best[0]:
            best = (key, sid)
    return None if best is None else best[1]
