"""Scheduler: plan() — best fit, ordering, no over-commit, holds, limits, pending reasons."""

from __future__ import annotations

import pytest

from comfyfleet.coordinator.scheduler import SchedulerError, plan
from comfyfleet.coordinator.scheduler.bench import make_agents, make_jobs
from comfyfleet.coordinator.scheduler.model import AgentView, JobRequest, PlanResult
from tests.unit.test_scheduler_support import NOW, agent, gpu, job, slot

OLD = NOW - 1000  # queued long enough to starve (default starvation_s = 300)


def where(result: PlanResult) -> dict[str, tuple[str, str]]:
    return {p.job_id: (p.agent_id, p.instance_id) for p in result.placements}


def run(jobs: list[JobRequest], agents: list[AgentView], **kw: object) -> PlanResult:
    return plan(jobs, agents, NOW, **kw)  # type: ignore[arg-type]


# -- best fit -------------------------------------------------------------------------------------


def test_best_fit_picks_the_gpu_left_with_least_free_vram() -> None:
    agents = [
        agent("big", gpus=[gpu(total=80000)]),
        agent("mid", gpus=[gpu(total=24000)]),
        agent("small", gpus=[gpu(total=12000)]),
    ]
    r = run([job("j", vram=10000)], agents)
    assert where(r) == {"j": ("small", "c0")}
    assert r.placements[0].gpu_index == 0
    assert r.placements[0].score == pytest.approx(1 - 2000 / 12000, abs=1e-6)
    assert where(run([job("j", vram=20000)], agents)) == {"j": ("mid", "c0")}


def test_best_fit_uses_free_vram_not_totals() -> None:
    agents = [
        agent("a", gpus=[gpu(total=24000, reserved=16000, free=24000, unallocated=16000)]),
        agent("b", gpus=[gpu(total=12000)]),
    ]
    # a has 8000 free: tighter than b's 12000
    assert where(run([job("j", vram=6000)], agents)) == {"j": ("a", "c0")}


def test_then_least_ram_left() -> None:
    agents = [agent("a", ram_total=64000), agent("b", ram_total=32000)]
    assert where(run([job("j", ram=1000)], agents)) == {"j": ("b", "c0")}


def test_warm_cache_breaks_ties_but_never_beats_fit() -> None:
    agents = [agent("a"), agent("b", recent_hashes=["wf-x"])]
    assert where(run([job("j", workflow_hash="wf-x")], agents)) == {"j": ("b", "c0")}
    assert where(run([job("j", workflow_hash="other")], agents)) == {"j": ("a", "c0")}
    tighter = [agent("a", gpus=[gpu(total=20000)]), agent("b", recent_hashes=["wf-x"])]
    assert where(run([job("j", workflow_hash="wf-x")], tighter)) == {"j": ("a", "c0")}


def test_recent_failures_break_ties_after_warm_cache() -> None:
    agents = [agent("a", recent_failures=2), agent("b")]
    assert where(run([job("j")], agents)) == {"j": ("b", "c0")}


def test_ties_break_by_agent_then_instance_id() -> None:
    agents = [agent("b"), agent("a", gpus=[gpu(0), gpu(1)], slots=[slot("z", 0), slot("y", 1)])]
    assert where(run([job("j")], agents)) == {"j": ("a", "y")}


def test_avoided_agents_rank_last_but_are_used() -> None:
    agents = [agent("a", gpus=[gpu(total=8000)]), agent("b", gpus=[gpu(total=80000)])]
    assert where(run([job("j", avoid=["a"])], agents)) == {"j": ("b", "c0")}
    assert where(run([job("j", avoid=["a", "b"])], agents)) == {"j": ("a", "c0")}
    assert where(run([job("j", avoid=["b"], vram=10000)], agents)) == {"j": ("b", "c0")}


