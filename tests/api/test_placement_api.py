"""Placement via the API: inventory 422, failure blocking, learned VRAM, ETA, profile, inputs."""

from __future__ import annotations

import asyncio
import base64
import copy

from comfyfleet.coordinator.fleet import AgentStatus
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.shared import protocol as p
from comfyfleet.shared.workflow_shape import shape_hash
from tests.api.conftest import WORKFLOW, MakeHarness

CLASSES = ["EmptyImage", "SaveImage", "CheckpointLoaderSimple"]
WITH_MODEL = {
    **WORKFLOW,
    "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
}


def variant(color: int) -> dict:  # type: ignore[type-arg]
    wf = copy.deepcopy(WORKFLOW)
    wf["1"]["inputs"]["color"] = color  # a widget value: same shape
    return wf


async def test_submission_no_agent_can_run_is_422_naming_what_is_missing(
    harness: MakeHarness,
) -> None:
    h = await harness()
    await h.submit(workflow=WITH_MODEL)  # no agent registered yet: accepted, waits
    await h.agent("a1", models=["sd15.safetensors"], node_classes=CLASSES[:2]).register()
    err = await h.submit(status=422, workflow=WITH_MODEL)
    assert err["error"]["field"] == "workflow"
    assert err["error"]["message"] == (
        "no agent can run this job: no agent in the fleet has model files "
        "sdxl.safetensors and node classes CheckpointLoaderSimple"
    )
    await h.submit(workflow=WORKFLOW)  # what the agent has is fine
    await h.agent("a2", models=["sdxl.safetensors"], node_classes=CLASSES).register()
    job = await h.submit(workflow=WITH_MODEL)
    assert job["status"] == "QUEUED"


async def test_constraint_models_no_agent_has_are_422_and_busy_or_lost_agents_mean_wait(
    harness: MakeHarness,
) -> None:
    h = await harness()
    a1 = h.agent("a1", models=["sd15.safetensors"], node_classes=CLASSES[:2])
    await a1.register()
    err = await h.submit(status=422, constraints={"models": ["sdxl.safetensors"]})
    assert err["error"]["field"] == "constraints.models"
    assert "sdxl.safetensors (constraints.models)" in err["error"]["message"]
    # an agent that has it, once registered, makes the job wait even while it is lost
    a2 = h.agent("a2", models=["sdxl.safetensors"], node_classes=CLASSES[:2])
    await a2.register()
    for _ in range(200):  # no heartbeats: the sweeper declares both lost (after ~2 s)
        if h.coord.agents["a2"].status == AgentStatus.LOST:
            break
        await asyncio.sleep(0.05)
    assert h.coord.agents["a2"].status == AgentStatus.LOST
    job = await h.submit(constraints={"models": ["sdxl.safetensors"]})
    assert job["status"] == "QUEUED"
    for _ in range(100):
        job = await h.job(job["id"])
        if job["pending_reason"]:
            break
        await asyncio.sleep(0.02)
    assert job["pending_reason"], job


async def test_gpu_job_on_a_cpu_only_fleet_is_422_saying_to_ask_for_gpus_0(
    harness: MakeHarness,
) -> None:
    h = await harness()
    await h.agent("cpu-box", gpus=[], cpu_instances=1).register()
    err = await h.submit(status=422)  # gpus: 1 is the default
    assert err["error"]["field"] == "resources.gpus"
    assert "every ComfyUI instance in the fleet is CPU-only" in err["error"]["message"]
    assert "resources.gpus 0" in err["error"]["message"]
    job = await h.submit(resources={"gpus": 0})
    assert job["status"] == "QUEUED"
    await h.agent("gpu-box").register()  # a GPU agent, even a busy one: GPU jobs wait
    assert (await h.submit())["status"] == "QUEUED"


