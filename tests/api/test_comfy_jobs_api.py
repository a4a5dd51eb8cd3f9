"""ComfyUI's Jobs API (`/api/jobs`) on the facade, in process: the list with its filters,
sorting and paging, one job with its outputs, cancel (one and a batch), tenants, and bad input
answered as ComfyUI answers it (`{"error": ...}`, 400 / 404), never a 5xx."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from comfyfleet.coordinator.comfy.jobs_api import _summary
from comfyfleet.shared import protocol as p
from tests.helpers.comfy_facade import NORMAL, Facade, make, png

WORKFLOW = NORMAL["prompt"]


async def post(c: Any, **body: Any) -> str:
    pid = str(uuid.uuid4())
    resp = await c.post("/prompt", json={"prompt": WORKFLOW, "prompt_id": pid, **body})
    assert resp.status == 200, await resp.text()
    return pid


async def test_list_get_and_cancel(open_facade: Facade) -> None:
    c = open_facade.client
    agent = await open_facade.agent()
    extra = {"extra_pnginfo": {"workflow": {"id": "wf-1"}}}
    done, running, waiting = [await post(c, extra_data=extra) for _ in range(3)]
    job = (await agent.lease(5.0)).jobs[0]
    await agent.started(job, "x")
    image = png((9, 9, 9))
    out = await agent.upload(job, "probe_invert_00001_.png", image)
    ref = p.ComfyRef(filename="probe_invert_00001_.png")
    out = p.OutputFile(name=out.name, size=out.size, sha256=out.sha256, node_id="3",
                       content_type="image/png", comfy_ref=ref)  # fmt: skip
    await agent.finish(job, outputs=[out])
    second = (await agent.lease(5.0)).jobs[0]
    await agent.started(second, "y")
    for _ in range(100):
        listed = await (await c.get("/api/jobs")).json()
        if [j["status"] for j in listed["jobs"]] == ["pending", "in_progress", "completed"]:
            break
        await asyncio.sleep(0.02)
    assert [j["id"] for j in listed["jobs"]] == [waiting, running, done]  # newest first
    assert listed["pagination"] == {"offset": 0, "limit": None, "total": 3, "has_more": False}
    finished = listed["jobs"][2]
    assert finished["outputs_count"] == 1 and finished["previewable_outputs_count"] == 1
    assert finished["preview_output"]["nodeId"] == "3"
    assert finished["preview_output"]["mediaType"] == "images"
    assert finished["workflow_id"] == "wf-1" and finished["completion_status"] == "success"
    assert finished["execution_end_time"] >= finished["execution_start_time"]
    assert "outputs" not in finished
    page = await (await c.get("/api/jobs?limit=1&offset=1&sort_order=asc")).json()
    assert [j["id"] for j in page["jobs"]] == [running]
    assert page["pagination"] == {"offset": 1, "limit": 1, "total": 3, "has_more": True}
    only = await (await c.get("/api/jobs?status=completed,pending")).json()
    assert [j["id"] for j in only["jobs"]] == [waiting, done]
    assert (await (await c.get("/api/jobs?workflow_id=other")).json())["jobs"] == []

    full = await (await c.get(f"/api/jobs/{done}")).json()
    assert full["status"] == "completed" and full["workflow"]["prompt"] == WORKFLOW
    (item,) = full["outputs"]["3"]["images"]
    view = await c.get("/view", params=item)
    assert view.status == 200 and await view.read() == image
    assert full["execution_status"]["status_str"] == "success"
    pending = await (await c.get(f"/api/jobs/{waiting}")).json()
    assert pending == {"id": waiting, "status": "pending", "priority": pending["priority"],
                       "create_time": pending["create_time"], "outputs_count": 0,
                       "previewable_outputs_count": 0, "workflow_id": "wf-1"}  # fmt: skip

    resp = await c.post(f"/api/jobs/{waiting}/cancel")
    assert await resp.json() == {"cancelled": True}
    assert await (await c.post(f"/api/jobs/{done}/cancel")).json() == {"cancelled": False}
    assert (await c.get(f"/api/jobs/{waiting}")).status == 404  # removed while it waited
    batch = await c.post("/api/jobs/cancel", json={"job_ids": [running, done]})
    assert await batch.json() == {"cancelled": True}
    await agent.finish(second, outcome="cancelled")
    for _ in range(100):
        got = await (await c.get(f"/api/jobs/{running}")).json()
        if got["status"] == "cancelled":
            break
        await asyncio.sleep(0.02)
    assert got["status"] == "cancelled"


async def test_each_tenant_sees_only_its_own(aiohttp_client: Any, tmp_path: Any) -> None:
    keyed = await make(aiohttp_client, tmp_path, keys=True)
    c = keyed.client
    pid = str(uuid.uuid4())
    body = {"prompt": WORKFLOW, "prompt_id": pid}
    assert (await c.post("/prompt", json=body, headers=keyed.auth("acme"))).status == 200
    assert (await c.get(f"/api/jobs/{pid}", headers=keyed.auth("beta"))).status == 404
    listed = await (await c.get("/api/jobs", headers=keyed.auth("beta"))).json()
    assert listed["jobs"] == []
    cancel = await c.post(f"/api/jobs/{pid}/cancel", headers=keyed.auth("beta"))
    assert await cancel.json() == {"cancelled": False}
    mine = await (await c.get("/api/jobs", headers=keyed.auth("acme"))).json()
    assert [j["id"] for j in mine["jobs"]] == [pid]


def test_preview_prefers_saved_visual_output_over_text_and_temp() -> None:
    outputs = {
        "1": {"text": ["hello"]},
        "2": {"images": [{"filename": "a.png", "type": "temp", "subfolder": ""}]},
        "3": {"files": [{"filename": "notes.txt", "type": "output"}]},
        "4": {"images": [{"filename": "b.png", "type": "output", "subfolder": ""}],
              "animated": [False]},
        "5": {"latents": [{"filename": "x.latent", "type": "output"}]},
    }  # fmt: skip
    count, previewable, preview = _summary(outputs)
    assert count == 4 and previewable == 3
    assert preview is not None and preview["filename"] == "b.png" and preview["nodeId"] == "4"
    assert _summary({"1": {"text": ["x" * 2000]}})[2] == {
        "content": "x" * 1024, "truncated": True, "nodeId": "1", "mediaType": "text"}  # fmt: skip
    assert _summary({"1": {"meshes": ["m.glb"]}})[2]["mediaType"] == "3d"  # type: ignore[index]


BAD = [
    ("GET", "/api/jobs?status=done", {}),
    ("GET", "/api/jobs?sort_by=name", {}),
    ("GET", "/api/jobs?sort_order=up", {}),
    ("GET", "/api/jobs?limit=x", {}),
    ("GET", "/api/jobs?limit=0", {}),
    ("GET", "/api/jobs?offset=1.5", {}),
    ("GET", "/api/jobs/not-a-job", {}),
    ("POST", "/api/jobs/cancel", {"data": b"{"}),
    ("POST", "/api/jobs/cancel", {"json": {"job_ids": "x"}}),
    ("POST", "/api/jobs/cancel", {"json": {"job_ids": ["nope", {"a": 1}]}}),
    ("POST", "/api/jobs/cancel", {"json": [1]}),
]


@pytest.mark.parametrize(("method", "path", "kw"), BAD)
async def test_bad_input_is_refused_as_comfyui_does(
    open_facade: Facade, method: str, path: str, kw: dict[str, Any]
) -> None:
    resp = await open_facade.client.request(method, path, **kw)
    body = await resp.json()
    assert resp.status in (400, 404), body
    assert isinstance(body["error"], str) and body["error"]
