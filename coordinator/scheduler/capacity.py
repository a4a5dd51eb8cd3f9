"""Free capacity: the formulas of DESIGN.md §3 and the mutable ledger one plan works on.

`Capacity` compiles a fleet view into flat arrays (ids sorted, so the input order of agents never
matters) and is the local copy `plan()` updates after each placement. Slot ids (`sid`) number the
ComfyUI instances in (agent_id, instance_id) order; GPU ids (`gid`) number the GPUs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from comfyfleet.coordinator.scheduler.model import (
    AgentView,
    GpuView,
    JobRequest,
    SchedulerError,
    SlotView,
)

KIND_CPU = 0
KIND_GPU = 1
AFFINITY_BUCKET_MB = 4096  # default fit-class width of the rank (rank.py)
KIND_BROKEN = -1  # an instance naming a GPU its agent does not report


def gpu_free_mb(gpu: GpuView) -> int:
    """Free VRAM for placement: total minus reservations, never more than NVML free minus what
    placed jobs have yet to allocate (memory used outside comfyfleet is respected)."""
    return min(gpu.vram_total_mb - gpu.reserved_mb, gpu.vram_free_mb - gpu.unallocated_mb)


def gpu_ceiling_mb(gpu: GpuView) -> int:
    """VRAM this GPU would have free if every comfyfleet job on it finished."""
    allocated = gpu.reserved_mb - gpu.unallocated_mb
    return min(gpu.vram_total_mb, gpu.vram_free_mb + allocated)


def ram_free_mb(agent: AgentView) -> int:
    return min(agent.ram_total_mb - agent.ram_reserved_mb, agent.ram_available_mb)


def ram_ceiling_mb(agent: AgentView) -> int:
    """RAM the host would have free if every comfyfleet job on it finished."""
    return min(agent.ram_total_mb, agent.ram_available_mb + agent.ram_reserved_mb)


def cpu_free(agent: AgentView) -> float:
    return agent.cpu_count - agent.cpu_reserved


def find_gpu(agent: AgentView, index: int | None) -> GpuView | None:
    if index is None:
        return None
    for gpu in agent.gpus:
        if gpu.index == index:
            return gpu
    return None


class Capacity:
    """The fleet as flat arrays plus the free capacity left, updated as a plan places jobs."""

    __slots__ = (
        "agents",
        "agent_pos",
        "ram",
        "cpu",
        "gpus",
        "gpu_agent",
        "gpu_pos",
        "gpu_slots",
        "vram",
        "slots",
        "slot_agent",
        "slot_gpu",
        "slot_kind",
        "slot_pos",
        "slot_free",
        "agent_slots",
        "held_by",
        "vram_ceiling",
        "ram_ceiling",
        "usable_by_kind",
        "affinity_bucket_mb",
    )

    def __init__(
        self, agents: Iterable[AgentView], affinity_bucket_mb: int = AFFINITY_BUCKET_MB
    ) -> None:
        self.affinity_bucket_mb = affinity_bucket_mb  # fit-class width of the rank (rank.py)
        ordered = sorted(agents, key=lambda a: a.agent_id)
        self.agents: list[AgentView] = ordered
        self.agent_pos: dict[str, int] = {}
        self.ram: list[int] = []
        self.cpu: list[float] = []
        self.gpus: list[GpuView] = []
        self.gpu_agent: list[int] = []
        self.gpu_pos: dict[tuple[str, int], int] = {}
        self.gpu_slots: list[list[int]] = []
        self.vram: list[int] = []
        self.slots: list[SlotView] = []
        self.slot_agent: list[int] = []
        self.slot_gpu: list[int] = []  # gid, or -1
        self.slot_kind: list[int] = []
        self.slot_pos: dict[tuple[str, str], int] = {}
        self.slot_free: list[int] = []
        self.agent_slots: list[list[int]] = []
        self.held_by: list[str | None] = []  # job holding this slot for itself (anti-starvation)
        for pos, agent in enumerate(ordered):
            self._add_agent(pos, agent)
        self.vram_ceiling: list[int] = [gpu_ceiling_mb(g) for g in self.gpus]
        self.ram_ceiling: list[int] = [ram_ceiling_mb(a) for a in ordered]
        # slot ids that could take a job at all, by kind (KIND_CPU, KIND_GPU)
        self.usable_by_kind: tuple[list[int], list[int]] = ([], [])
        for sid in range(len(self.slots)):
            if self.usable(sid):
                self.usable_by_kind[self.slot_kind[sid]].append(sid)

    def _add_agent(self, pos: int, agent: AgentView) -> None:
        if agent.agent_id in self.agent_pos:
            raise SchedulerError(f"agent {agent.agent_id!r} appears twice")
        self.agent_pos[agent.agent_id] = pos
        self.ram.append(ram_free_mb(agent))
        self.cpu.append(cpu_free(agent))
        for gpu in sorted(agent.gpus, key=lambda g: g.index):
            key = (agent.agent_id, gpu.index)
            if key in self.gpu_pos:
                raise SchedulerError(f"agent {agent.agent_id!r} reports GPU {gpu.index} twice")
            self.gpu_pos[key] = len(self.gpus)
            self.gpus.append(gpu)
            self.gpu_agent.append(pos)
            self.gpu_slots.append([])
            self.vram.append(gpu_free_mb(gpu))
        mine: list[int] = []
        for slot in sorted(agent.slots, key=lambda s: s.instance_id):
            skey = (agent.agent_id, slot.instance_id)
            if skey in self.slot_pos:
                raise SchedulerError(
                    f"agent {agent.agent_id!r} reports instance {slot.instance_id!r} twice"
                )
            sid = len(self.slots)
            self.slot_pos[skey] = sid
            self.slots.append(slot)
            self.slot_agent.append(pos)
            gpu_key = (agent.agent_id, -1 if slot.gpu_index is None else slot.gpu_index)
            gid = -1 if slot.gpu_index is None else self.gpu_pos.get(gpu_key, -1)
            self.slot_gpu.append(gid)
            if slot.gpu_index is None:
                kind = KIND_CPU
            else:
                kind = KIND_GPU if gid >= 0 else KIND_BROKEN
            self.slot_kind.append(kind)
            if gid >= 0:
                self.gpu_slots[gid].append(sid)
            self.slot_free.append(slot.capacity - slot.active)
            self.held_by.append(None)
            mine.append(sid)
        self.agent_slots.append(mine)

    # -- lookups by id (checkers and reasons use these) ---------------------------------------

    def sid(self, agent_id: str, instance_id: str) -> int:
        return self.slot_pos[(agent_id, instance_id)]

    def vram_free(self, agent_id: str, gpu_index: int) -> int | None:
        gid = self.gpu_pos.get((agent_id, gpu_index))
        return None if gid is None else self.vram[gid]

    def ram_free(self, agent_id: str) -> int:
        return self.ram[self.agent_pos[agent_id]]

    def cpu_free(self, agent_id: str) -> float:
        return self.cpu[self.agent_pos[agent_id]]

    def free_slots(self, agent_id: str, instance_id: str) -> int:
        return self.slot_free[self.slot_pos[(agent_id, instance_id)]]

    def holder(self, agent_id: str, instance_id: str) -> str | None:
        return self.held_by[self.slot_pos[(agent_id, instance_id)]]

    def usable(self, sid: int) -> bool:
        """Static: the instance could take a job at all (agent schedulable, instance healthy and
        of a known kind, with some capacity)."""
        return (
            self.slot_kind[sid] != KIND_BROKEN
            and self.slots[sid].healthy
            and self.slots[sid].capacity > 0
            and self.agents[self.slot_agent[sid]].schedulable
        )

    # -- updates -------------------------------------------------------------------------------

    def commit(self, sid: int, job: JobRequest) -> None:
        """Take the job's resources from the slot, its GPU and its host."""
        self.slot_free[sid] -= 1
        gid = self.slot_gpu[sid]
        if gid >= 0:
            self.vram[gid] -= job.vram_mb
        pos = self.slot_agent[sid]
        self.ram[pos] -= job.ram_mb
        self.cpu[pos] -= job.cpu

    def hold_host(self, pos: int, ram_mb: int, cpu: float) -> None:
        """Set host RAM/CPU aside for a starving job (it is not placed, nothing else may use it)."""
        self.ram[pos] -= ram_mb
        self.cpu[pos] -= cpu

    def hold_slots(self, sids: Sequence[int], job_id: str) -> None:
        for sid in sids:
            self.held_by[sid] = job_id
