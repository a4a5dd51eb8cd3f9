"""Comfy API v2 on the facade's listener, in process: jobs (submit, get, list, cancel, workflow,
SSE events), assets (upload, from-hash, by-hash, get, content, delete), tenants, and bad input
on every route answered in v2's envelope, never a 5xx.

A protocol agent describes its ComfyUI (the simulator's /object_info) and plays the agent's part:
it leases the job, forwards ComfyUI's frames, uploads an output with ComfyUI's name and finishes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import blake3
import pytest
from yarl import URL

from comfyfleet.coordinator.api.keys import COORDINATOR
from comfyfleet.shared import protocol as p
from tests.helpers.comfy_facade import NORMAL, Facade, png
from tests.helpers.protocol_agent import ProtocolAgent

WORKFLOW = NORMAL["prompt"]
ERROR_KEYS = {"code", "message", "details"}
JPEG = b"\xff\xd8jpeg"


def asset_form(data: bytes, file_path: str = "photo.png", **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("content_type", "image/png")
    form.add_field("file_path", file_path)
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("file", data, filename=file_path, content_type="image/png")
    return form


def b3(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


def frame(kind: str, pid: str, **data: Any) -> p.JobEvent:
    return p.JobEvent(kind="comfy", t=time.time(), data={"type": kind, "data": {**data,
                      "prompt_id": pid}})  # fmt: skip


async def events(agent: ProtocolAgent, job: p.Assignment, items: list[p.JobEvent]) -> None:
    msg = p.Events(agent_id=agent.agent_id, job_id=job.job_id, attempt=job.attempt, events=items)
    await agent.call("events", msg, p.Ack)


async def run(agent: ProtocolAgent, image: bytes, hold: asyncio.Event | None = None) -> None:
    """Lease the job, forward ComfyUI's frames for it, then store one output and complete."""
    job = (await agent.lease(5.0)).jobs[0]
    await agent.started(job, "agent-prompt")
    pid = "agent-prompt"
    await events(agent, job, [
        frame("execution_start", pid), frame("execution_cached", pid, nodes=[]),
        frame("executing", pid, node="1"), frame("executing", pid, node="2"),
        frame("progress", pid, node="2", value=3, max=10),
        p.JobEvent(kind="preview", t=time.time(), node="2", image=JPEG, mime="image/jpeg"),
    ])  # fmt: skip
    if hold is not None:
        await hold.wait()
    out = await agent.upload(job, "probe_invert_00001_.png", image)
    ref = p.ComfyRef(filename="probe_invert_00001_.png")
    out = p.OutputFile(name=out.name, size=out.size, sha256=out.sha256, node_id="3",
                       content_type="image/png", comfy_ref=ref)  # fmt: skip
    await agent.finish(job, outputs=[out])


