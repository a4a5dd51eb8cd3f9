"""Agent protocol through the real app: placement, fencing, outputs, cancel, retries, loss."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from comfyfleet.shared import protocol as p
from tests.api.conftest import MakeHarness
from tests.helpers.protocol_agent import ProtocolError

pytestmark = pytest.mark.timeout(30)


async def test_submit_assign_run_complete_with_verified_output(harness: MakeHarness) -> None:
    h = await harness()
    agent = h.agent("a1")
    reply = await agent.register()
    assert reply.heartbeat_interval_s == 0.5
    job = await h.submit(resources={"vram_mb": 4000})
    data = bytes(range(256)) * 5000  # 1.28 MB: several chunks
    leased = (await agent.lease(2.0)).jobs
    assert [j.job_id for j in leased] == [job["id"]] and leased[0].attempt == 1
    assert leased[0].workflow == job_workflow(h, job["id"])
    assert (await h.job(job["id"]))["status"] == "ASSIGNED"
    await agent.started(leased[0], prompt_id="pp")
    running = await h.job(job["id"])
    assert running["status"] == "RUNNING" and running["prompt_id"] == "pp"
    out = await agent.upload(leased[0], "img_00001_.png", data, chunk=300_000)
    ack = await agent.finish(leased[0], outputs=[out])
    assert ack.status == "COMPLETED"
    done = await h.job(job["id"])
    assert done["status"] == "COMPLETED"
    assert [o["name"] for o in done["outputs"]] == ["img_00001_.png"]
    assert done["outputs"][0]["sha256"] == hashlib.sha256(data).hexdigest()
    resp = await h.client.get(done["outputs"][0]["url"])
    assert resp.status == 200 and await resp.read() == data
    assert [t["to_status"] for t in done["history"]] == [
        "SUBMITTED",
        "QUEUED",
        "ASSIGNED",
        "RUNNING",
        "COMPLETED",
    ]
    agents = await (await h.client.get("/v1/agents")).json()
    assert agents["agents"][0]["id"] == "a1" and agents["agents"][0]["jobs"] == []


def job_workflow(h, job_id: str) -> dict:  # type: ignore[no-untyped-def]
    stored = h.coord.store.get_job(job_id)
    return stored.spec.workflow


async def test_lease_answers_the_moment_a_job_is_assigned(harness: MakeHarness) -> None:
    h = await harness()
    agent = h.agent("a1")
    await agent.register()
    waiting = asyncio.create_task(agent.lease(5.0))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    t0 = asyncio.get_running_loop().time()
    job = await h.submit()
    reply = await asyncio.wait_for(waiting, 2.0)
    assert reply.jobs[0].job_id == job["id"]
    assert asyncio.get_running_loop().time() - t0 < 1.0


async def test_stale_attempt_gets_409(harness: MakeHarness) -> None:
    h = await harness(assign_timeout_s=0.3)
    a1, a2 = h.agent("a1"), h.agent("a2")
    await a1.register()
    job = await h.submit()
    first = (await a1.lease(2.0)).jobs[0]
    await a2.register()
    # a1 never starts it: the assign timeout requeues it, and it goes elsewhere (a1 failed it).
    second = (await a2.lease(3.0)).jobs[0]
    assert second.job_id == job["id"] and second.attempt == 2
    for call in (a1.started(first), a1.finish(first), a1.upload(first, "x.png", b"123")):
        with pytest.raises(ProtocolError) as info:
            await call
        assert info.value.status == 409
        assert info.value.body["error"]["code"] == "stale_attempt"
    await a2.started(second)
    out = await a2.upload(second, "x.png", b"abc")
    await a2.finish(second, outputs=[out])
    done = await h.job(job["id"])
    assert done["status"] == "COMPLETED" and done["attempt"] == 2
    assert done["outputs"][0]["sha256"] == hashlib.sha256(b"abc").hexdigest()


async def test_finish_with_missing_output_is_refused(harness: MakeHarness) -> None:
    h = await harness()
    agent = h.agent("a1")
    await agent.register()
    await h.submit()
    job = (await agent.lease(2.0)).jobs[0]
    await agent.started(job)
    fake = p.OutputFile(name="never.png", size=3, sha256="0" * 64)
    with pytest.raises(ProtocolError) as info:
        await agent.finish(job, outputs=[fake])
    assert info.value.status == 422 and info.value.body["error"]["field"] == "outputs"
    assert (await h.job(job.job_id))["status"] == "RUNNING"  # still recoverable
    out = await agent.upload(job, "real.png", b"data")
    await agent.finish(job, outputs=[out])
    assert (await h.job(job.job_id))["status"] == "COMPLETED"


async def test_bad_chunks_are_refused(harness: MakeHarness) -> None:
    h = await harness()
    agent = h.agent("a1")
    await agent.register()
    await h.submit()
    job = (await agent.lease(2.0)).jobs[0]
    await agent.started(job)
    url = f"/agent/v1/jobs/{job.job_id}/outputs/o.png"
    base = {"agent_id": "a1", "attempt": "1", "size": "4", "sha256": "a" * 64}
    resp = await h.client.put(url, params={**base, "offset": "2"}, data=b"ab")
    assert resp.status == 409 and (await resp.json())["error"]["field"] == "offset"
    resp = await h.client.put(url, params={**base, "offset": "0"}, data=b"abcd")
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "sha256"
    resp = await h.client.put(
        f"/agent/v1/jobs/{job.job_id}/outputs/..%2Fetc", params={**base, "offset": "0"}, data=b"ab"
    )
    assert resp.status in (400, 404)
    resp = await h.client.put(url, params={**base, "offset": "0", "sha256": "nothex"}, data=b"x")
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "sha256"
    resp = await h.client.post(
        "/agent/v1/heartbeat", data=b"\xc1\xc1", headers={"Content-Type": "application/msgpack"}
    )
    assert resp.status == 400
    assert (await h.job(job.job_id))["status"] == "RUNNING"


async def test_cancel_queued_and_running(harness: MakeHarness) -> None:
    h = await harness()
    queued = await h.submit()
    resp = await h.client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert resp.status == 200 and (await resp.json())["status"] == "CANCELLED"
    resp = await h.client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert resp.status == 409

    agent = h.agent("a1")
    await agent.register()
    running = await h.submit()
    job = (await agent.lease(2.0)).jobs[0]
    await agent.started(job)
    waiting = asyncio.create_task(agent.lease(3.0, free={"0": 0}))
    await asyncio.sleep(0.05)
    resp = await h.client.post(f"/v1/jobs/{running['id']}/cancel")
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "RUNNING" and body["cancel_requested"] is True
    reply = await asyncio.wait_for(waiting, 2.0)  # the long-poll carries the cancel at once
    assert [c.job_id for c in reply.cancel] == [running["id"]]
    hb = await agent.heartbeat([p.RunningJob(job_id=job.job_id, attempt=1, instance_id="0")])
    assert [c.job_id for c in hb.cancel] == [running["id"]]
    await agent.finish(job, outcome="cancelled")
    done = await h.job(running["id"])
    assert done["status"] == "CANCELLED"


async def test_failures_retry_elsewhere_or_fail(harness: MakeHarness) -> None:
    h = await harness()
    a1 = h.agent("a1")
    await a1.register()
    job = await h.submit(max_retries=1)
    first = (await a1.lease(2.0)).jobs[0]
    await a1.started(first)
    a2 = h.agent("a2")
    await a2.register()
    oom = p.ErrorInfo(
        code="oom",
        message="Allocation on device",
        retryable=True,
        node_id="3",
        node_type="KSampler",
    )
    assert (await a1.finish(first, outcome="failed", error=oom)).status == "QUEUED"
    second = (await a2.lease(2.0)).jobs[0]  # a1 failed it: a2 is preferred
    assert second.job_id == job["id"] and second.attempt == 2
    await a2.started(second)
    await a2.finish(second, outcome="failed", error=oom)
    failed = await h.job(job["id"])
    assert failed["status"] == "FAILED" and failed["error"]["code"] == "oom"
    assert "after 2 attempts" in failed["error"]["message"]

    wrong = await h.submit(max_retries=3)
    leased = (await a1.lease(2.0)).jobs[0]
    bad = p.ErrorInfo(
        code="node_errors", message="Required input is missing", node_id="2", node_type="SaveImage"
    )
    await a1.finish(leased, outcome="failed", error=bad)  # from ASSIGNED: ComfyUI refused it
    done = await h.job(wrong["id"])
    assert done["status"] == "FAILED" and done["attempt"] == 1
    assert done["error"]["node_id"] == "2" and done["error"]["node_type"] == "SaveImage"


async def test_drain_requeue_does_not_spend_a_retry(harness: MakeHarness) -> None:
    h = await harness()
    a1 = h.agent("a1")
    await a1.register()
    job = await h.submit(max_retries=0)
    leased = (await a1.lease(2.0)).jobs[0]
    resp = await h.client.post("/v1/agents/a1/drain")
    assert resp.status == 202 and (await resp.json())["status"] == "DRAINING"
    hb = await a1.heartbeat([p.RunningJob(job_id=leased.job_id, attempt=1, instance_id="0")])
    assert hb.drain is True
    await a1.finish(
        leased,
        outcome="requeue",
        spend_retry=False,
        error=p.ErrorInfo(code="drain", message="agent draining"),
    )
    after = await h.job(job["id"])
    assert after["status"] == "QUEUED" and after["retries_used"] == 0
    assert not (await a1.lease(0.3)).jobs  # a draining agent gets nothing new


async def test_lost_agent_jobs_are_requeued_and_done_elsewhere(harness: MakeHarness) -> None:
    h = await harness(heartbeat_interval_s=0.1, lost_grace_s=0.1)
    a1 = h.agent("a1")
    await a1.register()
    job = await h.submit()
    leased = (await a1.lease(2.0)).jobs[0]
    await a1.started(leased)
    a2 = h.agent("a2")
    await a2.register()

    # a1 goes silent; a2 keeps heartbeating while it waits.
    async def keep_alive() -> None:
        while True:
            await a2.heartbeat()
            await asyncio.sleep(0.05)

    beat = asyncio.create_task(keep_alive())
    try:
        second = await a2.run_one(wait_s=3.0)
    finally:
        beat.cancel()
    assert second.job_id == job["id"] and second.attempt == 2
    done = await h.job(job["id"])
    assert done["status"] == "COMPLETED"
    assert any("lost" in t["reason"] for t in done["history"])
    a1_view = await (await h.client.get("/v1/agents/a1")).json()
    assert a1_view["status"] == "LOST"
    hb = await a1.heartbeat([p.RunningJob(job_id=leased.job_id, attempt=1, instance_id="0")])
    assert hb.reregister is True
    reg = await a1.register([p.RunningJob(job_id=leased.job_id, attempt=1, instance_id="0")])
    assert [d.job_id for d in reg.drop] == [leased.job_id]


async def test_job_timeout_cancels_then_fails(harness: MakeHarness) -> None:
    h = await harness()
    a1 = h.agent("a1")
    await a1.register()
    job = await h.submit(timeout_s=0.2, max_retries=0)
    leased = (await a1.lease(2.0)).jobs[0]
    await a1.started(leased)
    reply = await a1.lease(2.0, free={"0": 0})
    assert [c.job_id for c in reply.cancel] == [job["id"]]
    await a1.finish(leased, outcome="cancelled")
    done = await h.job(job["id"])
    assert done["status"] == "FAILED" and done["error"]["code"] == "timeout"


async def test_vram_is_never_over_committed(harness: MakeHarness) -> None:
    h = await harness()
    agent = h.agent("a1", gpus=[("Sim 24G", 24576)])
    agent.instances = [p.InstanceInfo(instance_id="0", gpu_index=0, capacity=4)]
    await agent.register()
    jobs = [await h.submit(resources={"vram_mb": 10000}) for _ in range(3)]
    h.coord.schedule_once()
    statuses = [(await h.job(j["id"]))["status"] for j in jobs]
    assert statuses.count("ASSIGNED") == 2 and statuses.count("QUEUED") == 1
    view = await (await h.client.get("/v1/agents/a1")).json()
    assert view["gpus"][0]["vram_reserved_mb"] == 20000
