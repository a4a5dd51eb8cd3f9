"""Learned VRAM and duration estimates, ETA, and the fleet inventory gap (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator.estimates import (
    MAX_SAMPLES,
    Estimate,
    eta,
    expected_duration_s,
    learned_vram_mb,
)


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
    assert expected_duration_s(table, "s:x", "GPU") == sum(d for d, _ in recent) / len(recent)
    assert learned_vram_mb(table, "s:other", margin) is None


def test_largest_gpu_model_estimate_wins_and_unknown_gpu_takes_the_slowest() -> None:
    table = {("s", "A"): Estimate().add(2.0, 3000), ("s", "B"): Estimate().add(5.0, 5000)}
    assert learned_vram_mb(table, "s", 1.0) == 5000
    assert expected_duration_s(table, "s", "A") == 2.0
    assert expected_duration_s(table, "s", None) == 5.0
    assert Estimate().add(float("nan"), 0).samples == 0
    # the margin never makes a job that ran fit nowhere, and never goes below the peak
    assert learned_vram_mb(table, "s", 1.25, largest_gpu_mb=6000) == 6000
    assert learned_vram_mb(table, "s", 1.25, largest_gpu_mb=4000) == 5000
    assert learned_vram_mb(table, "s", 1.25, largest_gpu_mb=80000) == 6250


def test_eta_for_waiting_running_and_finished_jobs() -> None:
    assert eta(10.0, "QUEUED", None, None, 100.0) == {"expected_s": 10.0, "remaining_s": 10.0}
    running = eta(10.0, "RUNNING", 96.0, None, 100.0)
    assert running is not None and running["remaining_s"] == 6.0 and running["eta_at"] == 106.0
    slow = eta(10.0, "RUNNING", 90.0, 0.5, 100.0)  # progress says 10 s more, estimate 0
    assert slow is not None and slow["remaining_s"] == 10.0
    assert eta(None, "RUNNING", 90.0, None, 100.0) is None
    assert eta(10.0, "COMPLETED", 90.0, 1.0, 100.0) is None
