"""Learned peak VRAM and run time per (workflow shape, slot) — pure values and moves.

Every completed job adds a sample to its (shape hash, slot) entry: its run time, its per-node
execution times and, when measured, its VRAM peak. The slot is the GPU model the job ran on, or
`CPU_SLOT` for a CPU-only ComfyUI. A job that declares no `vram_mb` reserves the largest estimate
for its shape over every GPU model, times a safety margin, instead of the flat default; the job
view shows an ETA from the duration estimate (`eta.py`). The coordinator keeps the table in
memory and rebuilds it from the stored recent completed jobs after a restart (each keeps its
peak, GPU name, run time and profile).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.coordinator.eta import Expected

MAX_SAMPLES = 8  # the estimate follows the last few runs: models and drivers change
CPU_SLOT = "cpu"  # the slot name of a CPU-only ComfyUI (a GPU slot is named by its GPU model)
Key = tuple[str, str]  # (shape hash, slot)


def slot_of(gpu_name: str | None, gpu_index: int | None) -> str | None:
    """The slot a job ran on, as the table names it: its GPU model, `CPU_SLOT` for a job on no
    GPU, None when it had a GPU whose model is not known."""
    if gpu_index is None:
        return CPU_SLOT
    return gpu_name


def node_seconds(profile: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds each executed node took, from a completed job's profile (cached nodes left out)."""
    out: dict[str, float] = {}
    for entry in profile:
        node, ms = entry.get("node"), entry.get("ms")
        if isinstance(node, str) and isinstance(ms, int | float) and not entry.get("cached"):
            out[node] = max(0.0, float(ms)) / 1000.0
    return out


def _recent(samples: tuple[float, ...], value: float) -> tuple[float, ...]:
    return (*samples, value)[-MAX_SAMPLES:]


@dataclass(frozen=True, slots=True)
class Estimate:
    durations_s: tuple[float, ...] = ()
    vram_peaks_mb: tuple[int, ...] = ()
    # executed node id -> its recent execution times (node ids are part of the shape)
    node_samples: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return len(self.durations_s)

    @property
    def duration_s(self) -> float | None:
        """Mean of the recent run times."""
        if not self.durations_s:
            return None
        return sum(self.durations_s) / len(self.durations_s)

    @property
    def node_s(self) -> dict[str, float]:
        """Mean of each node's recent execution times."""
        return {n: sum(s) / len(s) for n, s in self.node_samples.items() if s}

    @property
    def vram_peak_mb(self) -> int | None:
        """The highest recent peak: a reservation must hold the worst recent run."""
        return max(self.vram_peaks_mb) if self.vram_peaks_mb else None

    def add(
        self,
        duration_s: float | None,
        vram_peak_mb: int | None,
        nodes: Mapping[str, float] | None = None,
    ) -> Estimate:
        durations = self.durations_s
        if duration_s is not None and math.isfinite(duration_s) and duration_s >= 0:
            durations = _recent(durations, duration_s)
        peaks = self.vram_peaks_mb
        if vram_peak_mb is not None and vram_peak_mb > 0:
            peaks = (*peaks, vram_peak_mb)[-MAX_SAMPLES:]
        node_samples = dict(self.node_samples)
        for node, seconds in (nodes or {}).items():
            if math.isfinite(seconds) and seconds >= 0:
                node_samples[node] = _recent(node_samples.get(node, ()), seconds)
        return Estimate(durations, peaks, node_samples)


def learned_vram_mb(
    table: Mapping[Key, Estimate], shape: str, margin: float, largest_gpu_mb: int | None = None
) -> int | None:
    """The reservation for a job of `shape` that declares none: the largest peak seen for the
    shape on any GPU model, times `margin` — but never more than the largest GPU of the fleet
    (the margin must not make a job that ran fit nowhere) nor less than the peak itself. None
    when the shape never ran with a measurement."""
    peaks = [e.vram_peak_mb for (s, _), e in table.items() if s == shape and e.vram_peak_mb]
    if not peaks:
        return None
    peak = max(p for p in peaks if p is not None)
    want = int(math.ceil(peak * margin))
    if largest_gpu_mb is not None:
        want = max(peak, min(want, largest_gpu_mb))
    return want


def expected(table: Mapping[Key, Estimate], shape: str, slot: str | None) -> Expected | None:
    """What a job of `shape` is expected to take on `slot`: as measured there when it was;
    else (slot unknown or never measured) as on the slowest slot that ran the shape."""
    est = table.get((shape, slot)) if slot is not None else None
    if est is None or est.duration_s is None:
        ran = [e for (s, _), e in table.items() if s == shape and e.duration_s is not None]
        est = max(ran, key=lambda e: e.duration_s or 0.0, default=None)
    if est is None:
        return None
    return Expected(total_s=est.duration_s, node_s=est.node_s)
