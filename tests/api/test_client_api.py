"""Client API: every endpoint and every class of validation error."""

from __future__ import annotations

import json

import msgspec
import pytest

from tests.api.conftest import WORKFLOW, MakeHarness

pytestmark = pytest.mark.timeout(30)


async def test_submit_returns_the_stored_job(harness: MakeHarness) -> None:
    h = await harness()
    job = await h.submit(priority=5, metadata={"who": "test"}, resources={"vram_mb": 1000})
    assert job["status"] == "QUEUED"
    assert job["attempt"] == 0
    assert job["resources"]["vram_mb"] == 1000
    assert [t["to_status"] for t in job["history"]] == ["SUBMITTED", "QUEUED"]
    stored = h.coord.store.get_job(job["id"])
    assert stored is not None and stored.spec.metadata == {"who": "test"}
    again = await h.job(job["id"])
    assert again["id"] == job["id"] and again["priority"] == 5


async def test_idempotency_key_returns_the_same_job(harness: MakeHarness) -> None:
    h = await harness()
    first = await h.submit(headers={"Idempotency-Key": "k-1"})
    resp = await h.client.post(
        "/v1/jobs", json={"workflow": WORKFLOW}, headers={"Idempotency-Key": "k-1"}
    )
    assert resp.status == 200
    assert resp.headers["Idempotent-Replayed"] == "true"
    assert (await resp.json())["id"] == first["id"]
    assert sum(h.coord.store.count_by_status().values()) == 1


BAD = [
    # (raw body, content type, status, field, code)
    (b"{nope", "application/json", 400, "body", "malformed"),
    (b"", "application/json", 400, "body", "missing"),
    (b'{"workflow": {}}', "text/plain", 415, "Content-Type", "unsupported_media_type"),
    (b'{"resources": {}}', "application/json", 400, "workflow", "missing"),
    (b'{"workflow": {}}', "application/json", 400, "workflow", "empty"),
    (b'{"workflow": []}', "application/json", 400, "workflow", "invalid"),
    (
        json.dumps({"workflow": {"nodes": [], "links": []}}).encode(),
        "application/json",
        422,
        "workflow",
        "ui_format",
    ),
    (
        json.dumps({"workflow": {"1": {"class_type": "A", "inputs": {"x": ["7", 0]}}}}).encode(),
        "application/json",
        400,
        "workflow.1.inputs.x",
        "bad_link",
    ),
    (
        json.dumps({"workflow": {"1": {"inputs": {}}}}).encode(),
        "application/json",
        400,
        "workflow.1.class_type",
        "missing",
    ),
    (
        json.dumps({"workflow": WORKFLOW, "resources": {"vram_mb": -5}}).encode(),
        "application/json",
        400,
        "resources.vram_mb",
        "invalid",
    ),
    (
        json.dumps({"workflow": WORKFLOW, "resources": {"gpus": 4}}).encode(),
        "application/json",
        400,
        "resources.gpus",
        "invalid",
    ),
    (
        json.dumps({"workflow": WORKFLOW, "resources": {"gpus": 0, "vram_mb": 10}}).encode(),
        "application/json",
        400,
        "resources.vram_mb",
        "invalid",
    ),
    (
        json.dumps({"workflow": WORKFLOW, "surprise": 1}).encode(),
        "application/json",
        400,
        "surprise",
        "unknown_field",
    ),
    (
        json.dumps({"workflow": WORKFLOW, "priority": "urgent"}).encode(),
        "application/json",
        400,
        "priority",
        "invalid",
    ),
    (b'{"workflow": {"1": {"class_type": "\xff"}}}', "application/json", 400, "body", "malformed"),
]


@pytest.mark.parametrize(("body", "ctype", "status", "field", "code"), BAD)
async def test_bad_submissions_name_field_and_create_nothing(
    harness: MakeHarness, body: bytes, ctype: str, status: int, field: str | None, code: str
) -> None:
    h = await harness()
    resp = await h.client.post("/v1/jobs", data=body, headers={"Content-Type": ctype})
    data = await resp.json()
    assert resp.status == status, data
    assert data["error"]["field"] == field
    assert data["error"]["code"] == code
    assert data["error"]["message"]
    assert sum(h.coord.store.count_by_status().values()) == 0


