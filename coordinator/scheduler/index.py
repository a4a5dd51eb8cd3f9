"""The fast path: find the best-fit slot for a job without scanning the whole fleet.

`SlotIndex` keeps the slots that can take a job now (usable, a free slot, not held) in two sorted
lists, one per kind (CPU-only instances, GPU instances), keyed

    (free VRAM of the GPU (0 for CPU), free host RAM, recent failures, sid)

Slot ids follow (agent_id, instance_id), so this order is the rank order of `rank.py` without the
avoid and warm terms (the fit class is monotonic in free VRAM). For a job needing V MB VRAM and
R MB RAM, a bisection to (V, R) lands on the first slot with enough VRAM; the first slot from
there that passes the remaining checks (labels, models, inventory, GPU name via `StaticFilter`,
blocked/avoided agents, CPU) is the best fit. Warm-cache slots
get their own lists per (workflow shape, model files) (built lazily), searched the same way: the
better of the two firsts by rank key is the best slot overall (a warm first beats a cold one in the
same fit class). Agents the job should avoid are searched last, one by one.

After a placement only the slots whose key changed (same GPU, same host) move.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Collection
from typing import Any

from comfyfleet.coordinator.scheduler.capacity import KIND_CPU, KIND_GPU, Capacity
from comfyfleet.coordinator.scheduler.feasibility import gpu_name_matches
from comfyfleet.coordinator.scheduler.model import AgentView, JobRequest, Signature
from comfyfleet.coordinator.scheduler.rank import candidate_key

Key = tuple[int, int, int, int]
NEG_INF = float("-inf")


def signature(job: JobRequest) -> Signature:
    """The static constraints of a job (model.static_signature, derived once per request)."""
    return job.signature


class StaticFilter:
    """Which slots pass the label, model and GPU-name constraints of a signature (cached)."""

    def __init__(self, cap: Capacity) -> None:
        self._cap = cap
        self._by_sig: dict[Signature, bytearray] = {}
        self._labels: dict[frozenset[tuple[str, str]], bytearray] = {}
        self._models: dict[frozenset[str], bytearray] = {}
        self._names: dict[str, bytearray] = {}
        self._inventory: dict[tuple[frozenset[str], frozenset[str]], bytearray] = {}

    def allowed(self, job: JobRequest) -> bytearray | None:
        """A per-slot mask, or None when every slot passes."""
        if (
            not job.labels
            and not job.models
            and not job.model_refs
            and not job.node_classes
            and (job.gpus == 0 or job.gpu_name is None)
        ):
            return None
        sig = signature(job)
        mask = self._by_sig.get(sig)
        if mask is None:
            mask = self._by_sig[sig] = self._build(sig)
        return mask

    def _build(self, sig: Signature) -> bytearray:
        cap = self._cap
        _, labels, models, name, refs, classes = sig
        # same tests as labels_match / models_missing / inventory_has, as set inclusions
        lab = self._agent_mask(self._labels, labels, lambda a: labels <= a.labels.items())
        mod = self._agent_mask(self._models, models, lambda a: models <= a.models)
        inv = self._inventory.get((refs, classes))
        if inv is None:
            inv = self._inventory[(refs, classes)] = bytearray(
                a.node_classes is None or (refs <= a.models and classes <= a.node_classes)
                for a in cap.agents
            )
        gmask = None
        if name is not None:
            gmask = self._names.get(name)
            if gmask is None:
                gmask = bytearray(gpu_name_matches(name, g.name) for g in cap.gpus)
                self._names[name] = gmask
        out = bytearray(len(cap.slots))
        for sid, pos in enumerate(cap.slot_agent):
            if lab[pos] and mod[pos] and inv[pos]:
                gid = cap.slot_gpu[sid]
                out[sid] = 1 if gmask is None else (gid >= 0 and gmask[gid])
        return out

    def _agent_mask(
        self,
        cache: dict[Any, bytearray],
        key: frozenset[Any],
        test: Callable[[AgentView], bool],
    ) -> bytearray:
        mask = cache.get(key)
        if mask is None:
            mask = cache[key] = bytearray(bool(not key or test(a)) for a in self._cap.agents)
        return mask


class SlotIndex:
    def __init__(self, cap: Capacity) -> None:
        self.cap = cap
        self.failures = [a.recent_failures for a in cap.agents]
        self.main: list[list[Key]] = [[], []]  # by kind: KIND_CPU, KIND_GPU
        self.cur: list[Key | None] = [None] * len(cap.slots)
        self.warm: dict[tuple[int, str, tuple[str, ...]], list[Key]] = {}
        self.warm_member: list[list[list[Key]]] = [[] for _ in cap.slots]
        # warm key (shape hash or model file) -> slot ids that are warm for it
        self.warm_slots: dict[str, set[int]] = {}
        for pos, agent in enumerate(cap.agents):
            for h in set(agent.recent_hashes):
                self.warm_slots.setdefault(h, set()).update(cap.agent_slots[pos])
        for sid, slot in enumerate(cap.slots):
            for k in slot.recent:
                self.warm_slots.setdefault(k, set()).add(sid)
        for sid in range(len(cap.slots)):
            if cap.usable(sid) and cap.slot_free[sid] > 0 and cap.held_by[sid] is None:
                key = self._key(sid)
                self.cur[sid] = key
                self.main[cap.slot_kind[sid]].append(key)
        for keys in self.main:
            keys.sort()

    def _key(self, sid: int) -> Key:
        cap = self.cap
        pos = cap.slot_agent[sid]
        vram = cap.vram[cap.slot_gpu[sid]] if cap.slot_kind[sid] == KIND_GPU else 0
        return (vram, cap.ram[pos], self.failures[pos], sid)

    def open_slots(self, kind: int) -> int:
        return len(self.main[kind])

    # -- search ---------------------------------------------------------------------------------

    def best(
        self,
        job: JobRequest,
        allowed: bytearray | None,
        blocked: Collection[int],
        avoid: Collection[int],
    ) -> int | None:
        """The best-fit slot id for `job` (blocked/avoid: agent positions), or None."""
        kind = KIND_GPU if job.gpus == 1 else KIND_CPU
        keys = self.main[kind]
        if not keys:
            return None
        skip = set(blocked) | set(avoid) if avoid else blocked
        ram_start = job.ram_mb if job.ram_mb > 0 else NEG_INF
        start: tuple[float, float]
        if kind == KIND_CPU:
            start = (0, ram_start)  # every CPU key has 0 as its VRAM
        else:
            start = (job.vram_mb if job.vram_mb > 0 else NEG_INF, ram_start)
        first = self._first(keys, start, job, allowed, skip)
        if first is None:
            return self._best_avoided(job, kind, allowed, blocked, avoid) if avoid else None
        warm_keys = self._warm_list(kind, job)
        if warm_keys:
            warm = self._first(warm_keys, start, job, allowed, skip)
            if warm is not None and warm != first:
                cap = self.cap
                if candidate_key(job, cap, warm) < candidate_key(job, cap, first):
                    return warm
        return first

    def _first(
        self,
        keys: list[Key],
        start: tuple[float, float],
        job: JobRequest,
        allowed: bytearray | None,
        skip: Collection[int],
    ) -> int | None:
        ram_need = job.ram_mb
        cpu_need = job.cpu
        slot_agent = self.cap.slot_agent
        cpu = self.cap.cpu
        for i in range(bisect_left(keys, start), len(keys)):
            key = keys[i]
            if ram_need > 0 and key[1] < ram_need:
                continue
            sid = key[3]
            if allowed is not None and not allowed[sid]:
                continue
            pos = slot_agent[sid]
            if skip and pos in skip:
                continue
            if cpu_need > 0 and cpu[pos] < cpu_need:
                continue
            return sid
        return None

    def _best_avoided(
        self,
        job: JobRequest,
        kind: int,
        allowed: bytearray | None,
        blocked: Collection[int],
        avoid: Collection[int],
    ) -> int | None:
        cap = self.cap
        best = None
        for pos in sorted(avoid):
            if pos in blocked:
                continue
            for sid in cap.agent_slots[pos]:
                key = self.cur[sid]
                if key is None or cap.slot_kind[sid] != kind:
                    continue
                if allowed is not None and not allowed[sid]:
                    continue
                if kind == KIND_GPU and job.vram_mb > 0 and key[0] < job.vram_mb:
                    continue
                if job.ram_mb > 0 and key[1] < job.ram_mb:
                    continue
                if job.cpu > 0 and cap.cpu[pos] < job.cpu:
                    continue
                rank = candidate_key(job, cap, sid)
                if best is None or rank < best[0]:
                    best = (rank, sid)
        return None if best is None else best[1]

    def _warm_list(self, kind: int, job: JobRequest) -> list[Key] | None:
        refs = job.model_refs if self.warm_slots.keys() & set(job.model_refs) else ()
        lkey = (kind, job.workflow_hash, refs)
        lst = self.warm.get(lkey)
        if lst is not None:
            return lst
        sids = set(self.warm_slots.get(job.workflow_hash, ()))
        for m in refs:
            sids.update(self.warm_slots.get(m, ()))
        if not sids:
            return None
        cap = self.cap
        lst = []
        for sid in sorted(sids):
            key = self.cur[sid]
            if key is not None and cap.slot_kind[sid] == kind:
                lst.append(key)
                self.warm_member[sid].append(lst)
        lst.sort()
        self.warm[lkey] = lst
        return lst

    # -- updates --------------------------------------------------------------------------------

    def place(self, sid: int, job: JobRequest) -> None:
        """Commit `job` to slot `sid` and move the slots whose key changed."""
        cap = self.cap
        cap.commit(sid, job)
        if job.ram_mb:
            touched: list[int] = cap.agent_slots[cap.slot_agent[sid]]
        elif job.vram_mb and cap.slot_kind[sid] == KIND_GPU:
            touched = cap.gpu_slots[cap.slot_gpu[sid]]
        else:
            touched = [sid]
        for other in touched:
            self.refresh(other)
        if sid not in touched:
            self.refresh(sid)

    def refresh(self, sid: int) -> None:
        """Re-key slot `sid` after its capacity changed (drop it when full or held)."""
        old = self.cur[sid]
        if old is None:
            return
        cap = self.cap
        new = self._key(sid) if cap.slot_free[sid] > 0 and cap.held_by[sid] is None else None
        if new == old:
            return
        lists = [self.main[cap.slot_kind[sid]], *self.warm_member[sid]]
        for lst in lists:
            del lst[bisect_left(lst, old)]
            if new is not None:
                insort(lst, new)
        self.cur[sid] = new
        if new is None:
            self.warm_member[sid] = []
