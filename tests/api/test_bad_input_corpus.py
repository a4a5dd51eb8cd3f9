"""A corpus of hand-made bad requests: each refused with its status and the field it names.

The client API cases are one table; the agent protocol cases run against a leased job and end
by showing that the job is still recoverable (a correct upload and finish complete it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, NamedTuple

import msgspec
import pytest

from comfyfleet.shared import codec
from comfyfleet.shared import protocol as p
from tests.api.conftest import WORKFLOW, Harness, MakeHarness
from tests.helpers.protocol_agent import ProtocolAgent

pytestmark = pytest.mark.timeout(30)
JSON = "application/json"


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def spec(**over: Any) -> bytes:
    return js({"workflow": WORKFLOW, **over})


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


class Case(NamedTuple):
    name: str
    method: str
    path: str
    body: bytes | None
    ctype: str | None
    status: int
    field: str | None


SUBMIT = "/v1/jobs"
CYCLE = {
    "1": {"class_type": "A", "inputs": {"x": ["2", 0]}},
    "2": {"class_type": "B", "inputs": {"y": ["1", 0]}},
}
CLIENT_CASES = [
    Case("not json", "POST", SUBMIT, b"{workflow:", JSON, 400, "body"),
    Case("empty body", "POST", SUBMIT, b"", JSON, 400, "body"),
    Case("wrong content type", "POST", SUBMIT, spec(), "text/plain", 415, "Content-Type"),
    Case(
        "form content type",
        "POST",
        SUBMIT,
        b"workflow=1",
        "application/x-www-form-urlencoded",
        415,
        "Content-Type",
    ),
    Case(
        "msgpack not for clients",
        "POST",
        SUBMIT,
        msgspec.msgpack.encode({"workflow": WORKFLOW}),
        codec.MSGPACK,
        415,
        "Content-Type",
    ),
    Case("body is a list", "POST", SUBMIT, js([WORKFLOW]), JSON, 400, "body"),
    Case("workflow is a list", "POST", SUBMIT, js({"workflow": []}), JSON, 400, "workflow"),
    Case("workflow is a string", "POST", SUBMIT, js({"workflow": "x"}), JSON, 400, "workflow"),
    Case("priority wrong type", "POST", SUBMIT, spec(priority="high"), JSON, 400, "priority"),
    Case("timeout wrong type", "POST", SUBMIT, spec(timeout_s=[1]), JSON, 400, "timeout_s"),
    Case(
        "labels wrong type",
        "POST",
        SUBMIT,
        spec(constraints={"labels": {"a": 1}}),
        JSON,
        400,
        "constraints.labels",
    ),
    Case("missing workflow", "POST", SUBMIT, js({"priority": 1}), JSON, 400, "workflow"),
    Case("empty workflow", "POST", SUBMIT, js({"workflow": {}}), JSON, 400, "workflow"),
    Case(
        "UI-format workflow",
        "POST",
        SUBMIT,
        js({"workflow": {"nodes": [{"id": 1}], "links": [], "version": 0.4}}),
        JSON,
        422,
        "workflow",
    ),
    Case(
        "node is not an object", "POST", SUBMIT, js({"workflow": {"1": 5}}), JSON, 400, "workflow.1"
    ),
    Case(
        "node without class_type",
        "POST",
        SUBMIT,
        js({"workflow": {"1": {"inputs": {}}}}),
        JSON,
        400,
        "workflow.1.class_type",
    ),
    Case(
        "inputs not an object",
        "POST",
        SUBMIT,
        js({"workflow": {"1": {"class_type": "A", "inputs": [1]}}}),
        JSON,
        400,
        "workflow.1.inputs",
    ),
    Case(
        "link to missing node",
        "POST",
        SUBMIT,
        js({"workflow": {"1": {"class_type": "A", "inputs": {"x": ["9", 0]}}}}),
        JSON,
        400,
        "workflow.1.inputs.x",
    ),
    Case(
        "negative output index",
        "POST",
        SUBMIT,
        js({"workflow": {**WORKFLOW, "3": {"class_type": "A", "inputs": {"x": ["1", -1]}}}}),
        JSON,
        400,
        "workflow.3.inputs.x",
    ),
    Case("cyclic graph", "POST", SUBMIT, js({"workflow": CYCLE}), JSON, 400, "workflow"),
    Case(
        "self loop",
        "POST",
        SUBMIT,
        js({"workflow": {"1": {"class_type": "A", "inputs": {"x": ["1", 0]}}}}),
        JSON,
        400,
        "workflow",
    ),
    Case("huge body", "POST", SUBMIT, spec(metadata={"blob": "x" * (9 << 20)}), JSON, 413, "body"),
    Case(
        "deeply nested body (parser)",
        "POST",
        SUBMIT,
        b'{"workflow": {"1": {"class_type": "A", "inputs": {"x": '
        + b"[" * 200_000
        + b"]" * 200_000
        + b"}}}}",
        JSON,
        400,
        "body",
    ),
    Case(
        "deeply nested input",
        "POST",
        SUBMIT,
        js({"workflow": {"1": {"class_type": "A", "inputs": {"x": nested(500)}}}}),
        JSON,
        400,
        "workflow.1.inputs",
    ),
    Case(
        "deeply nested metadata",
        "POST",
        SUBMIT,
        spec(metadata={"m": nested(500)}),
        JSON,
        400,
        "metadata",
    ),
    Case(
        "invalid UTF-8",
        "POST",
        SUBMIT,
        b'{"workflow": {"1": {"class_type": "\xc3\x28"}}}',
        JSON,
        400,
        "body",
    ),
    Case(
        "lone surrogate escape",
        "POST",
        SUBMIT,
        b'{"workflow": {"1": {"class_type": "\\ud800", "inputs": {}}}}',
        JSON,
        400,
        "body",
    ),
    Case(
        "negative vram",
        "POST",
        SUBMIT,
        spec(resources={"vram_mb": -1}),
        JSON,
        400,
        "resources.vram_mb",
    ),
    Case(
        "huge vram",
        "POST",
        SUBMIT,
        spec(resources={"vram_mb": 10**30}),
        JSON,
        400,
        "resources.vram_mb",
    ),
    Case(
        "NaN cpu",
        "POST",
        SUBMIT,
        b'{"workflow": {"1": {"class_type": "A"}}, "resources": {"cpu": NaN}}',
        JSON,
        400,
        "body",
    ),
    Case(
        "infinite cpu",
        "POST",
        SUBMIT,
        b'{"workflow": {"1": {"class_type": "A"}}, "resources": {"cpu": 1e999}}',
        JSON,
        400,
        "resources.cpu",
    ),
    Case(
        "negative ram",
        "POST",
        SUBMIT,
        spec(resources={"ram_mb": -5}),
        JSON,
        400,
        "resources.ram_mb",
    ),
    Case("too many gpus", "POST", SUBMIT, spec(resources={"gpus": 8}), JSON, 400, "resources.gpus"),
    Case("zero timeout", "POST", SUBMIT, spec(timeout_s=0), JSON, 400, "timeout_s"),
    Case(
        "unknown top-level field", "POST", SUBMIT, spec(callback="http://x"), JSON, 400, "callback"
    ),
    Case(
        "unknown resources field",
        "POST",
        SUBMIT,
        spec(resources={"tpus": 1}),
        JSON,
        400,
        "resources.tpus",
    ),
    Case("bad job id", "GET", "/v1/jobs/bad%20id", None, None, 400, "job_id"),
    Case("overlong job id", "GET", "/v1/jobs/" + "a" * 300, None, None, 400, "job_id"),
    Case("unknown job id", "GET", "/v1/jobs/nosuchjob", None, None, 404, "job_id"),
    Case("cancel unknown job", "POST", "/v1/jobs/nosuchjob/cancel", None, None, 404, "job_id"),
    Case("bad agent id", "GET", "/v1/agents/a%00b", None, None, 400, "agent_id"),
    Case("garbage cursor", "GET", "/v1/jobs?cursor=%%%garbage", None, None, 400, "cursor"),
    Case("base64 but not a cursor", "GET", "/v1/jobs?cursor=aGVsbG8", None, None, 400, "cursor"),
    Case("limit not a number", "GET", "/v1/jobs?limit=ten", None, None, 400, "limit"),
    Case("limit zero", "GET", "/v1/jobs?limit=0", None, None, 400, "limit"),
    Case("limit huge", "GET", "/v1/jobs?limit=99999999999999999999", None, None, 400, "limit"),
    Case("unknown status filter", "GET", "/v1/jobs?status=DONE", None, None, 400, "status"),
    Case(
        "output name traversal",
        "GET",
        "/v1/jobs/nosuchjob/outputs/..%2F..%2Fetc%2Fpasswd",
        None,
        None,
        400,
        "name",
    ),
    Case("output name dotfile", "GET", "/v1/jobs/nosuchjob/outputs/.env", None, None, 400, "name"),
]


@pytest.mark.parametrize("case", CLIENT_CASES, ids=[c.name for c in CLIENT_CASES])
async def test_client_corpus(harness: MakeHarness, case: Case) -> None:
    h = await harness()
    headers = {"Content-Type": case.ctype} if case.ctype else {}
    resp = await h.client.request(case.method, case.path, data=case.body, headers=headers)
    assert resp.content_type == JSON, await resp.text()
    data = await resp.json()
    assert resp.status == case.status, data
    assert set(data) == {"error"} and set(data["error"]) == {"code", "message", "field"}
    assert data["error"]["message"] and data["error"]["code"]
    assert data["error"]["field"] == case.field, data
    assert sum(h.coord.store.count_by_status().values()) == 0  # no job exists
    assert (await h.client.get("/healthz")).status == 200


async def test_path_traversal_in_agent_upload_names(harness: MakeHarness) -> None:
    h = await harness()
    for name in ("..%2F..%2Fescape", ".hidden", "a%00b"):
        resp = await h.client.put(
            f"/agent/v1/jobs/j1/outputs/{name}",
            params={
                "agent_id": "a",
                "attempt": "1",
                "offset": "0",
                "size": "1",
                "sha256": "0" * 64,
            },
            data=b"x",
        )
        data = await resp.json()
        assert resp.status == 400 and data["error"]["field"] == "name", (name, data)
    assert not any(h.coord.config.data_dir.parent.glob("escape*"))


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/j1/outputs/..",
        "/v1/jobs/j1/outputs/%2E%2E",
        "/v1/jobs/j1/outputs/..%2f..%2fetc",
        "/agent/v1/jobs/j1/outputs/..?agent_id=a&attempt=1&size=1",
    ],
)
async def test_dot_segments_sent_raw_reach_the_name_check(harness: MakeHarness, path: str) -> None:
    """HTTP clients normalise `..` away; a hostile one does not, so speak HTTP by hand."""
    h = await harness()
    reader, writer = await asyncio.open_connection("127.0.0.1", h.client.server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), raw
    assert json.loads(body)["error"]["field"] == "name"


# ---------------------------------------------------------------- agent protocol


async def leased(h: Harness) -> tuple[ProtocolAgent, p.Assignment]:
    agent = h.agent("a1")
    await agent.register()
    await h.submit()
    job = (await agent.lease(3.0)).jobs[0]
    await agent.started(job)
    return agent, job


async def post_raw(
    h: Harness, path: str, body: bytes, ctype: str = codec.MSGPACK
) -> tuple[int, dict[str, Any]]:
    resp = await h.client.post(f"/agent/v1/{path}", data=body, headers={"Content-Type": ctype})
    return resp.status, await resp.json()


async def put_chunk(
    h: Harness, job: p.Assignment, name: str, data: bytes, offset: int, size: int, sha: str
) -> tuple[int, dict[str, Any]]:
    resp = await h.client.put(
        f"/agent/v1/jobs/{job.job_id}/outputs/{name}",
        data=data,
        params={
            "agent_id": "a1",
            "attempt": str(job.attempt),
            "offset": str(offset),
            "size": str(size),
            "sha256": sha,
        },
    )
    return resp.status, await resp.json()


MALFORMED_MSGPACK = [
    ("not msgpack", b"\xc1\xc1\xc1", "body"),
    ("truncated map", b"\x85\xa8agent_id", "body"),
    ("wrong shape", msgspec.msgpack.encode([1, 2, 3]), "body"),
    ("wrong field type", msgspec.msgpack.encode({"agent_id": 5}), "agent_id"),
    ("unknown field", msgspec.msgpack.encode({"agent_id": "a1", "x": 1}), "x"),
    ("bad agent id", msgspec.msgpack.encode({"agent_id": "../../x"}), "agent_id"),
    ("invalid UTF-8 string", b"\x81\xa8agent_id\xa2\x80\x80", "body"),
    ("deep nesting", b"\x91" * 100_000 + b"\x01", "body"),
]


@pytest.mark.parametrize(
    ("name", "body", "field"), MALFORMED_MSGPACK, ids=[c[0] for c in MALFORMED_MSGPACK]
)
async def test_malformed_msgpack_is_refused_and_harmless(
    harness: MakeHarness, name: str, body: bytes, field: str | None
) -> None:
    h = await harness()
    agent, job = await leased(h)
    for path in ("register", "heartbeat", "lease", "started", "events", "finish"):
        status, data = await post_raw(h, path, body)
        assert status == 400, (path, data)
        assert data["error"]["field"] == field, (path, data)
    out = await agent.upload(job, "out_00001_.png", b"fine")
    assert (await agent.finish(job, outputs=[out])).status == "COMPLETED"


async def test_output_faults_leave_the_job_recoverable(harness: MakeHarness) -> None:
    h = await harness()
    agent, job = await leased(h)
    data = bytes(range(256)) * 40
    sha = hashlib.sha256(data).hexdigest()
    name = "out_00001_.png"

    # out-of-order offset: the first chunk must start at 0
    status, body = await put_chunk(h, job, name, data[100:200], 100, len(data), sha)
    assert (status, body["error"]["field"]) == (409, "offset"), body
    # wrong checksum: the whole file arrives but does not hash to the declared sha256
    status, body = await put_chunk(h, job, name, data, 0, len(data), "0" * 64)
    assert (status, body["error"]["field"]) == (400, "sha256"), body
    # a chunk that runs past the declared size
    status, body = await put_chunk(h, job, name, data, 0, 10, sha)
    assert (status, body["error"]["field"]) == (400, "offset"), body
    # a bad sha256 parameter, a negative offset
    status, body = await put_chunk(h, job, name, data, 0, len(data), "xyz")
    assert (status, body["error"]["field"]) == (400, "sha256"), body
    status, body = await put_chunk(h, job, name, data, -1, len(data), sha)
    assert (status, body["error"]["field"]) == (400, "offset"), body
    # truncated: only half is sent, then the agent claims completion
    status, body = await put_chunk(h, job, name, data[:5000], 0, len(data), sha)
    assert status == 200 and body["received"] == 5000 and not body["complete"], body
    manifest = p.OutputFile(name=name, size=len(data), sha256=sha)
    status, body = await post_raw(
        h,
        "finish",
        codec.encode(
            p.Finish(
                agent_id="a1",
                job_id=job.job_id,
                attempt=job.attempt,
                outcome="completed",
                outputs=[manifest],
            )
        ),
    )
    assert (status, body["error"]["field"]) == (422, "outputs"), body
    # a finish naming an output of which nothing was uploaded
    other = p.OutputFile(name="out_00002_.png", size=10, sha256=sha)
    status, body = await post_raw(
        h,
        "finish",
        codec.encode(
            p.Finish(
                agent_id="a1",
                job_id=job.job_id,
                attempt=job.attempt,
                outcome="completed",
                outputs=[manifest, other],
            )
        ),
    )
    assert (status, body["error"]["field"]) == (422, "outputs"), body
    assert "out_00002_.png" in body["error"]["message"]
    assert (await h.job(job.job_id))["status"] == "RUNNING"
    # recoverable: resume at the offset the coordinator holds, then finish
    status, body = await put_chunk(h, job, name, data[5000:], 5000, len(data), sha)
    assert status == 200 and body["complete"], body
    assert (await agent.finish(job, outputs=[manifest])).status == "COMPLETED"
    done = await h.job(job.job_id)
    assert done["outputs"][0]["sha256"] == sha
    resp = await h.client.get(done["outputs"][0]["url"])
    assert await resp.read() == data


async def test_a_requeued_attempt_leaves_no_files_behind(harness: MakeHarness) -> None:
    h = await harness()
    agent, job = await leased(h)
    data = b"x" * 10_000
    sha = hashlib.sha256(data).hexdigest()
    status, _ = await put_chunk(h, job, "out_00001_.png", data[:4000], 0, len(data), sha)
    assert status == 200
    outputs = h.coord.outputs
    assert outputs.attempt_dir(job.job_id, job.attempt).exists()
    # the agent falls silent mid-upload and is declared lost: attempt 1's partial file goes
    for _ in range(100):
        if (await h.job(job.job_id))["status"] == "QUEUED":
            break
        await asyncio.sleep(0.05)
    assert (await h.job(job.job_id))["status"] == "QUEUED"
    assert not outputs.attempt_dir(job.job_id, job.attempt).exists()
    await agent.register()
    # a stale upload for attempt 1 is refused and stores nothing
    status, body = await put_chunk(h, job, "out_00001_.png", data[4000:], 4000, len(data), sha)
    assert status == 409 and body["error"]["field"] == "attempt", body
    assert not outputs.attempt_dir(job.job_id, job.attempt).exists()
    second = (await agent.lease(3.0)).jobs[0]
    assert second.attempt == 2
    await agent.started(second)
    out = await agent.upload(second, "out_00001_.png", data)
    assert (await agent.finish(second, outputs=[out])).status == "COMPLETED"
    assert [d.name for d in (outputs.root / job.job_id).iterdir()] == ["2"]
