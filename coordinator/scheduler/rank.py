"""Ranking: best fit, as one lexicographic key (smaller is better).

    (avoid, fit_class, cold, vram_left, ram_left, failures, agent_id, instance_id)

- avoid: 1 on agents where an earlier attempt of this job failed (allowed, but last resort);
- fit_class: `vram_left // bucket` (`Capacity.affinity_bucket_mb`, default AFFINITY_BUCKET_MB) —
  GPUs whose leftover VRAM falls in one bucket fit about equally well, so the warm-cache bonus may
  choose between them (a bucket of 0 or less: only exact ties);
- cold: 0 when the instance ran the same workflow shape or loaded the same model files recently
  (or the agent ran the shape), else 1 — the affinity bonus: it beats a slightly tighter fit in
  the same fit class, never a better fit class, never feasibility and never priority (jobs are
  placed in priority order before ranking starts);
- vram_left: free VRAM the GPU keeps after placing (0 for CPU slots), so large GPUs stay free
  for large jobs;
- ram_left: free host RAM kept after placing;
- failures: recent failures on that agent (fewer first);
- agent_id, instance_id: deterministic final tie-break.
"""

from __future__ import annotations

from comfyfleet.coordinator.scheduler.capacity import AFFINITY_BUCKET_MB, KIND_GPU, Capacity
from comfyfleet.coordinator.scheduler.feasibility import feasible
from comfyfleet.coordinator.scheduler.model import AgentView, JobRequest, SlotView

RankKey = tuple[int, int, int, int, int, int, str, str]


def fit_class(vram_left: int, bucket_mb: int = AFFINITY_BUCKET_MB) -> int:
    return vram_left // bucket_mb if bucket_mb > 0 else vram_left


def is_warm(job: JobRequest, agent: AgentView, slot: SlotView) -> bool:
    """The instance (or, for the shape, its agent) ran this workflow shape or loaded one of its
    model files recently."""
    if job.workflow_hash in agent.recent_hashes:
        return True
    recent = slot.recent
    return bool(recent) and (
        job.workflow_hash in recent or any(m in recent for m in job.model_refs)
    )


def rank_key(
    *,
    avoid: bool,
    vram_left: int,
    ram_left: int,
    warm: bool,
    failures: int,
    agent_id: str,
    instance_id: str,
    bucket_mb: int = AFFINITY_BUCKET_MB,
) -> RankKey:
    return (
        int(avoid),
        fit_class(vram_left, bucket_mb),
        0 if warm else 1,
        vram_left,
        ram_left,
        failures,
        agent_id,
        instance_id,
    )


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
        warm=is_warm(job, agent, cap.slots[sid]),
        failures=agent.recent_failures,
        agent_id=agent.agent_id,
        instance_id=cap.slots[sid].instance_id,
        bucket_mb=cap.affinity_bucket_mb,
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
