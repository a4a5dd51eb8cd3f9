"""Live streams (SSE), /metrics, the dashboard route, and the Python client, through the app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from comfyfleet.client import APIError, AsyncClient, StreamEvent
from comfyfleet.shared import protocol as p
from tests.api.conftest import WORKFLOW, Harness, MakeHarness

pytestmark = pytest.mark.timeout(30)


def sample(text: str, metric: str, /, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {metric} {labels}")


def client_of(h: Harness) -> AsyncClient:
    return AsyncClient(str(h.client.make_url("")).rstrip("/"))


async def collect(stream: object, until: int | None = None) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    async for event in stream:  # type: ignore[attr-defined]
        out.append(event)
        if until is not None and len(out) >= until:
            break
    return out


async def test_job_stream_follows_a_job_to_its_end(harness: MakeHarness, tmp_path: Path) -> None:
    h = await harness()
    agent = h.agent("a1")
    await agent.register()
    async with client_of(h) as fleet:
        job = await fleet.submit(WORKFLOW, vram_mb=1000, idempotency_key="k1")
        again = await fleet.submit(WORKFLOW, vram_mb=1000, idempotency_key="k1")
        assert again.id == job.id
        stream = asyncio.create_task(collect(fleet.events(job.id)))
        leased = (await agent.lease(2.0)).jobs[0]
        await agent.started(leased)
        await agent.events(
            leased,
            [
                p.JobEvent(
                    kind="progress",
                    t=1.0,
                    node="3",
                    node_type="KSampler",
                    value=2,
                    max=4,
                    fraction=0.5,
                ),
                p.JobEvent(kind="preview", t=1.1, image=b"\xff\xd8jpeg", mime="image/jpeg"),
            ],
        )
        assert await fleet.fetch(f"/v1/jobs/{job.id}/preview") == b"\xff\xd8jpeg"
        out = await agent.upload(leased, "out_00001_.png", b"png")
        await agent.finish(leased, outputs=[out])
        events = await asyncio.wait_for(stream, 10)
        kinds = [e.kind for e in events]
        statuses = [e.data["status"] for e in events if e.kind == "job"]
        assert statuses[-3:] == ["ASSIGNED", "RUNNING", "COMPLETED"]
        assert events[-1].terminal and events[-1].data["outputs"][0]["name"] == "out_00001_.png"
        progress = next(e for e in events if e.kind == "progress")
        assert (progress.data["node_type"], progress.data["fraction"]) == ("KSampler", 0.5)
        preview = next(e for e in events if e.kind == "preview")
        assert preview.data["url"].startswith(f"/v1/jobs/{job.id}/preview?")
        assert kinds.index("output") < len(kinds) - 1
        ids = [e.id for e in events if e.id is not None]
        assert ids == sorted(ids)

        # resume from the middle: exactly the events after that id, then the end
        middle = next(e for e in events if e.kind == "progress")
        resumed = await collect(fleet.events(job.id, last_event_id=middle.id))
        assert [e.id for e in resumed] == [e.id for e in events if e.id > middle.id]  # type: ignore[operator]

        # a finished job: its final state at once, then the stream ends
        final = await collect(fleet.events(job.id))
        assert len(final) == 1 and final[0].data["status"] == "COMPLETED"
        # resuming after the terminal event still ends
        after = await asyncio.wait_for(collect(fleet.events(job.id, last_event_id=ids[-1])), 5)
        assert after[-1].terminal

        done = await fleet.wait(job.id, timeout_s=5)
        assert done.status == "COMPLETED" and done.outputs[0].size == 3
        paths = await fleet.download_outputs(job.id, tmp_path / "dl")
        assert [x.read_bytes() for x in paths] == [b"png"]


async def test_fleet_stream_shows_agents_and_jobs(harness: MakeHarness) -> None:
    h = await harness()
    async with client_of(h) as fleet:
        stream = fleet.events()
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.1)
        agent = h.agent("a1")
        await agent.register()
        event = await asyncio.wait_for(first, 5)
        assert (event.kind, event.data["agent_id"], event.data["event"]) == (
            "agent",
            "a1",
            "registered",
        )
        job = await fleet.submit(WORKFLOW)
        seen = []
        while len(seen) < 2:
            e = await asyncio.wait_for(stream.__anext__(), 5)
            if e.kind == "job":
                seen.append(e.data["status"])
        assert seen == ["SUBMITTED", "QUEUED"] or seen[:2] == ["QUEUED", "ASSIGNED"], seen
        drained = await fleet.drain("a1")
        assert drained.id == "a1"
        while (e := await asyncio.wait_for(stream.__anext__(), 5)).kind != "agent":
            pass
        assert e.data["event"] == "draining"
        await stream.aclose()
        assert (await fleet.get(job.id)).id == job.id


async def test_stream_errors_name_the_field(harness: MakeHarness) -> None:
    h = await harness()
    resp = await h.client.get("/v1/jobs/nope/events")
    assert resp.status == 404 and (await resp.json())["error"]["field"] == "job_id"
    resp = await h.client.get("/v1/events", headers={"Last-Event-ID": "x"})
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "Last-Event-ID"
    async with client_of(h) as fleet:
        with pytest.raises(APIError) as err:
            await fleet.submit({"1": {"class_type": "X", "inputs": {"a": ["9", 0]}}})
        assert err.value.status == 400 and err.value.field and err.value.message


async def test_metrics_show_jobs_agents_and_vram(harness: MakeHarness) -> None:
    h = await harness()
    agent = h.agent("a1", gpus=[("Sim GPU", 24576)])
    await agent.register()
    job = await h.submit(resources={"vram_mb": 4000})
    await agent.run_one()
    failed = await h.submit(resources={"vram_mb": 1000})
    leased = (await agent.lease(2.0)).jobs[0]
    oom = p.ErrorInfo(code="oom", message="CUDA out of memory", retryable=True)
    assert (await agent.finish(leased, outcome="failed", error=oom)).status == "QUEUED"
    leased = (await agent.lease(2.0)).jobs[0]
    await agent.finish(
        leased, outcome="failed", error=p.ErrorInfo(code="node_errors", message="bad")
    )
    resp = await h.client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    assert sample(text, "comfyfleet_jobs_finished_total", status="COMPLETED") == 1
    assert sample(text, "comfyfleet_jobs_finished_total", status="FAILED") == 1
    assert sample(text, "comfyfleet_failures_total", reason="node_errors") == 1
    assert sample(text, "comfyfleet_agents", status="ONLINE") == 1
    assert sample(text, "comfyfleet_queue_depth") == 0
    gpu = {"agent_id": "a1", "gpu": "0", "name": "Sim GPU"}
    assert sample(text, "comfyfleet_gpu_vram_total_bytes", **gpu) == 24576 * 2**20
    assert sample(text, "comfyfleet_gpu_vram_reserved_bytes", **gpu) == 0
    assert sample(text, "comfyfleet_requeues_total", reason="oom") == 1
    assert sample(text, "comfyfleet_placement_latency_seconds_count") == 3
    assert sample(text, "comfyfleet_submit_to_running_seconds_count") == 1
    assert sample(text, "comfyfleet_job_duration_seconds_count", status="COMPLETED") == 1
    assert job["id"] != failed["id"]


async def test_dashboard_is_served(harness: MakeHarness) -> None:
    h = await harness()
    resp = await h.client.get("/")
    assert resp.status == 200 and "text/html" in resp.content_type
    page = await resp.text()
    assert "/static/app.js" in page
    resp = await h.client.get("/static/app.js")
    assert resp.status == 200 and "/v1/events" in await resp.text()
    resp = await h.client.get("/static/../service.py")
    assert resp.status in (403, 404)
