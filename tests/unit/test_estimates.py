"""Learned VRAM and duration estimates, and the fleet inventory gap (pure); the ETA: test_eta."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator.estimates import (
    MAX_SAMPLES,
    Estimate,
    expected,
    learned_vram_mb,
)
from comfyfleet.coordinator.eta import Expected


@given(
    st.lists(st.tuples(st.floats(0, 100), st.integers(1, 80000)), min_size=1, max_size=20),
    st.floats(1.0, 2.0),
)
def test_reservation_covers_every_recent_peak_times_the_margin(
    samples: list[tuple[float, int]], margin: float
) -> None:
    est = Estimate()
    for d, v in samples:
        est = est.add(d, v)
    recent = samples[-MAX_SAMPLES:]
    table = {("s:x", "GPU"): est}
    vram = learned_vram_mb(table, "s:x", margin)
    assert vram is not None and vram >= max(v for _, v in recent) * margin - 1e-6
    assert est.samples == len(recent)
    learned = expected(table, "s:x", "GPU")
    assert learned is not None and learned.total_s == sum(d for d, _ in recent) / len(recent)
    assert learned_vram_mb(table, "s:other", margin) is None


def test_largest_gpu_model_estimate_wins_and_unknown_gpu_takes_the_slowest() -> None:
    table = {("s", "A"): Estimate().add(2.0, 3000), ("s", "B"): Estimate().add(5.0, 5000)}
    assert learned_vram_mb(table, "s", 1.0) == 5000
    assert (expected(table, "s", "A") or Expected()).total_s == 2.0
    assert (expected(table, "s", None) or Expected()).total_s == 5.0
    assert Estimate().add(float("nan"), 0).samples == 0
    # the margin never makes a job that ran fit nowhere, and never goes below the peak
    assert learned_vram_mb(table, "s", 1.25, largest_gpu_mb=6000) == 6000
    assert learned_vram_mb(table, "s", 1.25, largest_gpu_mb=4000) == 5000
    assert learned_vram_mb(table, "s", 1.25, largest_gpu_mb=80000) == 6250