def test_blocked_agents_are_never_used() -> None:
    agents = [agent("a"), agent("b")]
    assert where(run([job("j", blocked=["a"])], agents)) == {"j": ("b", "c0")}
    r = run([job("j", blocked=["a", "b"])], agents)
    assert r.placements == ()
    assert r.pending["j"] == "blocked after failures on every eligible agent (a, b)"


def test_constraints_labels_models_gpu_name() -> None:
    agents = [
        agent("a", labels={"zone": "eu"}, models={"m1"}, gpus=[gpu(name="NVIDIA A100")]),
        agent("b", labels={"zone": "us"}, models={"m1", "m2"}, gpus=[gpu(name="RTX 4090")]),
    ]
    assert where(run([job("j", labels={"zone": "us"})], agents)) == {"j": ("b", "c0")}
    assert where(run([job("j", models=["m2"])], agents)) == {"j": ("b", "c0")}
    assert where(run([job("j", gpu_name="*a100")], agents)) == {"j": ("a", "c0")}


def test_cpu_jobs_go_to_cpu_instances_and_gpu_jobs_to_gpus() -> None:
    a = agent("a", gpus=[gpu(0)], slots=[slot("gpu0", 0), slot("cpu", None)])
    r = run([job("c", gpus=0, vram=0, ram=100), job("g", vram=100)], [a])
    assert where(r) == {"c": ("a", "cpu"), "g": ("a", "gpu0")}
    assert {p.job_id: p.gpu_index for p in r.placements} == {"c": None, "g": 0}


def test_cpu_jobs_rank_by_ram_left() -> None:
    agents = [
        agent("a", slots=[slot("cpu", None)], ram_total=64000),
        agent("b", slots=[slot("cpu", None)], ram_total=16000),
    ]
    assert where(run([job("j", gpus=0, ram=1000)], agents)) == {"j": ("b", "cpu")}


# -- no over-commit -------------------------------------------------------------------------------


def test_one_plan_never_overcommits_a_gpu() -> None:
    a = agent("a", gpus=[gpu(total=16000)], slots=[slot("c0", 0, capacity=4)])
    r = run([job("j1", vram=10000), job("j2", vram=10000), job("j3", vram=6000)], [a])
    assert set(where(r)) == {"j1", "j3"}
    assert r.pending["j2"].startswith("waiting for capacity")


def test_slot_capacity_is_respected() -> None:
    a = agent("a", slots=[slot("c0", 0, capacity=3, active=1)])
    r = run([job(f"j{i}", vram=10) for i in range(5)], [a])
    assert len(r.placements) == 2
    assert r.pending["j4"] == "waiting for capacity: all 1 eligible instances are busy"


def test_host_ram_and_cpu_are_shared_by_its_gpus() -> None:
    a = agent("a", gpus=[gpu(0), gpu(1)], ram_total=10000, cpu_count=4)
    r = run([job("j1", ram=6000), job("j2", ram=6000)], [a])
    assert set(where(r)) == {"j1"}
    assert "6000 MB free RAM" not in r.pending["j2"]  # 4000 left
    assert "at most 4000 MB free RAM, needs 6000 MB" in r.pending["j2"]
    r = run([job("j1", cpu=3), job("j2", cpu=2)], [a])
    assert set(where(r)) == {"j1"}
    assert "at most 1 CPU free, needs 2" in r.pending["j2"]


def test_gpu_jobs_with_vram_consume_the_gpu_for_other_instances_on_it() -> None:
    a = agent("a", gpus=[gpu(total=10000)], slots=[slot("x", 0), slot("y", 0)])
    r = run([job("j1", vram=6000), job("j2", vram=6000)], [a])
    assert len(r.placements) == 1


# -- order ----------------------------------------------------------------------------------------


