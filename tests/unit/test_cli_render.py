"""Terminal rendering: bars, times, progress lines and tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.client.models import Agent, Gpu, Host, Job
from comfyfleet.render import (
    agents_table,
    bar,
    clock,
    eta,
    instances_table,
    job_detail,
    jobs_table,
    progress_line,
    vram_bar,
)

pytestmark = pytest.mark.timeout(30)


@given(st.one_of(st.none(), st.floats(-2, 3, allow_nan=False)), st.integers(1, 60))
def test_bar_has_the_width_and_fills_monotonically(fraction: float | None, width: int) -> None:
    text = bar(fraction, width)
    assert len(text) == width and set(text) <= {"#", "."}
    if fraction is not None:
        assert text.count("#") == round(max(0.0, min(1.0, fraction)) * width)


@given(
    st.integers(0, 200_000),
    st.integers(-10, 200_000),
    st.integers(-10, 200_000),
    st.integers(1, 60),
)
def test_vram_bar_is_always_its_width(total: int, used: int, reserved: int, width: int) -> None:
    text = vram_bar(total, used, reserved, width)
    assert len(text) == width
    if total > 0:
        assert text == "#" * text.count("#") + "=" * text.count("=") + "." * text.count(".")


def test_vram_bar_shows_used_reserved_and_free() -> None:
    assert vram_bar(24000, 6000, 12000, 8) == "##==...."
    assert vram_bar(24000, 12000, 6000, 8) == "####...."


@given(st.floats(0.001, 1.0), st.floats(0.1, 10_000))
def test_eta_is_the_remaining_time_at_the_rate_so_far(fraction: float, elapsed: float) -> None:
    remaining = eta(fraction, elapsed)
    assert remaining is not None and remaining >= 0
    assert remaining + elapsed == pytest.approx(elapsed / fraction)


def test_eta_and_clock_edges() -> None:
    assert eta(None, 5) is None and eta(0.0, 5) is None and eta(0.5, None) is None
    assert clock(None) == "--:--" and clock(75) == "1:15" and clock(3725) == "1:02:05"


def test_eta_uses_the_learned_duration_until_the_rate_says_longer() -> None:
    assert eta(None, None, expected_s=12.0) == 12.0  # not started: the whole estimate
    assert eta(None, 4.0, expected_s=12.0) == 8.0  # no progress yet: what the estimate leaves
    assert eta(0.5, 4.0, expected_s=12.0) == 8.0  # the estimate is longer than the rate
    assert eta(0.1, 4.0, expected_s=12.0) == pytest.approx(36.0)  # slower than learned
    assert eta(None, 20.0, expected_s=12.0) == 0.0  # overdue: never negative
    line = progress_line("RUNNING", {}, running_since=100.0, now=103.0, expected_s=10.0)
    assert "eta 0:07" in line


def test_progress_line_names_node_step_and_times() -> None:
    line = progress_line(
        "RUNNING",
        {"fraction": 0.25, "node_type": "KSampler", "value": 5, "max": 20},
        running_since=100.0,
        now=110.0,
        agent_id="a1",
    )
    assert "25%" in line and "KSampler 5/20" in line and "on a1" in line
    assert "elapsed 0:10" in line and "eta 0:30" in line
    assert "100%" in progress_line("COMPLETED", {}, None, 0.0)


def test_tables() -> None:
    job = Job(
        id="j1", status="QUEUED", created_at=0.0, pending_reason="no agent has a GPU with 40000 MB"
    )
    text = jobs_table([job], now=30.0)
    assert text.splitlines()[0].split() == ["ID", "STATUS", "PROGRESS", "AGENT", "AGE", "NOTE"]
    assert "j1" in text and "40000 MB" in text and "30s" in text
    agent = Agent(
        id="a1",
        status="ONLINE",
        jobs=["j2"],
        host=Host(cpu_count=8, ram_total_mb=65536, ram_available_mb=32768),
        gpus=[
            Gpu(
                index=0,
                name="RTX 4090",
                vram_total_mb=24576,
                vram_used_mb=6144,
                vram_reserved_mb=12288,
                vram_free_mb=18432,
            )
        ],
    )
    text = agents_table([agent])
    assert "a1" in text and "ONLINE" in text and "[#####=====..........]" in text
    assert "free 18.0 of 24.0G" in text and " ok " in text
    sick = Agent(id="a2", status="ONLINE", instances=[{"instance_id": "0", "healthy": False}])
    assert "comfyui down: 0" in agents_table([sick])
    lost = Agent(id="a3", status="LOST", seen_ago_s=120.0)
    assert "silent 2m" in agents_table([lost])
    assert "status   QUEUED" in job_detail(job)


def test_instances_table_shows_state_uptime_and_the_last_restart() -> None:
    now = 10_000.0
    managed = {
        "instance_id": "0",
        "kind": "process",
        "state": "ready",
        "up_since": now - 300,
        "last_restart_reason": "hung_prompt",
        "restart_counts": {"exited": 2, "hung_prompt": 1},
        "restarts": [{"at": now - 310, "reason": "hung_prompt", "detail": "", "job_id": None}],
    }
    broken = {"instance_id": "1", "kind": "docker", "state": "unhealthy", "up_since": None}
    external = {"instance_id": "0", "healthy": False}
    text = instances_table(
        [
            Agent(id="a1", status="ONLINE", instances=[managed, broken]),
            Agent(id="a2", status="ONLINE", instances=[external]),
        ],
        now,
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "AGENT", "INSTANCE", "KIND", "STATE", "UPTIME", "RESTARTS", "LAST", "RESTART"
    ]  # fmt: skip
    assert lines[1].split() == [
        "a1",
        "0",
        "process",
        "ready",
        "5m",
        "3",
        "hung_prompt",
        "5m",
        "ago",
    ]
    assert lines[2].split() == ["a1", "1", "docker", "unhealthy", "-", "0", "-"]
    assert lines[3].split() == ["a2", "0", "external", "down", "-", "-", "-"]
