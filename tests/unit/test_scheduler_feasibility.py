"""Scheduler: capacity formulas, every feasibility checker and its reason, the pipeline."""

from __future__ import annotations

import pytest

from comfyfleet.coordinator.scheduler.capacity import (
    Capacity,
    cpu_free,
    gpu_ceiling_mb,
    gpu_free_mb,
    ram_ceiling_mb,
    ram_free_mb,
)
from comfyfleet.coordinator.scheduler.feasibility import (
    PIPELINE,
    STATIC_CHECKS,
    CpuFits,
    GpuNameMatch,
    InstanceHealthy,
    InstanceKind,
    LabelsMatch,
    ModelsPresent,
    NotBlocked,
    NotHeld,
    RamFits,
    Schedulable,
    SlotFree,
    VramFits,
    feasible,
    first_failure,
    fits_in_principle,
    fits_totals,
    gpu_name_matches,
    job_problem,
)
from comfyfleet.coordinator.scheduler.model import AgentView, JobRequest, SchedulerError
from tests.unit.test_scheduler_support import agent, gpu, job, slot


def check(checker: object, j: JobRequest, a: AgentView, index: int = 0) -> str | None:
    cap = Capacity([a])
    return checker.check(j, a, a.slots[index], cap)  # type: ignore[attr-defined]


# -- capacity formulas ----------------------------------------------------------------------------


def test_gpu_free_is_total_minus_reservations_when_nvml_agrees() -> None:
    g = gpu(total=24000, free=20000, reserved=8000, unallocated=1000)
    assert gpu_free_mb(g) == min(24000 - 8000, 20000 - 1000) == 16000


def test_gpu_free_respects_memory_used_outside_comfyfleet() -> None:
    # 10 GB used by something else: NVML says 6 GB free, 2 GB still to come from our jobs
    g = gpu(total=24000, free=6000, reserved=8000, unallocated=2000)
    assert gpu_free_mb(g) == 4000


def test_gpu_ceiling_is_what_would_be_free_if_our_jobs_finished() -> None:
    g = gpu(total=24000, free=6000, reserved=8000, unallocated=2000)
    assert gpu_ceiling_mb(g) == 6000 + 6000
    assert gpu_ceiling_mb(gpu(total=24000, free=24000)) == 24000


def test_ram_and_cpu_free() -> None:
    a = agent(ram_total=64000, ram_available=50000, ram_reserved=20000, cpu_count=8)
    assert ram_free_mb(a) == 44000
    b = agent(ram_total=64000, ram_available=30000, ram_reserved=20000, cpu_reserved=2.5)
    assert ram_free_mb(b) == 30000
    assert cpu_free(b) == 16 - 2.5
    assert ram_ceiling_mb(b) == 50000


def test_capacity_lookups_and_commit() -> None:
    a = agent(
        "a1",
        gpus=[gpu(0, total=10000), gpu(1, total=20000)],
        slots=[slot("c1", 1), slot("c0", 0, capacity=2)],
        ram_total=32000,
        cpu_count=4,
    )
    cap = Capacity([a])
    assert [s.instance_id for s in cap.slots] == ["c0", "c1"]
    assert cap.vram_free("a1", 1) == 20000 and cap.vram_free("a1", 7) is None
    sid = cap.sid("a1", "c0")
    cap.commit(sid, job(vram=3000, ram=1000, cpu=1.5))
    assert cap.vram_free("a1", 0) == 7000
    assert cap.ram_free("a1") == 31000
    assert cap.cpu_free("a1") == 2.5
    assert cap.free_slots("a1", "c0") == 1


def test_capacity_sorts_agents_and_rejects_duplicates() -> None:
    cap = Capacity([agent("b"), agent("a")])
    assert [a.agent_id for a in cap.agents] == ["a", "b"]
    with pytest.raises(SchedulerError, match="twice"):
        Capacity([agent("a"), agent("a")])
    with pytest.raises(SchedulerError, match="GPU 0 twice"):
        Capacity([agent("a", gpus=[gpu(0), gpu(0)], slots=[])])
    with pytest.raises(SchedulerError, match="instance 'x' twice"):
        Capacity([agent("a", slots=[slot("x"), slot("x")])])


