"""Outputs in S3-compatible object storage, against moto's server mode as a real process on
loopback: agents upload straight to the bucket (a multipart upload an agent was killed in is
resumed), the coordinator verifies size and sha256 before COMPLETE, downloads redirect to
presigned GETs, and a bucket that refuses the coordinator's credentials fails the job with the
reason, leaving nothing half-written."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from comfyfleet.agent.coordinator_client import CoordinatorClient
from comfyfleet.shared import codec
from comfyfleet.shared import protocol as p
from tests.api.conftest import MakeHarness
from tests.helpers.s3 import BUCKET, S3Server, start_s3

MIB = 1 << 20


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    server = start_s3(tmp_path)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def store_config(server: S3Server) -> dict[str, Any]:
    return {
        "output_store": f"s3://{BUCKET}/fleet",
        "s3_endpoint_url": server.url,
        "s3_part_size": 5 * MIB,
    }


async def running_job(h: Any) -> tuple[p.Assignment, CoordinatorClient]:
    job = await h.submit()
    agent = h.agent("a1")
    reply = await agent.register()
    assert reply.direct_uploads
    assert reply.inline_output_bytes == 0  # outputs go to the bucket, never in a finish report
    lease = (await agent.lease(5.0)).jobs[0]
    await agent.started(lease)
    client = CoordinatorClient(h.client.session, str(h.client.make_url("/")), "a1")
    client.direct_uploads = True
    assert lease.job_id == job["id"]
    return lease, client


async def plan(h: Any, job: p.Assignment, name: str, size: int, what: str = "plan") -> Any:
    resp = await h.client.post(
        f"/agent/v1/jobs/{job.job_id}/outputs/{name}/{what}",
        params={"agent_id": "a1", "attempt": str(job.attempt), "size": str(size)},
        headers={"Accept": codec.MSGPACK},
    )
    body = await resp.read()
    return resp.status, (codec.decode(body, p.UploadPlan) if resp.status == 200 else body)


async def test_a_multipart_upload_cut_short_is_resumed_then_verified(
    harness: MakeHarness, s3: S3Server, tmp_path: Path
) -> None:
    h = await harness(**store_config(s3))
    job, client = await running_job(h)
    data = os.urandom(11 * MIB)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    status, first = await plan(h, job, "big.png", len(data))
    assert status == 200 and [x.number for x in first.parts] == [1, 2, 3]
    async with aiohttp.ClientSession() as raw:  # the agent PUTs part 1, then is killed
        async with raw.put(first.parts[0].url, data=data[: 5 * MIB]) as r:
            assert r.status == 200
    status, again = await plan(h, job, "big.png", len(data))
    assert [x.number for x in again.parts] == [2, 3]  # the restarted agent sends only the rest
    await client.upload(
        p.JobRef(job_id=job.job_id, attempt=job.attempt), "big.png", path, len(data), sha, MIB
    )
    out = p.OutputFile(name="big.png", size=len(data), sha256=sha)
    await h.agent("a1").finish(job, outputs=[out])
    view = await h.job(job.job_id)
    assert view["status"] == "COMPLETED"
    key = f"fleet/default/{job.job_id}/{job.attempt}/big.png"
    assert s3.objects() == {key: data} and s3.pending_uploads() == []
    resp = await h.client.get(view["outputs"][0]["url"], allow_redirects=False)
    assert resp.status == 307 and resp.headers["Location"].startswith(s3.url)
    async with aiohttp.ClientSession() as raw, raw.get(resp.headers["Location"]) as got:
        assert await got.read() == data
        assert got.headers["Content-Type"] == "image/png"


async def test_completion_needs_matching_bytes_and_nothing_bad_stays(
    harness: MakeHarness, s3: S3Server
) -> None:
    h = await harness(**store_config(s3))
    job, _ = await running_job(h)
    status, first = await plan(h, job, "o.png", 3)
    assert [x.number for x in first.parts] == [0]  # small: one PUT
    async with aiohttp.ClientSession() as raw, raw.put(first.parts[0].url, data=b"xyz") as r:
        assert r.status == 200
    wrong = hashlib.sha256(b"abc").hexdigest()
    resp = await h.client.post(
        f"/agent/v1/jobs/{job.job_id}/outputs/o.png/complete",
        params={"agent_id": "a1", "attempt": str(job.attempt), "size": "3", "sha256": wrong},
    )
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "sha256"
    assert s3.objects() == {}  # the object that did not match is gone
    finish = await h.client.post(
        "/agent/v1/finish",
        json={
            "agent_id": "a1", "job_id": job.job_id, "attempt": job.attempt, "outcome": "completed",
            "outputs": [{"name": "o.png", "size": 3, "sha256": wrong}],
        },
    )  # fmt: skip
    assert finish.status == 422  # never COMPLETE with outputs not verified


async def test_outputs_inside_a_finish_are_refused_with_a_bucket(
    harness: MakeHarness, s3: S3Server
) -> None:
    h = await harness(**store_config(s3))
    job, _ = await running_job(h)
    sha = hashlib.sha256(b"xyz").hexdigest()
    finish = await h.client.post(
        "/agent/v1/finish",
        json={
            "agent_id": "a1", "job_id": job.job_id, "attempt": job.attempt, "outcome": "completed",
            "outputs": [{"name": "o.png", "size": 3, "sha256": sha, "data": "eHl6"}],
        },
    )  # fmt: skip
    assert finish.status == 400 and (await finish.json())["error"]["field"] == "outputs.0.data"
    assert s3.objects() == {}


async def test_chunks_to_the_coordinator_are_refused_with_a_bucket(
    harness: MakeHarness, s3: S3Server
) -> None:
    h = await harness(**store_config(s3))
    job, _ = await running_job(h)
    with pytest.raises(Exception) as err:
        await h.agent("a1").upload(job, "o.png", b"png")
    assert "object storage" in str(err.value)


async def test_wrong_credentials_fail_the_job_with_the_reason(
    harness: MakeHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_s3(tmp_path, auth=True)
    try:
        for name, value in server.env(secret="not-the-secret").items():
            monkeypatch.setenv(name, value)
        h = await harness(**store_config(server))
        job, _ = await running_job(h)
        status, body = await plan(h, job, "o.png", 10)
        assert status == 409  # the attempt is over: the agent drops it
        view = await h.job(job.job_id)
        assert view["status"] == "FAILED"
        assert view["error"]["code"] == "output_store_refused"
        message = view["error"]["message"]
        assert "object storage refused" in message
        assert "SignatureDoesNotMatch" in message or "InvalidAccessKeyId" in message
        assert "not-the-secret" not in str(view)  # credentials never shown
        assert server.objects() == {} and server.pending_uploads() == []
    finally:
        server.stop()


async def test_retention_deletes_a_jobs_objects_and_counts_bytes(
    harness: MakeHarness, s3: S3Server
) -> None:
    import asyncio

    h = await harness(**store_config(s3), retention_s=0.2)
    job, client = await running_job(h)
    data = b"0123456789"
    path = Path(h.coord.config.data_dir) / "o.png"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    await client.upload(
        p.JobRef(job_id=job.job_id, attempt=job.attempt), "o.png", path, 10, sha, MIB
    )
    await h.agent("a1").finish(job, outputs=[p.OutputFile(name="o.png", size=10, sha256=sha)])
    assert len(s3.objects()) == 1
    assert h.coord.outputs.stored_bytes() == 10  # type: ignore[attr-defined]
    await asyncio.sleep(0.3)
    assert await h.coord.retention.sweep() == 1
    assert s3.objects() == {} and s3.pending_uploads() == []
    assert (await h.client.get(f"/v1/jobs/{job.job_id}")).status == 404
    assert h.coord.metrics.output_bytes_deleted._value.get() == 10