def test_priority_then_age_then_id() -> None:
    a = [agent("a")]
    jobs = [
        job("old-low", priority=0, queued_at=NOW - 200),
        job("new-high", priority=5, queued_at=NOW - 1),
        job("old-high", priority=5, queued_at=NOW - 100),
    ]
    assert set(where(run(jobs, a, starvation_s=10_000))) == {"old-high"}
    jobs = [job("b", queued_at=NOW - 5), job("a", queued_at=NOW - 5)]
    assert set(where(run(jobs, a))) == {"a"}


def test_no_head_of_line_blocking() -> None:
    agents = [agent("a", gpus=[gpu(total=24000)])]
    jobs = [job("huge", priority=9, vram=40000), job("big", priority=5, vram=30000), job("s")]
    r = run(jobs, agents)
    assert set(where(r)) == {"s"}
    assert r.pending["huge"] == "no agent has a GPU with 40000 MB; largest is 24000 MB"


def test_max_placements_defers_the_rest() -> None:
    agents = [agent(f"a{i}") for i in range(5)]
    r = run([job(f"j{i}", queued_at=NOW - 10 + i) for i in range(5)], agents, max_placements=2)
    assert set(where(r)) == {"j0", "j1"}
    assert r.pending["j4"] == "not considered: this plan stopped after 2 placement(s)"
    assert len(r.pending) == 3
    assert run([job()], agents, max_placements=0).placements == ()


def test_duplicate_job_ids_are_a_fault() -> None:
    with pytest.raises(SchedulerError, match="twice"):
        run([job("j"), job("j")], [agent()])


def test_deterministic_and_independent_of_input_order() -> None:
    import random

    rng = random.Random(7)
    agents = make_agents(60, rng)
    jobs = make_jobs(400, NOW, rng)
    first = plan(jobs, agents, NOW)
    for seed in range(3):
        shuffle = random.Random(seed)
        a2, j2 = agents[:], jobs[:]
        shuffle.shuffle(a2)
        shuffle.shuffle(j2)
        again = plan(j2, a2, NOW)
        assert again.placements == first.placements
        assert dict(again.pending) == dict(first.pending)
    assert first.placements and first.pending


# -- anti-starvation ------------------------------------------------------------------------------


def test_old_blocked_job_holds_its_gpu_against_younger_jobs() -> None:
    busy = agent("a", gpus=[gpu(total=24000, reserved=16000, unallocated=0, free=8000)])
    jobs = [job("big", queued_at=OLD, vram=20000), job("small", vram=1000)]
    r = run(jobs, [busy])
    assert r.placements == ()
    assert r.pending["big"].startswith("waiting for capacity")
    assert "holding GPU 0 on agent a until it drains (queued 1000 s)" in r.pending["big"]
    assert r.pending["small"].startswith("waiting for capacity")
    assert "held for starving jobs" in r.pending["small"]
    # not starving yet: the small job goes
    r = run([job("big", queued_at=NOW - 10, vram=20000), job("small", vram=1000)], [busy])
    assert set(where(r)) == {"small"}


def test_hold_takes_one_gpu_and_leaves_the_rest_of_the_fleet_working() -> None:
    agents = [
        agent("a", gpus=[gpu(total=24000, reserved=20000, free=4000)]),
        agent("b", gpus=[gpu(total=24000, reserved=10000, free=14000)]),
        agent("c", gpus=[gpu(total=24000, reserved=16000, free=8000)], slots=[slot(active=1)]),
        agent("d", gpus=[gpu(total=12000)]),
    ]
    jobs = [job("big", queued_at=OLD, vram=20000)] + [
        job(f"s{i}", vram=2000, queued_at=NOW - i) for i in range(4)
    ]
    r = run(jobs, agents)
    placed = where(r)
    assert "big" not in placed
    # b is closest to fitting (14000 free of 20000 needed): held; a and d still take jobs
    assert "holding GPU 0 on agent b" in r.pending["big"]
    assert {agent_id for agent_id, _ in placed.values()} == {"a", "d"}


