"""A real fleet: coordinator, simulated ComfyUIs and agents as processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import sqlite3

import pytest

from tests.helpers.fleet import Api, Fleet, sim_faults, sim_stats, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

ASPECTS = [(512, 512), (768, 512), (512, 768), (640, 384), (384, 640), (576, 576)]


async def test_output_isolation_under_concurrency(fleet: Fleet, api: Api) -> None:
    for name in ("a", "b", "c"):
        fleet.add_sim(name, 24576, "--step-ms", "5")
        fleet.add_agent(name, name)
    await api.agents_online({"a", "b", "c"})
    rng = random.Random(7)
    wanted = {}
    for i in range(14):
        w, h = rng.choice(ASPECTS)
        job = await api.submit(txt2img(w, h, steps=3, prefix=f"iso{i}"))
        wanted[job["id"]] = (w, h, f"iso{i}")
    agents_used = set()
    for job_id, (w, h, prefix) in wanted.items():
        done = await api.wait(job_id, {"COMPLETED", "FAILED", "CANCELLED"})
        assert done["status"] == "COMPLETED", done
        assert len(done["outputs"]) == 1, done["outputs"]
        out = done["outputs"][0]
        assert prefix in out["name"], (prefix, out["name"])
        assert await api.image_size(out) == (w, h)
        assert done["seeds"], "the -1 seed was replaced and recorded"
        agents_used.add(done["agent_id"])
    assert len(agents_used) >= 2


async def test_only_the_big_gpu_takes_the_big_job(fleet: Fleet, api: Api) -> None:
    fleet.add_sim("big", 24576, "--step-ms", "5")
    fleet.add_sim("small", 8192, "--step-ms", "5")
    fleet.add_agent("big", "big")
    fleet.add_agent("small", "small")
    await api.agents_online({"big", "small"})
    jobs = [
        await api.submit(txt2img(512, 512, steps=2), resources={"vram_mb": 16000}) for _ in range(3)
    ]
    impossible = await api.submit(txt2img(512, 512), resources={"vram_mb": 40000})
    for job in jobs:
        done = await api.wait(job["id"], {"COMPLETED", "FAILED"})
        assert done["status"] == "COMPLETED" and done["agent_id"] == "big"
    pending = await api.job(impossible["id"])
    assert pending["status"] == "QUEUED"
    assert "40000" in pending["pending_reason"] and "24576" in pending["pending_reason"]


async def test_agent_sigkill_mid_job_completes_elsewhere(fleet: Fleet, api: Api) -> None:
    fleet.add_sim("a", 24576, "--step-ms", "100")
    fleet.add_agent("a", "a")
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=30))
    await api.wait(job["id"], {"RUNNING"})
    fleet.agents["a"].kill(signal.SIGKILL)
    fleet.add_sim("b", 24576, "--step-ms", "5")
    fleet.add_agent("b", "b")
    done = await api.wait(job["id"], {"COMPLETED", "FAILED"}, wait_s=60)
    assert done["status"] == "COMPLETED" and done["agent_id"] == "b" and done["attempt"] == 2
    assert any("lost" in t["reason"] for t in done["history"])
    assert await api.image_size(done["outputs"][0]) == (512, 512)


async def test_simulator_crash_mid_job_requeues(fleet: Fleet, api: Api) -> None:
    fleet.add_sim("a", 24576, "--step-ms", "100")
    fleet.add_sim("b", 24576, "--step-ms", "5")
    fleet.add_agent("a", "a")
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=40))
    await api.wait(job["id"], {"RUNNING"})
    fleet.sims["a"].kill(signal.SIGKILL)
    fleet.add_agent("b", "b")
    done = await api.wait(job["id"], {"COMPLETED", "FAILED"}, wait_s=60)
    assert done["status"] == "COMPLETED" and done["agent_id"] == "b"
    assert done["retries_used"] == 1
    agent_a = await (await api.s.get(f"{fleet.url}/v1/agents/a")).json()
    assert agent_a["instances"][0]["healthy"] is False


async def test_websocket_drop_falls_back_to_history(fleet: Fleet, api: Api) -> None:
    url = fleet.add_sim("a", 24576, "--step-ms", "50")
    fleet.add_agent("a", "a")
    await api.agents_online({"a"})
    sim_faults(url, drop_ws_after_s=0.3)
    job = await api.submit(txt2img(512, 512, steps=20))
    done = await api.wait(job["id"], {"COMPLETED", "FAILED"}, wait_s=60)
    assert done["status"] == "COMPLETED" and done["attempt"] == 1
    assert sim_stats(url)["ws_dropped"] >= 1


async def test_cancel_reaches_comfyui(fleet: Fleet, api: Api) -> None:
    url = fleet.add_sim("a", 24576, "--step-ms", "100")
    fleet.add_agent("a", "a")
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=200))
    await api.wait(job["id"], {"RUNNING"})
    async with api.s.post(f"{fleet.url}/v1/jobs/{job['id']}/cancel") as r:
        assert r.status == 202
    done = await api.wait(job["id"], {"CANCELLED", "COMPLETED", "FAILED"}, wait_s=30)
    assert done["status"] == "CANCELLED"
    assert sim_stats(url)["interrupt_requests"] >= 1


async def test_sigterm_drains_and_requeues_without_spending_a_retry(fleet: Fleet, api: Api) -> None:
    fleet.add_sim("a", 24576, "--step-ms", "200")
    fleet.add_agent("a", "a", "--drain-grace", "0.5")
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=100), max_retries=0)
    await api.wait(job["id"], {"RUNNING"})
    fleet.agents["a"].signal(signal.SIGTERM)
    await asyncio.to_thread(fleet.agents["a"].proc.wait, 30)  # type: ignore[union-attr]
    assert fleet.agents["a"].proc.returncode == 0  # type: ignore[union-attr]
    after = await api.wait(job["id"], {"QUEUED"}, wait_s=10)
    assert after["retries_used"] == 0
    fleet.add_sim("b", 24576, "--step-ms", "5")
    fleet.add_agent("b", "b")
    done = await api.wait(job["id"], {"COMPLETED", "FAILED"}, wait_s=60)
    assert done["status"] == "COMPLETED" and done["agent_id"] == "b"


async def test_agent_restart_reattaches_without_a_second_run(fleet: Fleet, api: Api) -> None:
    url = fleet.add_sim("a", 24576, "--step-ms", "100")
    fleet.add_agent("a", "a")
    await api.agents_online({"a"})
    job = await api.submit(txt2img(512, 512, steps=25))
    await api.wait(job["id"], {"RUNNING"})
    first = registered_instance(fleet)
    fleet.agents["a"].kill(signal.SIGKILL)
    fleet.add_agent("a", "a")  # same id, same data dir: finds its state file
    done = await api.wait(job["id"], {"COMPLETED", "FAILED"}, wait_s=60)
    assert done["status"] == "COMPLETED" and done["attempt"] == 1
    # each agent process registers with its own random instance id, fixed for its life
    second = registered_instance(fleet)
    assert re.fullmatch("[0-9a-f]{16}", first) and re.fullmatch("[0-9a-f]{16}", second)
    assert first != second
    assert sim_stats(url)["prompts_submitted"] == 1
    assert await api.image_size(done["outputs"][0]) == (512, 512)


def registered_instance(fleet: Fleet) -> str:
    """The instance id of agent a's last Register, as the coordinator's store keeps it."""
    conn = sqlite3.connect(fleet.tmp / "coord" / "coordinator.db", timeout=10)
    try:
        (info,) = conn.execute("SELECT info FROM agents WHERE agent_id = 'a'").fetchone()
    finally:
        conn.close()
    return str(json.loads(info)["instance_id"])


async def test_any_output_name_comfyui_writes_completes(fleet: Fleet, api: Api) -> None:
    """Prefixes that start with `_`, `-` or `(`, non-ASCII ones and subfolders: ComfyUI (and
    the simulator, which names files as ComfyUI does) writes them; the job completes and keeps
    the name ComfyUI gave each file."""
    url = fleet.add_sim("a", 24576, "--step-ms", "5")
    fleet.add_agent("a", "a")
    await api.agents_online({"a"})
    prefixes = ["_draft", "-x", "(v2)", "猫", "sub dir/(v2) 猫"]
    jobs = [await api.submit(txt2img(64, 64, steps=2, prefix=pf), max_retries=0) for pf in prefixes]
    output_dir = fleet.tmp / "sim-a" / "output"
    for prefix, job in zip(prefixes, jobs, strict=True):
        done = await api.wait(job["id"], {"COMPLETED", "FAILED"})
        assert done["status"] == "COMPLETED" and done["attempt"] == 1, done
        [out] = done["outputs"]
        assert out["original"] == f"{prefix}_00001_.png"
        assert (output_dir / out["original"]).is_file()  # the simulator wrote that very name
        assert await api.image_size(out) == (64, 64)
    assert sim_stats(url)["prompts_submitted"] == len(prefixes)
