"""Why a job was not placed, aggregated across the fleet like a pending pod's message.

Computed only for jobs a plan left unplaced, and cheaply: per job signature once, the hardware
shapes its eligible slots come in (and, only when none is eligible, the static checker pipeline to
name the one that leaves no candidate); per (signature, blocked agents) once, a capacity summary
read off the index of open slots; per job O(shapes). Messages:

- never: "no agent is online", "no agent has labels gpu=a100", "no GPU matches 'A100*' (…)",
  "no agent has a GPU with 40000 MB; largest is 24576 MB", "blocked after failures on every
  eligible agent (…)";
- waiting: "waiting for capacity: all 40 eligible instances are busy", or which resource the free
  ones lack ("… the 3 free one(s) have at most 6000 MB free VRAM, needs 8000 MB").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from comfyfleet.coordinator.scheduler.capacity import KIND_CPU, KIND_GPU
from comfyfleet.coordinator.scheduler.feasibility import AGENT_CHECKS, SLOT_CHECKS
from comfyfleet.coordinator.scheduler.index import Signature, SlotIndex, StaticFilter, signature
from comfyfleet.coordinator.scheduler.model import AgentView, JobRequest
from comfyfleet.coordinator.scheduler.starvation import Hold

MAX_LISTED = 5
Shape = tuple[int, int, int]  # (GPU VRAM total or 0, host RAM total, host CPU count)


@dataclass(slots=True)
class Summary:
    total: int = 0
    busy: int = 0
    held: int = 0
    open: int = 0
    max_vram: int | None = None
    max_ram: int | None = None
    max_cpu: float | None = None


def _listed(items: list[str]) -> str:
    more = f", … ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def inventory_gap(job: JobRequest, agents: Sequence[AgentView]) -> str:
    """What the workflow needs that no one of `agents` has in full: the items missing on every
    agent, or, when each exists somewhere, the full list."""
    known = [a for a in agents if a.node_classes is not None]
    want_models = sorted(set(job.model_refs))
    want_classes = sorted(set(job.node_classes))
    models = [m for m in want_models if all(m not in a.models for a in known)]
    classes = [
        c
        for c in want_classes
        if all(a.node_classes is None or c not in a.node_classes for a in known)
    ]
    if not models and not classes:
        models, classes = want_models, want_classes
        lead = "all of "
    else:
        lead = ""
    parts = ([f"model files {_listed(models)}"] if models else []) + (
        [f"node classes {_listed(classes)}"] if classes else []
    )
    return lead + " and ".join(parts)


class Explainer:
    """Pending reasons against the state a plan ended in."""

    def __init__(
        self, index: SlotIndex, statics: StaticFilter, holds: Mapping[str, Hold], now: float
    ) -> None:
        cap = index.cap
        self.cap = cap
        self.index = index
        self.statics = statics
        self.holds = holds
        self.now = now
        # usable slot ids by kind, grouped by hardware shape
        self.groups: tuple[dict[Shape, list[int]], dict[Shape, list[int]]] = ({}, {})
        for kind in (KIND_CPU, KIND_GPU):
            for sid in cap.usable_by_kind[kind]:
                pos = cap.slot_agent[sid]
                agent = cap.agents[pos]
                vram = cap.gpus[cap.slot_gpu[sid]].vram_total_mb if kind == KIND_GPU else 0
                shape = (vram, agent.ram_total_mb, agent.cpu_count)
                self.groups[kind].setdefault(shape, []).append(sid)
        self._static: dict[Signature, str | None] = {}
        self._shapes: dict[tuple[Signature, frozenset[int]], list[Shape]] = {}
        self._summaries: dict[tuple[Signature, frozenset[int]], Summary] = {}
        self._texts: dict[tuple[tuple[Signature, frozenset[int]], int, int, float], str] = {}

    def reason(self, job: JobRequest) -> str:
        cap = self.cap
        sig = signature(job)
        allowed = self.statics.allowed(job)
        blocked: frozenset[int] = frozenset()
        if job.blocked_agents:
            blocked = frozenset(cap.agent_pos[a] for a in job.blocked_agents if a in cap.agent_pos)
        key = (sig, blocked)
        text = self._texts.get((key, job.vram_mb, job.ram_mb, job.cpu))
        if text is None:
            text = self._texts[(key, job.vram_mb, job.ram_mb, job.cpu)] = self._explain(
                job, key, allowed
            )
        hold = self.holds.get(job.job_id)
        if hold is not None:
            text += f"; {hold.describe()} (queued {self.now - job.queued_at:.0f} s)"
        return text

    def _explain(
        self, job: JobRequest, key: tuple[Signature, frozenset[int]], allowed: bytearray | None
    ) -> str:
        sig, blocked = key
        shapes = self._shapes.get(key)
        if shapes is None:
            shapes = self._shapes[key] = self._eligible_shapes(job, allowed, blocked)
        if not shapes:
            return self._never_static(job, sig, allowed, blocked)
        never = self._never_by_totals(job, shapes)
        if never is not None:
            return never
        summary = self._summaries.get(key)
        if summary is None:
            summary = self._summaries[key] = self._summarise(job, allowed, blocked)
        return "waiting for capacity: " + self._waiting(job, summary)

    def _eligible_shapes(
        self, job: JobRequest, allowed: bytearray | None, blocked: frozenset[int]
    ) -> list[Shape]:
        slot_agent = self.cap.slot_agent
        out = []
        for shape, sids in self.groups[KIND_GPU if job.gpus == 1 else KIND_CPU].items():
            if any((allowed is None or allowed[s]) and slot_agent[s] not in blocked for s in sids):
                out.append(shape)
        return out

    # -- never ----------------------------------------------------------------------------------

    def _never_static(
        self, job: JobRequest, sig: Signature, allowed: bytearray | None, blocked: frozenset[int]
    ) -> str:
        if blocked and self._shapes.setdefault(
            (sig, frozenset()), self._eligible_shapes(job, allowed, frozenset())
        ):
            cap = self.cap
            kind = KIND_GPU if job.gpus == 1 else KIND_CPU
            names = sorted(
                {
                    cap.agents[cap.slot_agent[s]].agent_id
                    for s in cap.usable_by_kind[kind]
                    if (allowed is None or allowed[s]) and cap.slot_agent[s] in blocked
                }
            )
            return f"blocked after failures on every eligible agent ({_listed(names)})"
        text = self._static.get(sig)
        if text is None:
            text = self._static[sig] = self._first_empty_stage(job)
        return text

    def _first_empty_stage(self, job: JobRequest) -> str:
        """Name the first checker of the static pipeline that leaves no candidate. Runs only for
        signatures no slot can ever take; agent-level checkers run once per agent."""
        cap = self.cap
        if not cap.agents:
            return "no agent is online"
        if not cap.slots:
            if not any(a.schedulable for a in cap.agents):
                return self._offline()
            return "no agent reports a ComfyUI instance"
        sids = list(range(len(cap.slots)))
        for checker in AGENT_CHECKS:
            agents = {cap.slot_agent[s] for s in sids}
            ok = {
                pos
                for pos in agents
                if checker.check(job, cap.agents[pos], cap.slots[cap.agent_slots[pos][0]], cap)
                is None
            }
            passed = [s for s in sids if cap.slot_agent[s] in ok]
            if not passed:
                return self._never(checker.code, job, sids)
            sids = passed
        for checker in SLOT_CHECKS:
            passed = [
                s
                for s in sids
                if checker.check(job, cap.agents[cap.slot_agent[s]], cap.slots[s], cap) is None
            ]
            if not passed:
                return self._never(checker.code, job, sids)
            sids = passed
        return "no agent can take it"  # unreachable while the mask and the checkers agree

    def _offline(self) -> str:
        return f"no agent is online ({len(self.cap.agents)} known, all offline or draining)"

    def _never(self, code: str, job: JobRequest, sids: list[int]) -> str:
        cap = self.cap
        agents = [cap.agents[p] for p in sorted({cap.slot_agent[s] for s in sids})]
        if code == "offline":
            return self._offline()
        if code == "labels":
            want = sorted(f"{k}={v}" for k, v in job.labels.items())
            have = {f"{k}={v}" for a in agents for k, v in a.labels.items()}
            nowhere = [kv for kv in want if kv not in have]
            if nowhere:
                return "no agent has labels " + _listed(nowhere)
            return "no agent has all of the labels " + _listed(want)
        if code == "models":
            want = sorted(set(job.models))
            present: set[str] = set().union(*(a.models for a in agents))
            nowhere = [m for m in want if m not in present]
            if nowhere:
                return "no agent has models " + _listed(nowhere)
            return "no agent has all of the models " + _listed(want)
        if code == "inventory":
            return "no agent's ComfyUI has " + inventory_gap(job, agents)
        if code == "unhealthy":
            return f"no healthy ComfyUI instance on the {len(agents)} eligible agent(s)"
        if code == "kind":
            what = "on a GPU" if job.gpus == 1 else "that is CPU-only"
            return f"no eligible agent has a ComfyUI instance {what}"
        if code == "gpu_name":
            names = sorted({cap.gpus[cap.slot_gpu[s]].name for s in sids if cap.slot_gpu[s] >= 0})
            return f"no GPU matches '{job.gpu_name}' (eligible GPUs: {_listed(names)})"
        return f"no agent can take it ({code})"

    def _never_by_totals(self, job: JobRequest, shapes: list[Shape]) -> str | None:
        if job.gpus == 1:
            largest = max(s[0] for s in shapes)
            if largest < job.vram_mb:
                return f"no agent has a GPU with {job.vram_mb} MB; largest is {largest} MB"
            shapes = [s for s in shapes if s[0] >= job.vram_mb]
        largest_ram = max(s[1] for s in shapes)
        if largest_ram < job.ram_mb:
            return f"no agent has {job.ram_mb} MB RAM; largest is {largest_ram} MB"
        shapes = [s for s in shapes if s[1] >= job.ram_mb]
        largest_cpu = max(s[2] for s in shapes)
        if largest_cpu < job.cpu:
            return f"no agent has {job.cpu:g} CPUs; largest is {largest_cpu}"
        return None

    # -- waiting --------------------------------------------------------------------------------

    def _summarise(
        self, job: JobRequest, allowed: bytearray | None, blocked: frozenset[int]
    ) -> Summary:
        """Counts over the eligible slots; only the open ones (in the index) are visited."""
        cap = self.cap
        kind = KIND_GPU if job.gpus == 1 else KIND_CPU
        slot_agent = cap.slot_agent
        out = Summary()
        for sids in self.groups[kind].values():
            out.total += sum(
                1 for s in sids if (allowed is None or allowed[s]) and slot_agent[s] not in blocked
            )
        out.held = (
            sum(
                1
                for s, holder in enumerate(cap.held_by)
                if holder is not None
                and cap.slot_kind[s] == kind
                and cap.usable(s)
                and (allowed is None or allowed[s])
                and slot_agent[s] not in blocked
            )
            if self.holds
            else 0
        )
        for key in self.index.main[kind]:
            s = key[3]
            pos = slot_agent[s]
            if (allowed is not None and not allowed[s]) or pos in blocked:
                continue
            out.open += 1
            if kind == KIND_GPU:
                out.max_vram = key[0] if out.max_vram is None else max(out.max_vram, key[0])
            ram, cpu = cap.ram[pos], cap.cpu[pos]
            out.max_ram = ram if out.max_ram is None else max(out.max_ram, ram)
            out.max_cpu = cpu if out.max_cpu is None else max(out.max_cpu, cpu)
        out.busy = out.total - out.held - out.open
        return out

    def _waiting(self, job: JobRequest, s: Summary) -> str:
        held = f", {s.held} held for starving jobs" if s.held else ""
        if s.open == 0:
            if not s.held:
                return f"all {s.total} eligible instances are busy"
            return f"{s.busy} of {s.total} eligible instances busy{held}"
        lead = f"{s.busy} of {s.total} eligible instances busy{held}; " if s.busy + s.held else ""
        free = f"the {s.open} free one(s) have at most"
        if job.gpus == 1 and s.max_vram is not None and s.max_vram < job.vram_mb:
            return f"{lead}{free} {s.max_vram} MB free VRAM, needs {job.vram_mb} MB"
        if s.max_ram is not None and s.max_ram < job.ram_mb:
            return f"{lead}{free} {s.max_ram} MB free RAM, needs {job.ram_mb} MB"
        if s.max_cpu is not None and s.max_cpu < job.cpu:
            return f"{lead}{free} {s.max_cpu:g} CPU free, needs {job.cpu:g}"
        parts = [f"{job.vram_mb} MB VRAM"] if job.gpus == 1 else []
        parts += [f"{job.ram_mb} MB RAM", f"{job.cpu:g} CPU"]
        return f"{lead}none of the {s.open} free one(s) has {', '.join(parts)} free at once"
