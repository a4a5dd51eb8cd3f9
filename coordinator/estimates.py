"""Learned peak VRAM and run time per (workflow shape, GPU name) — pure values and moves.

Every completed job with a measured VRAM peak adds a sample to its (shape hash, GPU name) entry.
A job that declares no `vram_mb` reserves the largest estimate for its shape over every GPU
model, times a safety margin, instead of the flat default; the job view shows an ETA from the
duration estimate. The coordinator keeps the table in memory and rebuilds it from the stored
recent completed jobs after a restart (each keeps its peak, GPU name and run time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_SAMPLES = 8  # the estimate follows the last few runs: models and drivers change
Key = tuple[str, str]  # (shape hash, GPU name)


@dataclass(frozen=True, slots=True)
class Estimate:
    durations_s: tuple[float, ...] = ()
    vram_peaks_mb: tuple[int, ...] = ()

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
    def vram_peak_mb(self) -> int | None:
        """The highest recent peak: a reservation must hold the worst recent run."""
        return max(self.vram_peaks_mb) if self.vram_peaks_mb else None

    def add(self, duration_s: float | None, vram_peak_mb: int | None) -> Estimate:
        durations = self.durations_s
        if duration_s is not None and math.isfinite(duration_s) and duration_s >= 0:
            durations = (*durations, duration_s)[-MAX_SAMPLES:]
        peaks = self.vram_peaks_mb
        if vram_peak_mb is not None and vram_peak_mb > 0:
            peaks = (*peaks, vram_peak_mb)[-MAX_SAMPLES:]
        return Estimate(durations, peaks)


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


def expected_duration_s(
    table: Mapping[Key, Estimate], shape: str, gpu_name: str | None
) -> float | None:
    """On the job's GPU model when known and measured there; else the slowest GPU model."""
    if gpu_name is not None:
        est = table.get((shape, gpu_name))
        if est is not None and est.duration_s is not None:
            return est.duration_s
    known = [e.duration_s for (s, _), e in table.items() if s == shape and e.duration_s]
    return max(d for d in known if d is not None) if known else None


def eta(
    duration_s: float | None,
    status: str,
    running_since: float | None,
    fraction: float | None,
    now: float,
) -> dict[str, Any] | None:
    """Expected total and remaining seconds of a job (None when nothing is known).

    Running: the larger of what the estimate leaves and what the progress so far implies;
    waiting: the whole estimate (queue wait not included)."""
    if status in ("COMPLETED", "FAILED", "CANCELLED"):
        return None
    if status != "RUNNING" or running_since is None:
        if duration_s is None:
            return None
        return {"expected_s": round(duration_s, 3), "remaining_s": round(duration_s, 3)}
    elapsed = max(0.0, now - running_since)
    remaining: float | None = None
    if duration_s is not None:
        remaining = max(0.0, duration_s - elapsed)
    if fraction is not None and 0.05 <= fraction < 1.0:
        by_progress = elapsed * (1.0 - fraction) / fraction
        remaining = by_progress if remaining is None else max(remaining, by_progress)
    if remaining is None:
        return None
    return {
        "expected_s": round(duration_s, 3) if duration_s is not None else None,
        "elapsed_s": round(elapsed, 3),
        "remaining_s": round(remaining, 3),
        "eta_at": round(now + remaining, 3),
    }
