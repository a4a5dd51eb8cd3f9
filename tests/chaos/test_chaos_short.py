"""A short seeded chaos run: agents, simulators and the coordinator killed while jobs flow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import LEADER_FAULTS, ChaosConfig, Figures, run_chaos

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_short_seeded_chaos_run(tmp_path: Path) -> None:
    cfg = ChaosConfig(
        seed=4,
        jobs=40,
        agents=3,
        duration_s=25.0,
        fault_gap_s=(1.5, 3.5),
        coordinator_kills=2,
        stop_s=(4.0, 10.0),
        settle_s=150.0,
    )
    figures = await run_chaos(cfg, tmp_path)
    assert sum(figures.faults.values()) >= 6, figures.faults
    assert figures.faults["coordinator_kill"] == 2, figures.faults
    assert_clean(figures, cfg)


def assert_clean(figures: Figures, cfg: ChaosConfig) -> None:
    print(figures.report())
    assert figures.verdict.accepted == cfg.jobs
    # nothing asked any job to fail or be cancelled: every one completes (default retries)
    assert figures.verdict.by_status == {"COMPLETED": cfg.jobs}, figures.report()
    assert figures.verdict.unexpected == 0, figures.report()
    assert figures.verdict.violations == [], figures.report()
    assert figures.verdict.lost == 0 and figures.verdict.duplicated == 0
    assert figures.integrity == "ok"


async def test_short_seeded_chaos_run_with_three_coordinators_on_postgres(tmp_path: Path) -> None:
    """The same with three coordinators on one PostgreSQL store: each coordinator fault hits the
    leader (SIGKILL, SIGSTOP past its lease, its database connections killed)."""
    cfg = ChaosConfig(
        seed=5,
        jobs=40,
        agents=3,
        duration_s=25.0,
        fault_gap_s=(1.5, 3.5),
        coordinator_kills=3,
        stop_s=(4.0, 10.0),
        settle_s=150.0,
        coordinators=3,
        store="postgres",
    )
    figures = await run_chaos(cfg, tmp_path)
    leader_faults = sum(figures.faults[k] for k in LEADER_FAULTS)
    assert leader_faults == 3, figures.faults
    assert_clean(figures, cfg)