async def test_agent_specific_failures_block_the_pair_until_the_cooldown(
    harness: MakeHarness,
) -> None:
    h = await harness(block_after_failures=1, block_cooldown_s=1.0)
    a1 = h.agent("a1", gpus=[("Small", 8000)])  # the tighter fit: preferred when free
    await a1.register()
    first = await h.submit(workflow=variant(1))
    leased = (await a1.lease(2.0)).jobs[0]
    await a1.started(leased)
    oom = p.ErrorInfo(code="out_of_memory", message="Allocation on device", retryable=True)
    assert (await a1.finish(leased, outcome="requeue", error=oom)).status == "QUEUED"
    shape = shape_hash(WORKFLOW)
    a1_view = await (await h.client.get("/v1/agents/a1")).json()
    assert shape in a1_view["blocked_workflows"]
    assert h.coord.counters["workflow_blocked"] == 1
    queued = await h.job(first["id"])
    assert queued["pending_reason"].startswith("blocked after failures on every eligible agent")
    a2 = h.agent("a2")
    await a2.register()
    moved = (await a2.lease(2.0)).jobs[0]
    assert moved.job_id == first["id"]
    other = await h.submit(workflow=variant(2))  # same shape: not on a1 while blocked, and a2
    # is busy with `moved`
    assert (await a1.lease(0.3)).jobs == []
    assert h.coord.jobs[other["id"]].status.value == "QUEUED"
    await asyncio.sleep(1.3)  # cooldown over: the sweeper lifts the block
    assert h.coord.counters["workflow_unblocked"] == 1
    health = await (await h.client.get("/healthz")).json()
    assert health["counters"]["workflow_blocked"] == 1
    back = (await a1.lease(2.0)).jobs
    assert [j.job_id for j in back] == [other["id"]]


async def test_a_missing_model_is_retried_elsewhere_even_if_not_marked_retryable(
    harness: MakeHarness,
) -> None:
    h = await harness(block_after_failures=1)
    a1 = h.agent("a1")
    await a1.register()
    job = await h.submit()
    leased = (await a1.lease(2.0)).jobs[0]
    missing = p.ErrorInfo(code="missing_model", message="model file(s) not on this ComfyUI: x")
    assert (await a1.finish(leased, outcome="failed", error=missing)).status == "QUEUED"
    assert h.coord.counters["workflow_blocked"] == 1
    assert (await h.job(job["id"]))["retries_used"] == 1


async def test_workflow_errors_fail_the_job_without_blocking(harness: MakeHarness) -> None:
    h = await harness(block_after_failures=1)
    a1 = h.agent("a1")
    await a1.register()
    job = await h.submit()
    leased = (await a1.lease(2.0)).jobs[0]
    bad = p.ErrorInfo(code="prompt_outputs_failed_validation", message="Required input missing")
    await a1.finish(leased, outcome="failed", error=bad)
    assert (await h.job(job["id"]))["status"] == "FAILED"
    assert h.coord.counters["workflow_blocked"] == 0


async def test_learned_vram_eta_and_profile(harness: MakeHarness) -> None:
    h = await harness(default_vram_mb=1000, vram_estimate_margin=1.5)
    a1 = h.agent("a1")
    await a1.register()
    first = await h.submit(workflow=variant(1))
    assert first["resources"]["vram_mb"] == 1000  # nothing learned yet: the flat default
    assert first["eta"] is None
    job = (await a1.lease(2.0)).jobs[0]
    await a1.started(job)
    out = await a1.upload(job, "x.png", b"png")
    profile = [
        p.NodeTiming(node="1", node_type="EmptyImage", ms=12.5),
        p.NodeTiming(node="2", node_type="SaveImage", cached=True),
    ]
    await a1.finish(job, outputs=[out], vram_peak_mb=3000, profile=profile)
    done = await h.job(first["id"])
    assert done["vram_peak_mb"] == 3000 and done["gpu_name"] == "Sim GPU"
    assert done["profile"] == [
        {"node": "1", "node_type": "EmptyImage", "ms": 12.5, "cached": False},
        {"node": "2", "node_type": "SaveImage", "ms": 0.0, "cached": True},
    ]
    second = await h.submit(workflow=variant(7))  # same shape, declares no vram_mb
    assert second["resources"]["vram_mb"] == 4500
    assert second["eta"]["expected_s"] >= 0
    declared = await h.submit(workflow=variant(8), resources={"vram_mb": 100})
    assert declared["resources"]["vram_mb"] == 100  # a declared value always wins
    # after a restart the estimates are learned again from the stored completed jobs
    again = Coordinator(h.coord.config, h.coord.store, h.coord.outputs)
    again.recover()
    assert again.estimates == h.coord.estimates and again.estimates


async def test_input_files_reach_the_agent(harness: MakeHarness) -> None:
    h = await harness()
    a1 = h.agent("a1")
    await a1.register()
    data = b"\x89PNG fake image"
    job = await h.submit(inputs={"in.png": base64.b64encode(data).decode()})
    leased = (await a1.lease(2.0)).jobs[0]
    assert leased.job_id == job["id"] and leased.inputs == {"in.png": data}
    detail = await h.job(job["id"])
    assert detail["inputs"] == ["in.png"]
    bad = await h.submit(status=400, inputs={"in.png": "not base64!"})
    assert bad["error"]["field"] == "inputs.in.png"
    bad = await h.submit(status=400, inputs={"../x.png": "AAAA"})
    assert bad["error"]["field"] == "inputs.../x.png"
