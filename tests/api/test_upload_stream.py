"""Output chunks received as a stream: bodies without a length, size caps, one chunk at a time
per file, and what a broken-off body leaves behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from comfyfleet.agent.coordinator_client import CoordinatorClient
from comfyfleet.coordinator.api.upload import UPLOAD_LOCKS, UploadLocks
from comfyfleet.shared import protocol as p
from tests.api.conftest import Harness, MakeHarness

pytestmark = pytest.mark.timeout(30)


async def _pieces(
    data: bytes, size: int, gate: asyncio.Event | None = None
) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        if gate is not None and i:
            await gate.wait()
        yield data[i : i + size]


async def _leased(h: Harness) -> tuple[p.Assignment, str]:
    _, job = await h.running_job()
    return job, f"/agent/v1/jobs/{job.job_id}/outputs/o.png"


async def test_chunked_body_is_stored_and_verified(harness: MakeHarness) -> None:
    h = await harness()
    job, url = await _leased(h)
    data = bytes(range(256)) * 4000
    params = {
        "agent_id": "a1",
        "attempt": "1",
        "size": str(len(data)),
        "offset": "0",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    resp = await h.client.put(url, params=params, data=_pieces(data, 7777))
    assert resp.status == 200, await resp.text()
    assert h.coord.outputs.final_path(job.job_id, 1, "o.png").read_bytes() == data


async def test_chunked_body_past_size_or_cap_is_refused(harness: MakeHarness) -> None:
    h = await harness(max_chunk_bytes=10_000)
    job, url = await _leased(h)
    base = {"agent_id": "a1", "attempt": "1", "offset": "0", "sha256": "a" * 64}
    resp = await h.client.put(url, params={**base, "size": "100"}, data=_pieces(b"x" * 500, 60))
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "offset"
    resp = await h.client.put(
        url, params={**base, "size": "50000"}, data=_pieces(b"x" * 20_000, 1000)
    )
    assert resp.status == 413 and (await resp.json())["error"]["field"] == "body"
    resp = await h.client.put(url, params={**base, "size": "50000"}, data=b"x" * 20_000)
    assert resp.status == 413


async def test_second_put_of_a_chunk_waits_for_the_first(harness: MakeHarness) -> None:
    h = await harness()
    job, url = await _leased(h)
    data = b"0123456789" * 1000
    params = {
        "agent_id": "a1",
        "attempt": "1",
        "size": str(len(data)),
        "offset": "0",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    gate = asyncio.Event()
    first = asyncio.ensure_future(h.client.put(url, params=params, data=_pieces(data, 1000, gate)))
    for _ in range(500):  # until the first PUT holds the file's lock
        if _locked(h):
            break
        await asyncio.sleep(0.01)
    assert _locked(h)
    second = asyncio.ensure_future(h.client.put(url, params=params, data=data))
    await asyncio.sleep(0.1)
    assert not second.done()  # held back while the first streams
    gate.set()
    r1, r2 = await first, await second
    assert r1.status == 200 and (await r1.json())["complete"]
    # the retry finds the file already stored with this content: complete, not a mixed file
    assert r2.status == 200 and (await r2.json())["complete"]
    assert h.coord.outputs.final_path(job.job_id, 1, "o.png").read_bytes() == data


async def test_stalled_chunk_gets_408_and_frees_the_file(harness: MakeHarness) -> None:
    """An agent that stops sending mid-chunk is cut off after body_read_timeout_s (408) and
    does not keep the file's lock; what arrived is kept, and the agent resumes from there."""
    h = await harness(body_read_timeout_s=0.3)
    job, url = await _leased(h)
    data = b"0123456789" * 1000
    params = {
        "agent_id": "a1",
        "attempt": "1",
        "size": str(len(data)),
        "offset": "0",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    never = asyncio.Event()
    stalled = await h.client.put(url, params=params, data=_pieces(data, 1000, never))
    assert stalled.status == 408, await stalled.text()
    assert (await stalled.json())["error"]["field"] == "body"
    assert not _locked(h)
    state = await h.client.get(url, params={k: params[k] for k in ("agent_id", "attempt", "size")})
    held = (await state.json())["received"]
    assert state.status == 200 and 0 < held < len(data)
    retry = await h.client.put(url, params={**params, "offset": str(held)}, data=data[held:])
    assert retry.status == 200 and (await retry.json())["complete"]
    assert h.coord.outputs.final_path(job.job_id, 1, "o.png").read_bytes() == data


def _locked(h: Harness) -> bool:
    return bool(h.client.server.app[UPLOAD_LOCKS].locks)


async def test_agent_upload_reads_ahead_and_resumes(harness: MakeHarness, tmp_path: Path) -> None:
    """The agent's uploader, many chunks (each read while the one before travels), resuming
    after part of the file was already sent."""
    h = await harness()
    job, _ = await _leased(h)
    data = os.urandom(50_000)
    path = tmp_path / "o.png"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    h.coord.outputs.write_chunk(job.job_id, 1, "o.png", 0, len(data), sha, data[:12_345])
    cc = CoordinatorClient(h.client.session, str(h.client.make_url("/")), "a1")
    ref = p.JobRef(job_id=job.job_id, attempt=1)
    await cc.upload(ref, "o.png", path, len(data), sha, 4096)  # starts at 0: 409, then resumes
    assert h.coord.outputs.final_path(job.job_id, 1, "o.png").read_bytes() == data
    assert h.coord.outputs.verify(job.job_id, 1, "o.png", len(data), sha)


async def test_upload_locks_serialise_three_and_forget_the_file() -> None:
    locks = UploadLocks()
    key = ("j", 1, "o.png")
    inside: list[int] = []
    order: list[int] = []

    async def put(n: int) -> None:
        async with locks.hold(key):
            inside.append(n)
            assert len(inside) == 1  # never two at once
            await asyncio.sleep(0.01)
            order.append(n)
            inside.remove(n)

    await asyncio.gather(put(1), put(2), put(3))
    assert sorted(order) == [1, 2, 3] and locks.locks == {}


async def test_an_attempt_gone_stale_while_its_file_was_synced_keeps_no_file(
    harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's fsync and rename run off the event loop; if the attempt went stale
    meanwhile (here its agent handed the job back), the agent hears 409 and no file of the
    stale attempt stays."""
    from comfyfleet.coordinator.outputs import ChunkSink

    h = await harness()
    agent, job = await h.running_job()
    url = f"/agent/v1/jobs/{job.job_id}/outputs/o.png"
    loop = asyncio.get_running_loop()
    inner = ChunkSink.close

    async def hand_back() -> None:
        await agent.finish(job, outcome="requeue", spend_retry=False)

    def close(sink: ChunkSink) -> object:  # the attempt goes stale before the file is stored
        asyncio.run_coroutine_threadsafe(hand_back(), loop).result(10)
        return inner(sink)

    monkeypatch.setattr(ChunkSink, "close", close)
    data = b"z" * 5000
    params = {"agent_id": "a1", "attempt": "1", "size": str(len(data)), "offset": "0",
              "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    resp = await h.client.put(url, params=params, data=data)
    assert resp.status == 409, await resp.text()
    assert (await resp.json())["error"]["code"] == "stale_attempt"
    assert not h.coord.outputs.final_path(job.job_id, 1, "o.png").exists()
    assert h.coord.jobs[job.job_id].attempt == 2  # handed back, placed again