# -- checkers -------------------------------------------------------------------------------------


def test_schedulable() -> None:
    assert check(Schedulable(), job(), agent()) is None
    assert check(Schedulable(), job(), agent(schedulable=False)) == "offline or draining"


def test_labels() -> None:
    a = agent(labels={"gpu": "l4", "zone": "eu"})
    assert check(LabelsMatch(), job(labels={"zone": "eu"}), a) is None
    assert check(LabelsMatch(), job(), a) is None
    reason = check(LabelsMatch(), job(labels={"zone": "eu", "gpu": "a100", "x": "y"}), a)
    assert reason == "labels mismatch: gpu=a100, x=y"


def test_models() -> None:
    a = agent(models={"a.safetensors", "b.safetensors"})
    assert check(ModelsPresent(), job(models=["a.safetensors"]), a) is None
    reason = check(ModelsPresent(), job(models=["x.safetensors", "a.safetensors"]), a)
    assert reason == "missing models: x.safetensors"


def test_blocked() -> None:
    assert check(NotBlocked(), job(blocked=["other"]), agent("a1")) is None
    assert check(NotBlocked(), job(blocked=["a1"]), agent("a1")) == "blocked after failures"


def test_instance_healthy() -> None:
    assert check(InstanceHealthy(), job(), agent()) is None
    bad = agent(slots=[slot(healthy=False)])
    assert check(InstanceHealthy(), job(), bad) == "instance unhealthy"
    zero = agent(slots=[slot(capacity=0)])
    assert check(InstanceHealthy(), job(), zero) == "instance takes no jobs (capacity 0)"


def test_instance_kind() -> None:
    both = agent(slots=[slot("g", 0), slot("c", None), slot("ghost", 5)])
    assert check(InstanceKind(), job(gpus=1), both, 0) is None
    assert check(InstanceKind(), job(gpus=1), both, 1) == "CPU-only instance, job needs a GPU"
    assert check(InstanceKind(), job(gpus=0), both, 1) is None
    assert check(InstanceKind(), job(gpus=0), both, 0) == "GPU instance, job needs a CPU slot"
    assert (
        check(InstanceKind(), job(gpus=1), both, 2)
        == "instance names GPU 5, which the agent does not report"
    )


def test_gpu_name_glob_is_case_insensitive() -> None:
    assert gpu_name_matches("*4090*", "NVIDIA GeForce RTX 4090")
    assert gpu_name_matches("nvidia*", "NVIDIA A100")
    assert not gpu_name_matches("A100*", "NVIDIA A100")
    a = agent(gpus=[gpu(name="RTX 4090")])
    assert check(GpuNameMatch(), job(gpu_name="rtx*"), a) is None
    assert check(GpuNameMatch(), job(gpu_name=None), a) is None
    assert check(GpuNameMatch(), job(gpus=0, gpu_name="A100*"), a) is None
    reason = check(GpuNameMatch(), job(gpu_name="A100*"), a)
    assert reason == "GPU name 'RTX 4090' does not match 'A100*'"


def test_slot_free() -> None:
    assert check(SlotFree(), job(), agent(slots=[slot(capacity=2, active=1)])) is None
    assert check(SlotFree(), job(), agent(slots=[slot(capacity=1, active=1)])) == "no free slot"


def test_not_held() -> None:
    a = agent()
    cap = Capacity([a])
    cap.hold_slots([0], "old-job")
    assert NotHeld().check(job("j"), a, a.slots[0], cap) == "held for starving job old-job"
    assert NotHeld().check(job("old-job"), a, a.slots[0], cap) is None


def test_vram() -> None:
    a = agent(gpus=[gpu(total=24000, free=3000)])
    assert check(VramFits(), job(vram=3000), a) is None
    assert check(VramFits(), job(vram=8000), a) == "GPU 0 has 3000 MB free, needs 8000 MB"
    assert check(VramFits(), job(gpus=0, vram=8000), a) is None
    assert check(VramFits(), job(vram=0), agent(gpus=[gpu(free=0, unallocated=5)])) is None