def test_higher_priority_jobs_before_the_starving_job_are_unaffected() -> None:
    a = agent("a", gpus=[gpu(total=24000, reserved=16000, free=8000)])
    jobs = [job("big", queued_at=OLD, vram=20000), job("vip", priority=9, vram=1000)]
    assert set(where(run(jobs, [a]))) == {"vip"}


def test_hold_prefers_a_gpu_with_a_free_slot_and_whole_host_when_ram_is_short() -> None:
    short_ram = agent(
        "a",
        gpus=[gpu(0, total=24000), gpu(1, total=24000)],
        ram_total=32000,
        ram_reserved=30000,
        ram_available=2000,
    )
    r = run([job("big", queued_at=OLD, ram=8000), job("s1", vram=100)], [short_ram])
    assert "holding agent a until it drains" in r.pending["big"]
    assert "s1" in r.pending


def test_no_hold_for_a_job_that_can_never_fit() -> None:
    a = agent("a", gpus=[gpu(total=24000)])
    r = run([job("huge", queued_at=OLD, vram=40000), job("s", vram=1000)], [a])
    assert set(where(r)) == {"s"}


def test_memory_used_outside_comfyfleet_limits_the_hold() -> None:
    # 20 GB used by another process: the job could never fit there even if our jobs finished
    a = agent("a", gpus=[gpu(total=24000, free=4000)])
    r = run([job("big", queued_at=OLD, vram=10000), job("s", vram=1000)], [a])
    assert set(where(r)) == {"s"}
    assert "holding" not in r.pending["big"]


def test_max_holds_bounds_the_work() -> None:
    agents = [agent(f"a{i}", gpus=[gpu(total=24000, reserved=20000, free=4000)]) for i in range(3)]
    jobs = [job(f"big{i}", queued_at=OLD + i, vram=20000) for i in range(3)]
    r = run(jobs, agents, max_holds=2)
    assert sum("holding" in text for text in r.pending.values()) == 2
    r = run(jobs, agents, max_holds=0)
    assert not any("holding" in text for text in r.pending.values())


# -- pending reasons ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("agents", "request_", "reason"),
    [
        ([], {}, "no agent is online"),
        (
            [agent("a", schedulable=False), agent("b", schedulable=False)],
            {},
            "no agent is online (2 known, all offline or draining)",
        ),
        (
            [agent("a", gpus=[], slots=[])],
            {},
            "no agent reports a ComfyUI instance",
        ),
        (
            [agent("a", labels={"gpu": "l4"})],
            {"labels": {"gpu": "a100"}},
            "no agent has labels gpu=a100",
        ),
        (
            [agent("a", labels={"gpu": "a100"}), agent("b", labels={"zone": "eu"})],
            {"labels": {"gpu": "a100", "zone": "eu"}},
            "no agent has all of the labels gpu=a100, zone=eu",
        ),
        (
            [agent("a", models={"x"})],
            {"models": ["x", "y.safetensors"]},
            "no agent has models y.safetensors",
        ),
        (
            [agent("a", slots=[slot(healthy=False)])],
            {},
            "no healthy ComfyUI instance on the 1 eligible agent(s)",
        ),
        (
            [agent("a", slots=[slot("cpu", None)])],
            {},
            "no eligible agent has a ComfyUI instance on a GPU",
        ),
        (
            [agent("a")],
            {"gpus": 0},
            "no eligible agent has a ComfyUI instance that is CPU-only",
        ),
        (
            [agent("a", gpus=[gpu(name="RTX 4090")]), agent("b", gpus=[gpu(name="L4")])],
            {"gpu_name": "A100*"},
            "no GPU matches 'A100*' (eligible GPUs: L4, RTX 4090)",
        ),
        (
            [agent("a", gpus=[gpu(total=24576)]), agent("b", gpus=[gpu(total=12000)])],
            {"vram": 40000},
            "no agent has a GPU with 40000 MB; largest is 24576 MB",
        ),
        (
            [agent("a", ram_total=64000)],
            {"ram": 100000},
            "no agent has 100000 MB RAM; largest is 64000 MB",
        ),
        ([agent("a", cpu_count=8)], {"cpu": 12}, "no agent has 12 CPUs; largest is 8"),
        ([agent("a")], {"gpus": 2}, "unsupported request: gpus=2 (only 0 or 1 is supported)"),
        ([agent("a")], {"vram": -5}, "invalid request: vram_mb=-5"),
        (
            [agent("a", slots=[slot(active=1)]), agent("b", slots=[slot(active=1)])],
            {},
            "waiting for capacity: all 2 eligible instances are busy",
        ),
        (
            [agent("a", slots=[slot(active=1)]), agent("b", gpus=[gpu(free=3000)])],
            {"vram": 8000},
            "waiting for capacity: 1 of 2 eligible instances busy; "
            "the 1 free one(s) have at most 3000 MB free VRAM, needs 8000 MB",
        ),
        (
            [agent("a", ram_available=1000)],
            {"ram": 2000},
            "waiting for capacity: the 1 free one(s) have at most 1000 MB free RAM, needs 2000 MB",
        ),
    ],
)
def test_pending_reasons(agents: list[AgentView], request_: dict[str, object], reason: str) -> None:
    r = run([job("j", **request_)], agents)  # type: ignore[arg-type]
    assert r.placements == ()
    assert r.pending == {"j": reason}


