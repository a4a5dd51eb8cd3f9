"""The coordinator's live view of its agents, and how it turns into scheduler input."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from comfyfleet.coordinator import restarts
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.scheduler.model import AgentView, GpuView, SlotView
from comfyfleet.shared.protocol import (
    ComfyCatalog,
    GpuInfo,
    HostInfo,
    InstanceInfo,
    JobRef,
    Register,
    RestartEvent,
)
from comfyfleet.shared.slots import slot_load
from comfyfleet.shared.status import JobStatus


class AgentStatus(StrEnum):
    ONLINE = "ONLINE"
    DRAINING = "DRAINING"
    LOST = "LOST"
    RECONNECTING = "RECONNECTING"  # known from before a coordinator restart, not yet back


@dataclass(slots=True)
class AgentState:
    agent_id: str
    status: AgentStatus
    last_seen: float
    registered_at: float
    version: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    models: frozenset[str] = frozenset()
    host: HostInfo = field(default_factory=HostInfo)
    gpus: list[GpuInfo] = field(default_factory=list)
    instances: list[InstanceInfo] = field(default_factory=list)
    snapshot_at: float = 0.0  # when the GPU numbers were measured (last heartbeat)
    draining: bool = False
    lost_deadline: float | None = None  # set while RECONNECTING: lost if still absent then
    instance: str = ""  # the agent process that registered last (Register.instance_id)
    # when this coordinator last answered the agent's register or heartbeat: the agent builds
    # its next report after reading that answer (reconcile.py)
    answered_at: float = -math.inf
    jobs: set[str] = field(default_factory=set)  # ASSIGNED / RUNNING job ids placed here
    # of those, the ones whose prompt ComfyUI has finished (the agent's lease says so): they
    # hold no place in ComfyUI's queue any more (shared/slots.py)
    finishing: frozenset[str] = frozenset()  # replaced by each lease, never changed in place
    to_deliver: deque[str] = field(default_factory=deque)  # assigned, not yet sent by a lease
    to_cancel: dict[str, JobRef] = field(default_factory=dict)  # cancels to send
    recent_hashes: deque[str] = field(default_factory=lambda: deque(maxlen=16))
    recent_failures: deque[float] = field(default_factory=lambda: deque(maxlen=32))
    node_classes: frozenset[str] | None = None  # None: the agent reported no inventory
    comfyui: ComfyCatalog | None = None  # its ComfyUI's /object_info and models (the facade)
    # per ComfyUI instance: shape hashes and model files it ran recently (warm cache)
    recent_by_instance: dict[str, deque[str]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # managed ComfyUI restarts: newest published per instance, and those not yet published
    restarts_seen: dict[str, float] = field(default_factory=dict)
    fresh_restarts: list[tuple[str, RestartEvent]] = field(default_factory=list)
    ran_count: int = 0  # changes of recent_by_instance (its deques change in place)
    # the last scheduler view built (agent_view) and what it was built from
    view_cache: tuple[tuple[object, ...], AgentView] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def schedulable(self) -> bool:
        return self.status == AgentStatus.ONLINE and not self.draining

    def apply_register(self, msg: Register, now: float) -> None:
        self.version = msg.version
        self.labels = dict(msg.labels)
        self.models = frozenset(msg.models)
        self.node_classes = None if msg.node_classes is None else frozenset(msg.node_classes)
        self.instance = msg.instance_id
        if msg.comfyui is not None:
            self.comfyui = msg.comfyui
        self.registered_at = now
        self.apply_snapshot(msg.host, msg.gpus, msg.instances, now)

    def apply_snapshot(
        self, host: HostInfo, gpus: list[GpuInfo], instances: list[InstanceInfo], now: float
    ) -> None:
        self.host = host
        self.gpus = list(gpus)
        self.instances = list(instances)
        found, self.restarts_seen = restarts.fresh(self.restarts_seen, instances)
        self.fresh_restarts.extend(found)
        self.snapshot_at = now
        self.last_seen = now
        self.lost_deadline = None
        if self.status in (AgentStatus.LOST, AgentStatus.RECONNECTING):
            self.status = AgentStatus.DRAINING if self.draining else AgentStatus.ONLINE

    def apply_inventory(
        self,
        models: list[str] | None,
        node_classes: list[str] | None,
        comfyui: ComfyCatalog | None = None,
    ) -> None:
        if models is not None:
            self.models = frozenset(models)
        if node_classes is not None:
            self.node_classes = frozenset(node_classes)
        if comfyui is not None:
            self.comfyui = comfyui

    def take_restarts(self) -> list[tuple[str, RestartEvent]]:
        """The restarts learnt since the last call: (instance_id, event), oldest first."""
        found, self.fresh_restarts = self.fresh_restarts, []
        return found

    def ran(self, instance_id: str, keys: list[str]) -> None:
        """Remember what an instance just ran (most recent last; a bounded window)."""
        recent = self.recent_by_instance.setdefault(instance_id, deque(maxlen=RECENT_PER_SLOT))
        self.ran_count += 1
        for key in keys:
            if key in recent:
                recent.remove(key)
            recent.append(key)


RECENT_PER_SLOT = 16


def register_info(msg: Register) -> dict[str, Any]:
    """The registration as the store keeps it (`AgentRecord.info`): without the running jobs."""
    info: dict[str, Any] = msgspec.to_builtins(msg)
    info.pop("running", None)
    return info


def register_from_info(info: dict[str, Any]) -> Register | None:
    """The stored registration back as a message; None if it no longer decodes."""
    try:
        return msgspec.convert(info, Register)
    except msgspec.ValidationError:
        return None


def has_free_slot(agent: AgentState, jobs: dict[str, JobRecord]) -> bool:
    """`pacing.has_free_slot([agent_view(agent, jobs, ...)])` without building the view: a
    schedulable agent with a healthy slot whose active jobs are fewer than its capacity."""
    if not agent.schedulable:
        return False
    if not agent.jobs:  # (a load is never negative: with jobs, the test below is the whole one)
        return any(i.healthy and i.capacity > 0 for i in agent.instances)
    load = slot_loads(agent, jobs)
    return any(i.healthy and i.capacity - load.get(i.instance_id, 0) > 0 for i in agent.instances)


def slot_loads(agent: AgentState, jobs: dict[str, JobRecord]) -> dict[str, int]:
    """Places taken on each of the agent's instances by its jobs (shared/slots.py)."""
    held: dict[str, int] = {}
    finishing: dict[str, int] = {}
    done = agent.finishing
    for job_id in agent.jobs:
        job = jobs.get(job_id)
        if job is None or (iid := job.instance_id) is None:
            continue
        held[iid] = held.get(iid, 0) + 1
        if done and job_id in done:
            finishing[iid] = finishing.get(iid, 0) + 1
    if not finishing:  # nothing finishing: every held job takes a place
        return held
    capacity = {i.instance_id: i.capacity for i in agent.instances}
    return {
        iid: slot_load(n, finishing.get(iid, 0), capacity.get(iid, 0)) for iid, n in held.items()
    }