def test_ram() -> None:
    a = agent(ram_total=8000, ram_available=1000)
    assert check(RamFits(), job(ram=1000), a) is None
    assert check(RamFits(), job(ram=2000), a) == "1000 MB RAM free, needs 2000 MB"
    assert check(RamFits(), job(ram=0), agent(ram_available=-5)) is None


def test_cpu_only_checked_when_asked() -> None:
    a = agent(cpu_count=4, cpu_reserved=2.5)
    assert check(CpuFits(), job(cpu=1.5), a) is None
    assert check(CpuFits(), job(cpu=4), a) == "1.5 CPU free, needs 4"
    assert check(CpuFits(), job(cpu=0), agent(cpu_count=1, cpu_reserved=3)) is None


def test_job_problem() -> None:
    assert job_problem(job()) is None
    assert job_problem(job(gpus=0)) is None
    assert job_problem(job(gpus=2)) == "unsupported request: gpus=2 (only 0 or 1 is supported)"
    assert job_problem(job(vram=-1)) == "invalid request: vram_mb=-1"
    assert job_problem(job(ram=-1)) == "invalid request: ram_mb=-1"
    assert job_problem(job(cpu=float("nan"))) == "invalid request: cpu=nan"


# -- pipeline -------------------------------------------------------------------------------------


def test_pipeline_reports_the_first_failure() -> None:
    a = agent(schedulable=False, labels={}, gpus=[gpu(free=100)])
    cap = Capacity([a])
    j = job(labels={"gpu": "a100"}, vram=8000)
    assert first_failure(j, a, a.slots[0], cap) == ("offline", "offline or draining")
    b = agent(labels={}, gpus=[gpu(free=100)])
    assert first_failure(j, b, b.slots[0], Capacity([b])) == ("labels", "labels mismatch: gpu=a100")
    j2 = job(vram=8000)
    assert first_failure(j2, b, b.slots[0], Capacity([b])) == (
        "vram",
        "GPU 0 has 100 MB free, needs 8000 MB",
    )
    assert first_failure(j2, b, b.slots[0], Capacity([b]), STATIC_CHECKS) is None


def test_pipeline_order_is_static_then_capacity() -> None:
    codes = [c.code for c in PIPELINE]
    assert codes == [
        "offline",
        "labels",
        "models",
        "inventory",
        "blocked",
        "unhealthy",
        "kind",
        "gpu_name",
        "slot",
        "held",
        "vram",
        "ram",
        "cpu",
    ]


def test_feasible() -> None:
    a = agent()
    cap = Capacity([a])
    assert feasible(job(vram=24576), a, a.slots[0], cap)
    assert not feasible(job(vram=24577), a, a.slots[0], cap)
    assert not feasible(job(gpus=3), a, a.slots[0], cap)


def test_totals_and_in_principle() -> None:
    a = agent(
        gpus=[gpu(total=24000, free=4000, reserved=16000, unallocated=0)],
        slots=[slot(active=1)],
        ram_total=32000,
        ram_available=2000,
        ram_reserved=10000,
        cpu_count=8,
    )
    s = a.slots[0]
    assert fits_totals(job(vram=24000, ram=32000, cpu=8), a, s)
    assert not fits_totals(job(vram=24001), a, s)
    assert not fits_totals(job(ram=32001), a, s)
    assert not fits_totals(job(cpu=9), a, s)
    assert fits_in_principle(job(vram=20000, ram=12000), a, s)
    assert not fits_in_principle(job(vram=20001), a, s)  # 4000 MB used outside comfyfleet
    assert not fits_in_principle(job(ram=12001), a, s)
    assert not fits_in_principle(job(), a, slot(capacity=0))
    cpu_slot = slot("cpu", None)
    assert fits_in_principle(job(gpus=0, vram=99999), a, cpu_slot)
