"""Scheduler: workflow affinity, model inventory, failure blocking and several instances per GPU."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator.scheduler import plan
from comfyfleet.coordinator.scheduler.model import AgentView, JobRequest, PlanResult
from comfyfleet.coordinator.scheduler.rank import AFFINITY_BUCKET_MB
from tests.unit.test_scheduler_support import NOW, agent, gpu, job, slot


def where(result: PlanResult) -> dict[str, tuple[str, str]]:
    return {p.job_id: (p.agent_id, p.instance_id) for p in result.placements}


def run(jobs: list[JobRequest], agents: list[AgentView]) -> PlanResult:
    return plan(jobs, agents, NOW)


# -- affinity -------------------------------------------------------------------------------------


def test_warm_instance_wins_within_the_same_fit_class() -> None:
    # a's GPU is a little tighter (1000 MB less left), b's instance ran the shape: b wins
    agents = [
        agent("a", gpus=[gpu(total=23576)]),
        agent("b", slots=[slot("c0", 0, recent=["s:x"])]),
    ]
    r = run([job("j", workflow_hash="s:x")], agents)
    assert where(r) == {"j": ("b", "c0")}
    assert r.placements[0].warm
    cold = run([job("j", workflow_hash="s:other")], agents)
    assert where(cold) == {"j": ("a", "c0")}
    assert not cold.placements[0].warm


def test_warm_models_count_like_a_warm_shape() -> None:
    agents = [agent("a"), agent("b", slots=[slot("c0", 0, recent=["sdxl.safetensors"])])]
    assert where(run([job("j", model_refs=["sdxl.safetensors"])], agents)) == {"j": ("b", "c0")}


def test_warmth_is_per_instance() -> None:
    two = agent("a", gpus=[gpu(0), gpu(1)], slots=[slot("c0", 0), slot("c1", 1, recent=["s:x"])])
    assert where(run([job("j", workflow_hash="s:x")], [two])) == {"j": ("a", "c1")}


def test_affinity_never_beats_a_better_fit_class() -> None:
    tight = 24576 - 2 * AFFINITY_BUCKET_MB
    agents = [
        agent("a", gpus=[gpu(total=tight)]),
        agent("b", slots=[slot("c0", 0, recent=["s:x"])]),
    ]
    assert where(run([job("j", workflow_hash="s:x")], agents)) == {"j": ("a", "c0")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    free_a=st.integers(1, 30).map(lambda n: n * 1000),
    free_b=st.integers(1, 30).map(lambda n: n * 1000),
    vram=st.integers(0, 30).map(lambda n: n * 1000),
    prio=st.integers(0, 3),
)
def test_affinity_never_overrides_fit_or_priority(
    free_a: int, free_b: int, vram: int, prio: int
) -> None:
    agents = [
        agent("a", gpus=[gpu(total=30000, free=free_a)]),
        agent("b", gpus=[gpu(total=30000, free=free_b)], slots=[slot("c0", 0, recent=["s:x"])]),
    ]
    warm_job = job("w", workflow_hash="s:x", vram=vram, queued_at=NOW - 1)
    r = run([warm_job], agents)
    placed = where(r)
    # feasibility: never on a GPU that cannot hold it
    if "w" in placed:
        free = free_a if placed["w"][0] == "a" else free_b
        assert free >= vram
        if placed["w"][0] == "b" and free_a >= vram:
            # chosen for warmth only within one fit class of the tighter GPU
            assert (free_b - vram) // AFFINITY_BUCKET_MB <= (free_a - vram) // AFFINITY_BUCKET_MB
    else:
        assert max(free_a, free_b) < vram
    # priority: a higher-priority cold job placed first takes the best GPU whatever the warmth
    hot = job("p", workflow_hash="s:cold", vram=vram, priority=prio + 1, queued_at=NOW - 1)
    both = where(run([warm_job, hot], agents))
    alone = where(run([hot], agents))
    assert both.get("p") == alone.get("p")


# -- model inventory ------------------------------------------------------------------------------


def test_workflow_models_and_classes_must_exist_where_inventory_is_known() -> None:
    agents = [
        agent("a", models=["sd15.safetensors"], node_classes=["KSampler"]),
        agent(
            "b",
            models=["sd15.safetensors", "sdxl.safetensors"],
            node_classes=["KSampler", "Custom"],
        ),
    ]
    needs = job("j", model_refs=["sdxl.safetensors"], node_classes=["KSampler", "Custom"])
    assert where(run([needs], agents)) == {"j": ("b", "c0")}
    r = run([job("k", model_refs=["flux.safetensors"], node_classes=["Other"])], agents)
    assert r.placements == ()
    assert r.pending["k"] == (
        "no agent's ComfyUI has model files flux.safetensors and node classes Other"
    )


def test_agents_without_inventory_take_anything() -> None:
    agents = [agent("a")]  # reported no inventory (node_classes None)
    assert where(run([job("j", model_refs=["x"], node_classes=["Y"])], agents)) == {
        "j": ("a", "c0")
    }


# -- failure blocking -----------------------------------------------------------------------------


def test_blocked_pair_goes_elsewhere_and_waits_when_blocked_everywhere() -> None:
    agents = [agent("a"), agent("b", gpus=[gpu(total=80000)])]
    assert where(run([job("j", blocked=["a"])], agents)) == {"j": ("b", "c0")}
    r = run([job("j", blocked=["a", "b"])], agents)
    assert r.placements == ()
    assert r.pending["j"].startswith("blocked after failures on every eligible agent")


# -- several ComfyUI instances on one GPU ---------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_instances=st.integers(1, 4),
    vrams=st.lists(st.integers(1, 24).map(lambda n: n * 1000), min_size=1, max_size=8),
)
def test_instances_sharing_a_gpu_never_overcommit_its_vram(
    n_instances: int, vrams: list[int]
) -> None:
    one_gpu = agent(
        "a", gpus=[gpu(0, total=24000)], slots=[slot(f"c{i}", 0) for i in range(n_instances)]
    )
    jobs = [job(f"j{i}", vram=v) for i, v in enumerate(vrams)]
    r = run(jobs, [one_gpu])
    placed = {p.job_id for p in r.placements}
    assert sum(j.vram_mb for j in jobs if j.job_id in placed) <= 24000
    assert len(placed) <= n_instances
    assert len({p.instance_id for p in r.placements}) == len(placed)  # one job per instance


def test_the_fit_class_width_is_a_plan_parameter() -> None:
    agents = [
        agent("a", gpus=[gpu(total=23576)]),
        agent("b", slots=[slot("c0", 0, recent=["s:x"])]),
    ]
    j = job("j", workflow_hash="s:x")
    assert where(plan([j], agents, NOW, affinity_bucket_mb=0)) == {"j": ("a", "c0")}
    assert where(plan([j], agents, NOW, affinity_bucket_mb=8192)) == {"j": ("b", "c0")}