async def test_body_over_the_cap_is_413(harness: MakeHarness) -> None:
    h = await harness(max_body_bytes=2000)
    big = {"workflow": WORKFLOW, "metadata": {"blob": "x" * 5000}}
    resp = await h.client.post("/v1/jobs", json=big)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"


async def test_unknown_and_malformed_ids(harness: MakeHarness) -> None:
    h = await harness()
    resp = await h.client.get("/v1/jobs/doesnotexist")
    assert resp.status == 404
    assert (await resp.json())["error"]["field"] == "job_id"
    resp = await h.client.get("/v1/jobs/bad%20id")
    assert resp.status == 400
    resp = await h.client.get("/v1/agents/nobody")
    assert resp.status == 404
    resp = await h.client.post("/v1/agents/nobody/drain")
    assert resp.status == 404


async def test_list_filters_and_pages(harness: MakeHarness) -> None:
    h = await harness()
    ids = [(await h.submit())["id"] for _ in range(7)]
    cancelled = ids[0]
    assert (await h.client.post(f"/v1/jobs/{cancelled}/cancel")).status == 200
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        resp = await h.client.get("/v1/jobs", params=params)
        data = await resp.json()
        seen += [j["id"] for j in data["jobs"]]
        cursor = data["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 7
    resp = await h.client.get("/v1/jobs", params={"status": "cancelled"})
    assert [j["id"] for j in (await resp.json())["jobs"]] == [cancelled]
    for params, field in [
        ({"status": "NOPE"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "!!garbage"}, "cursor"),
    ]:
        resp = await h.client.get("/v1/jobs", params=params)
        assert resp.status == 400, params
        assert (await resp.json())["error"]["field"] == field


async def test_pending_reason_when_nothing_can_hold_the_job(harness: MakeHarness) -> None:
    h = await harness()
    agent = h.agent("small", gpus=[("Sim 8G", 8192)])
    await agent.register()
    job = await h.submit(resources={"vram_mb": 40000})
    h.coord.schedule_once()
    reason = (await h.job(job["id"]))["pending_reason"]
    assert reason and "40000" in reason and "8192" in reason


async def test_healthz(harness: MakeHarness) -> None:
    h = await harness()
    resp = await h.client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["ok"] is True


async def test_method_not_allowed_is_json(harness: MakeHarness) -> None:
    h = await harness()
    resp = await h.client.delete("/v1/jobs")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"]


async def test_outputs_are_served_by_their_name_not_by_what_the_agent_declared(
    harness: MakeHarness,
) -> None:
    """An agent declares an HTML and an SVG output as text/html and image/svg+xml: they are
    served as downloads of application/octet-stream with nosniff; a PNG stays an inline image."""
    h = await harness()
    agent = h.agent("a1")
    await agent.register()
    job = await h.submit()
    leased = (await agent.lease(2.0)).jobs[0]
    await agent.started(leased)
    declared = {"page.html": "text/html", "icon.svg": "image/svg+xml", "o.png": "text/html"}
    outs = [
        msgspec.structs.replace(
            await agent.upload(leased, name, b"<script>x()</script>"), content_type=ctype
        )
        for name, ctype in declared.items()
    ]
    await agent.finish(leased, outputs=outs)
    done = await h.job(job["id"])
    shown = {o["name"]: o["content_type"] for o in done["outputs"]}
    assert shown == {
        "page.html": "application/octet-stream",
        "icon.svg": "application/octet-stream",
        "o.png": "image/png",
    }
    expect = {
        "page.html": ("application/octet-stream", "attachment"),
        "icon.svg": ("application/octet-stream", "attachment"),
        "o.png": ("image/png", "inline"),
    }
    for name, (ctype, disposition) in expect.items():
        resp = await h.client.get(f"/v1/jobs/{job['id']}/outputs/{name}")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == ctype, name
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Disposition"].startswith(disposition), name


async def test_the_dashboard_page_carries_a_content_security_policy(harness: MakeHarness) -> None:
    h = await harness()
    resp = await h.client.get("/")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