def agent_view(
    agent: AgentState, jobs: dict[str, JobRecord], recent_window_s: float, now: float
) -> AgentView:
    """`build_view`, built again only when what it is built from changed since the last call.

    The key holds the objects the view reads: the agent's snapshot, inventory and finishing
    set are replaced, never changed in place, and so are job records (a job's change is a new
    record in `jobs`); the deques of recent work count their changes (`ran_count`). Only the
    count of recent failures depends on `now`: it is counted on every call."""
    held = tuple([jobs.get(job_id) for job_id in agent.jobs])
    key = (
        agent.status,
        agent.draining,
        agent.snapshot_at,
        agent.host,
        agent.gpus,
        agent.instances,
        agent.labels,
        agent.models,
        agent.node_classes,
        agent.finishing,
        agent.ran_count,
        tuple(agent.recent_hashes),
        recent_window_s,
        held,
    )
    failures = recent_failures(agent, recent_window_s, now)
    cached = agent.view_cache
    if cached is not None and cached[0] == key:
        view = cached[1]
        if view.recent_failures == failures:
            return view
        return dataclasses.replace(view, recent_failures=failures)
    view = build_view(agent, jobs, recent_window_s, now)
    agent.view_cache = (key, view)
    return view


def recent_failures(agent: AgentState, recent_window_s: float, now: float) -> int:
    return sum(1 for t in agent.recent_failures if now - t < recent_window_s)


def build_view(
    agent: AgentState, jobs: dict[str, JobRecord], recent_window_s: float, now: float
) -> AgentView:
    """Scheduler input for one agent: capacity minus the reservations of its active jobs."""
    reserved: dict[int, int] = {}
    unallocated: dict[int, int] = {}
    active = slot_loads(agent, jobs)
    ram_reserved = 0
    ram_unallocated = 0
    cpu_reserved = 0.0
    for job_id in agent.jobs:
        job = jobs.get(job_id)
        if job is None:
            continue
        res = job.spec.resources
        ram_reserved += res.ram_mb
        cpu_reserved += res.cpu
        # A job the last snapshot could not yet see has not allocated its memory.
        unseen = (
            job.status == JobStatus.ASSIGNED
            or job.timestamps.get(JobStatus.RUNNING.value, 0.0) >= agent.snapshot_at
        )
        if unseen:
            ram_unallocated += res.ram_mb
        if job.gpu_index is not None:
            reserved[job.gpu_index] = reserved.get(job.gpu_index, 0) + job.vram_mb
            if unseen:
                unallocated[job.gpu_index] = unallocated.get(job.gpu_index, 0) + job.vram_mb
    gpus = tuple(
        GpuView(
            index=g.index,
            name=g.name,
            vram_total_mb=g.vram_total_mb,
            vram_free_mb=g.vram_free_mb,
            reserved_mb=reserved.get(g.index, 0),
            unallocated_mb=unallocated.get(g.index, 0),
        )
        for g in agent.gpus
    )
    slots = tuple(
        SlotView(
            instance_id=i.instance_id,
            gpu_index=i.gpu_index,
            healthy=i.healthy,
            capacity=i.capacity,
            active=active.get(i.instance_id, 0),
            recent=frozenset(agent.recent_by_instance.get(i.instance_id, ())),
        )
        for i in agent.instances
    )
    return AgentView(
        agent_id=agent.agent_id,
        schedulable=agent.schedulable,
        labels=agent.labels,
        ram_available_mb=max(0, agent.host.ram_available_mb - ram_unallocated),
        ram_reserved_mb=ram_reserved,
        ram_total_mb=agent.host.ram_total_mb,
        cpu_count=agent.host.cpu_count,
        cpu_reserved=cpu_reserved,
        gpus=gpus,
        slots=slots,
        models=agent.models,
        recent_hashes=tuple(reversed(agent.recent_hashes)),
        recent_failures=recent_failures(agent, recent_window_s, now),
        node_classes=agent.node_classes,
    )
