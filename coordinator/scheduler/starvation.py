"""Anti-starvation: an old job that fits nowhere now holds one GPU (or host) until it drains.

A job queued longer than `starvation_s` that the plan could not place, but that would fit some
eligible slot if the comfyfleet jobs there finished (`fits_in_principle`), picks the slot closest to
fitting it and holds it: no job after it in this plan (lower priority or younger) may be placed on
that GPU, and the host's RAM/CPU the job needs is set aside. When the host itself is short of RAM
or CPU, the whole host is held. Plans are pure, so the hold is recomputed by every plan; the held
GPU only drains, so the oldest job keeps choosing it until it fits.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from comfyfleet.coordinator.scheduler.capacity import KIND_CPU, KIND_GPU, Capacity
from comfyfleet.coordinator.scheduler.index import SlotIndex
from comfyfleet.coordinator.scheduler.model import JobRequest


@dataclass(frozen=True, slots=True)
class Hold:
    job_id: str
    agent_id: str
    gpu_index: int | None  # the GPU held, or None for a CPU slot / whole host
    instance_id: str | None  # the CPU instance held, when that is what is held
    whole_host: bool

    def describe(self) -> str:
        if self.whole_host:
            return f"holding agent {self.agent_id} until it drains"
        if self.gpu_index is not None:
            return f"holding GPU {self.gpu_index} on agent {self.agent_id} until it drains"
        return f"holding instance {self.instance_id} on agent {self.agent_id} until it drains"


def choose_hold(
    job: JobRequest,
    cap: Capacity,
    allowed: bytearray | None,
    blocked: Collection[int],
    avoid: Collection[int],
) -> tuple[int, bool] | None:
    """(slot id, hold the whole host?) closest to fitting `job`, or None. O(slots)."""
    kind = KIND_GPU if job.gpus == 1 else KIND_CPU
    best: tuple[tuple[int, int, int, int, float, int], int, bool] | None = None
    vram_need, ram_need, cpu_need = job.vram_mb, job.ram_mb, job.cpu
    for sid in cap.usable_by_kind[kind]:
        if cap.held_by[sid] is not None or (allowed is not None and not allowed[sid]):
            continue
        pos = cap.slot_agent[sid]
        if pos in blocked:
            continue
        # fits_in_principle(), on the precomputed ceilings
        gid = cap.slot_gpu[sid]
        if kind == KIND_GPU and cap.vram_ceiling[gid] < vram_need:
            continue
        if cap.ram_ceiling[pos] < ram_need or cap.agents[pos].cpu_count < cpu_need:
            continue
        vram_short = max(0, vram_need - cap.vram[gid]) if kind == KIND_GPU else 0
        ram_short = max(0, ram_need - cap.ram[pos]) if ram_need > 0 else 0
        cpu_short = max(0.0, cpu_need - cap.cpu[pos]) if cpu_need > 0 else 0.0
        busy = 1 if cap.slot_free[sid] <= 0 else 0
        rank = (int(pos in avoid), vram_short, busy, ram_short, cpu_short, sid)
        if best is None or rank < best[0]:
            best = (rank, sid, ram_short > 0 or cpu_short > 0)
    return None if best is None else (best[1], best[2])


def apply_hold(job: JobRequest, index: SlotIndex, sid: int, whole_host: bool) -> Hold:
    """Hold slot `sid`'s GPU (or instance, or host) for `job` and take it out of the index."""
    cap = index.cap
    pos = cap.slot_agent[sid]
    if whole_host:
        held = cap.agent_slots[pos]
    elif cap.slot_kind[sid] == KIND_GPU:
        held = cap.gpu_slots[cap.slot_gpu[sid]]
    else:
        held = [sid]
    cap.hold_slots([s for s in held if cap.held_by[s] is None], job.job_id)
    if not whole_host:
        cap.hold_host(pos, max(0, job.ram_mb), max(0.0, job.cpu))
    for other in cap.agent_slots[pos]:
        index.refresh(other)
    slot = cap.slots[sid]
    return Hold(
        job_id=job.job_id,
        agent_id=cap.agents[pos].agent_id,
        gpu_index=None if whole_host else slot.gpu_index,
        instance_id=None if whole_host or slot.gpu_index is not None else slot.instance_id,
        whole_host=whole_host,
    )