def test_vram_totals_reason_only_counts_eligible_gpus() -> None:
    agents = [
        agent("a", labels={"pool": "x"}, gpus=[gpu(total=12000)]),
        agent("b", gpus=[gpu(total=80000)]),
    ]
    r = run([job("j", labels={"pool": "x"}, vram=20000)], agents)
    assert r.pending["j"] == "no agent has a GPU with 20000 MB; largest is 12000 MB"


def test_combined_shortage_reason() -> None:
    # one host has the VRAM, the other the RAM: neither has both
    agents = [
        agent("a", gpus=[gpu(total=24000)], ram_available=1000),
        agent("b", gpus=[gpu(total=24000, free=2000)]),
    ]
    r = run([job("j", vram=8000, ram=4000)], agents)
    assert r.pending["j"] == (
        "waiting for capacity: none of the 2 free one(s) has 8000 MB VRAM, 4000 MB RAM, 0 CPU "
        "free at once"
    )


def test_blocked_on_some_agents_reasons_about_the_others() -> None:
    agents = [agent("a", gpus=[gpu(total=80000)]), agent("b", gpus=[gpu(total=24000)])]
    r = run([job("j", vram=40000, blocked=["a"])], agents)
    assert r.pending["j"] == "no agent has a GPU with 40000 MB; largest is 24000 MB"


def test_reasons_in_a_big_fleet_are_cheap_and_complete() -> None:
    import random

    rng = random.Random(3)
    agents = make_agents(200, rng)
    jobs = make_jobs(3000, NOW, rng)
    r = plan(jobs, agents, NOW)
    assert len(r.placements) + len(r.pending) == len(jobs)
    assert all(text for text in r.pending.values())
    assert any(t.startswith("waiting for capacity") for t in r.pending.values())


def test_held_gpu_drains_and_the_starving_job_gets_it() -> None:
    def fleet(reserved: int, active: int) -> list[AgentView]:
        g = gpu(total=24000, reserved=reserved, free=24000 - reserved)
        return [agent("a", gpus=[g], slots=[slot(active=active)])]

    queue = [job("big", queued_at=OLD, vram=20000)] + [job(f"s{i}", vram=500) for i in range(3)]
    r = run(queue, fleet(reserved=8000, active=1))
    assert r.placements == ()  # nothing new lands on the held GPU
    r = run(queue, fleet(reserved=0, active=0))  # what ran there finished
    assert where(r) == {"big": ("a", "c0")}