async def submit(c: Any, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    resp = await c.post("/api/v2/jobs", json=body, **kw)
    data = await resp.json()
    assert resp.status == 201, data
    return data


async def wait_status(c: Any, job_id: str, want: str, **kw: Any) -> dict[str, Any]:
    for _ in range(200):
        job = await (await c.get(f"/api/v2/jobs/{job_id}", **kw)).json()
        if job["status"] == want:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(job)


async def read_sse(resp: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a stream, until it ends."""
    out: list[tuple[str, dict[str, Any]]] = []
    kind = None
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind is not None:
            out.append((kind, json.loads(line[6:])))
            kind = None
    return out


async def test_a_job_runs_and_its_output_is_an_asset(open_facade: Facade) -> None:
    c = open_facade.client
    agent = await open_facade.agent()
    job = await submit(c, {"workflow": WORKFLOW, "metadata": {"batch": "7"}, "priority": 5})
    assert job["status"] == "queued" and job["queue_position"] == 1
    assert job["metadata"] == {"batch": "7"} and job["priority"] == 5
    assert job["urls"]["self"].endswith(f"/api/v2/jobs/{job['id']}")
    image = png((1, 2, 3), (16, 8))
    hold = asyncio.Event()
    runner = asyncio.create_task(run(agent, image, hold))
    running = await wait_status(c, job["id"], "running")
    for _ in range(100):
        running = await (await c.get(f"/api/v2/jobs/{job['id']}")).json()
        if running["progress"]["step"] == 3:
            break
        await asyncio.sleep(0.02)
    progress = running["progress"]
    assert progress["current_node"] == "2" and progress["current_node_class"] == "ImageInvert"
    assert progress["steps"] == 10 and progress["message"] == "ImageInvert 3/10"
    assert progress["nodes_done"] == 1 and progress["nodes_total"] == 3
    assert 0.3 < progress["value"] < 0.5
    stream = await c.get(f"/api/v2/jobs/{job['id']}/events")
    assert stream.status == 200 and stream.content_type == "text/event-stream"
    hold.set()
    await runner
    seen = await read_sse(stream)
    kinds = [k for k, _ in seen]
    assert kinds[0] == "status" and seen[0][1]["status"] == "running"
    assert "preview" in kinds and seen[kinds.index("preview")][1]["node_id"] == "2"
    assert kinds[-2:] == ["output", "status"] and seen[-1][1] == {"status": "succeeded"}
    assert seen[-3] == ("progress", {**seen[-3][1], "value": 1.0})
    done = await (await c.get(f"/api/v2/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["started_at"] and done["completed_at"] and done["metrics"]["queue_ms"] >= 0
    (output,) = done["outputs"]
    assert output == seen[-2][1]
    assert output["name"] == "probe_invert_00001_.png" and output["type"] == "image"
    assert output["size_bytes"] == len(image) and output["node_id"] == "3"
    got = await c.get(URL(output["url"]).path)
    assert got.status == 200 and await got.read() == image
    part = await c.get(f"/api/v2/assets/{output['id']}/content", headers={"Range": "bytes=0-3"})
    assert part.status == 206 and await part.read() == image[:4]
    meta = await (await c.get(f"/api/v2/assets/{output['id']}")).json()
    assert meta["job_id"] == job["id"] and meta["size_bytes"] == len(image)
    flow = await (await c.get(f"/api/v2/jobs/{job['id']}/workflow")).json()
    assert flow == {"workflow": WORKFLOW, "format": "api"}
    history = await (await c.get(f"/history/{job['id']}")).json()  # a prompt like any other
    assert history[job["id"]]["status"]["status_str"] == "success"
    late = await read_sse(await c.get(f"/api/v2/jobs/{job['id']}/events"))
    assert [k for k, _ in late] == ["output", "status"]


async def test_cancel_waiting_and_running_jobs(open_facade: Facade) -> None:
    c = open_facade.client
    agent = await open_facade.agent()
    first = await submit(c, {"workflow": WORKFLOW})
    second = await submit(c, {"workflow": WORKFLOW})
    assert second["queue_position"] == 2
    job = (await agent.lease(5.0)).jobs[0]
    await agent.started(job, "x")
    running = await wait_status(c, first["id"], "running")
    assert running["queue_position"] is None
    waiting = await (await c.post(f"/api/v2/jobs/{second['id']}/cancel")).json()
    assert waiting["status"] == "canceled"
    canceling = await (await c.post(f"/api/v2/jobs/{first['id']}/cancel")).json()
    assert canceling["status"] == "canceling"
    again = await (await c.post(f"/api/v2/jobs/{second['id']}/cancel")).json()
    assert again["status"] == "canceled"  # idempotent
    await agent.finish(job, outcome="cancelled")
    assert (await wait_status(c, first["id"], "canceled"))["progress"] is None


async def test_idempotency_key_is_single_use(open_facade: Facade) -> None:
    c = open_facade.client
    headers = {"Idempotency-Key": "k-1"}
    await submit(c, {"workflow": WORKFLOW}, headers=headers)
    resp = await c.post("/api/v2/jobs", json={"workflow": WORKFLOW}, headers=headers)
    body = await resp.json()
    assert resp.status == 422 and body["error"]["code"] == "idempotency_key_reuse"


async def test_list_filters_and_pages(open_facade: Facade) -> None:
    c = open_facade.client
    ids = [(await submit(c, {"workflow": WORKFLOW, "metadata": {"n": str(n % 2)}}))["id"]
           for n in range(5)]  # fmt: skip
    await c.post("/prompt", json={"prompt": WORKFLOW})  # not a v2 job: not listed
    await c.post(f"/api/v2/jobs/{ids[0]}/cancel")
    listed = await (await c.get("/api/v2/jobs")).json()
    assert [j["id"] for j in listed["jobs"]] == ids[::-1] and "next_cursor" not in listed
    assert listed["jobs"][0]["create_time"] == listed["jobs"][0]["created_at"]
    first = await (await c.get("/api/v2/jobs?limit=2")).json()
    rest = await (await c.get(f"/api/v2/jobs?limit=2&cursor={first['next_cursor']}")).json()
    assert [j["id"] for j in first["jobs"] + rest["jobs"]] == ids[::-1][:4]
    canceled = await (await c.get("/api/v2/jobs?status=canceled")).json()
    assert [j["id"] for j in canceled["jobs"]] == [ids[0]]
    labelled = await (await c.get("/api/v2/jobs", params={"metadata[n]": "1"})).json()
    assert [j["id"] for j in labelled["jobs"]] == [ids[3], ids[1]]


async def test_assets_upload_dedup_and_use_in_a_workflow(open_facade: Facade) -> None:
    c = open_facade.client
    await open_facade.agent()
    data = png((7, 7, 7))
    resp = await c.post("/api/v2/assets", data=asset_form(data, expected_hash=b3(data)))
    asset = await resp.json()
    assert resp.status == 201 and asset["created_new"] is True, asset
    assert asset["hash"] == b3(data) and asset["size_bytes"] == len(data)
    assert (await c.head(f"/api/v2/assets/by-hash/{b3(data)}")).status == 200
    assert (await c.head(f"/api/v2/assets/by-hash/{b3(b'x')}")).status == 404
    again = await c.post("/api/v2/assets", data=asset_form(data, "other.png"))
    assert again.status == 200 and (await again.json())["id"] == asset["id"]
    minted = await c.post("/api/v2/assets/from-hash", json={"hash": b3(data)})
    assert minted.status == 200 and (await minted.json())["id"] == asset["id"]
    content = await c.get(f"/api/v2/assets/{asset['id']}/content")
    assert await content.read() == data and content.content_type == "image/png"
    listed = await (await c.get("/object_info/LoadImage")).json()  # also a ComfyUI upload
    assert "photo.png" in listed["LoadImage"]["input"]["required"]["image"][0]
    ref = {"__type": "core/ASSET", "info": {"id": asset["id"], "file_path": "photo.png"}}
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": ref}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    job = await submit(c, {"workflow": workflow})
    flow = await (await c.get(f"/api/v2/jobs/{job['id']}/workflow")).json()
    assert flow["workflow"]["1"]["inputs"]["image"] == "photo.png"
    coord = open_facade.main.server.app[COORDINATOR]
    (record,) = [coord.store.get_job(j) for j in coord.jobs]
    assert record is not None and base64.b64decode(record.spec.inputs["photo.png"]) == data
    missing = {**workflow, "1": {"class_type": "LoadImage", "inputs": {
        "image": {"__type": "core/ASSET", "info": {"id": "nope"}}}}}  # fmt: skip
    resp = await c.post("/api/v2/jobs", json={"workflow": missing})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["code"] == "missing_asset"
    assert body["error"]["details"] == {"missing_ids": ["nope"]}
    assert (await c.delete(f"/api/v2/assets/{asset['id']}")).status == 204
    assert (await c.get(f"/api/v2/assets/{asset['id']}")).status == 404
    assert (await c.head(f"/api/v2/assets/by-hash/{b3(data)}")).status == 404


async def test_assets_and_jobs_are_per_tenant(keyed: Facade) -> None:
    c = keyed.client
    assert (await c.get("/api/v2/health")).status == 200  # no key needed
    refused = await c.get("/api/v2/jobs")
    assert refused.status == 401 and set((await refused.json())["error"]) == ERROR_KEYS
    agent_token = await c.get("/api/v2/jobs", headers=keyed.auth("gpu"))
    assert agent_token.status == 403
    assert (await agent_token.json())["error"]["code"] == "forbidden"
    acme, beta = keyed.auth("acme"), keyed.auth("beta")
    data = png((3, 1, 4))
    asset = await (await c.post("/api/v2/assets", data=asset_form(data), headers=acme)).json()
    assert (await c.get(f"/api/v2/assets/{asset['id']}", headers=beta)).status == 404
    assert (await c.head(f"/api/v2/assets/by-hash/{b3(data)}", headers=beta)).status == 404
    resp = await c.post("/api/v2/assets/from-hash", json={"hash": b3(data)}, headers=beta)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "blob_not_found"
    job = await submit(c, {"workflow": WORKFLOW}, headers=acme)
    assert (await c.get(f"/api/v2/jobs/{job['id']}", headers=beta)).status == 404
    assert (await c.post(f"/api/v2/jobs/{job['id']}/cancel", headers=beta)).status == 404
    assert (await (await c.get("/api/v2/jobs", headers=beta)).json())["jobs"] == []
    assert (await c.get(f"/api/v2/jobs/{job['id']}", headers=acme)).status == 200


async def test_invalid_workflow_names_the_node(open_facade: Facade) -> None:
    c = open_facade.client
    await open_facade.agent()
    bad = {**WORKFLOW, "2": {"class_type": "ImageInvert", "inputs": {}}}
    resp = await c.post("/api/v2/jobs", json={"workflow": bad})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["code"] == "invalid_workflow"
    assert "2" in body["error"]["details"]["node_errors"]
    ui = {"nodes": [], "links": [], "last_node_id": 1}
    resp = await c.post("/api/v2/jobs", json={"workflow": ui})
    assert (await resp.json())["error"]["code"] == "workflow_format_ui"


BAD: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/v2/jobs", {"data": b"not json"}),
    ("POST", "/api/v2/jobs", {"json": [1]}),
    ("POST", "/api/v2/jobs", {"json": {}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": "x"}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW, "inputs": {}}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW, "extra_data": {"x": 1}}}),
    (
        "POST",
        "/api/v2/jobs",
        {"json": {"workflow": WORKFLOW, "extra_data": {"api_key_comfy_org": 1}}},
    ),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW, "metadata": 5}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW, "metadata": {"a b": "1"}}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW, "metadata": {"a": 1}}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW, "metadata": "x" * 2000}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW, "priority": "high"}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW, "priority": 10**9}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW, "priority": True}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": {"1": None}}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": {"1": {"class_type": ["x"]}}}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": {"1": {"__type": "core/ASSET"}}}}),
    ("POST", "/api/v2/jobs", {"json": {"workflow": WORKFLOW}, "headers": {"Idempotency-Key": ""}}),
    ("GET", "/api/v2/jobs?limit=abc", {}),
    ("GET", "/api/v2/jobs?limit=0", {}),
    ("GET", "/api/v2/jobs?limit=101", {}),
    ("GET", "/api/v2/jobs?status=done", {}),
    ("GET", "/api/v2/jobs?cursor=%%%", {}),
    ("GET", "/api/v2/jobs?metadata=x", {}),
    ("GET", "/api/v2/jobs/not-a-uuid", {}),
    ("GET", "/api/v2/jobs/00000000-0000-0000-0000-000000000000", {}),
    ("GET", "/api/v2/jobs/%2e%2e/workflow", {}),
    ("POST", "/api/v2/jobs/nope/cancel", {}),
    ("GET", "/api/v2/jobs/nope/events", {}),
    ("DELETE", "/api/v2/jobs", {}),
    ("GET", "/api/v2/nothing-here", {}),
    ("POST", "/api/v2/assets", {"data": b"junk"}),
    ("POST", "/api/v2/assets", {"data": {"file_path": "x.png"}}),
    ("POST", "/api/v2/assets", {"data": asset_form(b"x", "../evil.png")}),
    ("POST", "/api/v2/assets", {"data": asset_form(b"x", "/etc/passwd")}),
    ("POST", "/api/v2/assets", {"data": asset_form(b"x", "checkpoints/m.safetensors")}),
    ("POST", "/api/v2/assets", {"data": asset_form(b"x", "models/unknown/m.bin")}),
    ("POST", "/api/v2/assets", {"data": asset_form(b"x", "weird/x.png")}),
    ("POST", "/api/v2/assets", {"data": asset_form(b"x", "x.png", expected_hash="blake3:00")}),
    (
        "POST",
        "/api/v2/assets",
        {"data": b"--b\r\n", "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
    ),  # fmt: skip
    ("POST", "/api/v2/assets/from-hash", {"data": b"{"}),
    ("POST", "/api/v2/assets/from-hash", {"json": {"hash": 5}}),
    ("POST", "/api/v2/assets/from-hash", {"json": {"hash": "blake3:ab", "tags": "x"}}),
    ("POST", "/api/v2/assets/from-hash", {"json": ["hash"]}),
    ("HEAD", "/api/v2/assets/by-hash/%00", {}),
    ("GET", "/api/v2/assets/nope", {}),
    ("GET", "/api/v2/assets/00000000-0000-0000-0000-000000000000.99/content", {}),
    ("GET", "/api/v2/assets/..%2F..%2Fetc/content", {}),
    ("DELETE", "/api/v2/assets/nope", {}),
    ("PUT", "/api/v2/assets/nope", {}),
]


@pytest.mark.parametrize(("method", "path", "kw"), BAD)
async def test_bad_input_is_refused_in_v2s_shape(
    open_facade: Facade, method: str, path: str, kw: dict[str, Any]
) -> None:
    await open_facade.agent()
    resp = await open_facade.client.request(method, path, **kw)
    body = await resp.read()
    assert 400 <= resp.status < 500, (resp.status, body)
    if method != "HEAD":
        error = json.loads(body)["error"]
        assert set(error) == ERROR_KEYS, error
        assert error["code"] and error["message"]
