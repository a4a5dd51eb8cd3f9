"""Overload and disk faults through the real app: 429/503 with Retry-After, nothing corrupted."""

from __future__ import annotations

import asyncio

import pytest

from comfyfleet.coordinator.admission import Overloaded, check_queue, retry_after
from comfyfleet.coordinator.api.keys import SUPERVISOR
from comfyfleet.coordinator.store.sqlite import SqliteStore
from tests.api.conftest import MakeHarness
from tests.helpers.protocol_agent import ProtocolError

pytestmark = pytest.mark.timeout(30)


def test_check_queue_bounds() -> None:
    check_queue(0, 1, 5)
    check_queue(10**6, 0, 5)  # 0 = unbounded
    with pytest.raises(Overloaded) as info:
        check_queue(3, 3, 7)
    assert info.value.status == 429 and info.value.field == "queue"
    assert retry_after(info.value, 5) == {"Retry-After": "7"}
    assert retry_after(ValueError("x"), 5) == {}


async def test_full_queue_sheds_with_429_and_retry_after(harness: MakeHarness) -> None:
    h = await harness(max_queued_jobs=2, retry_after_s=3)
    await h.submit()
    await h.submit()
    resp = await h.client.post(
        "/v1/jobs", json={"workflow": {"1": {"class_type": "X", "inputs": {}}}}
    )
    body = await resp.json()
    assert resp.status == 429, body
    assert resp.headers["Retry-After"] == "3"
    assert body["error"]["code"] == "overloaded" and body["error"]["field"] == "queue"
    assert len(h.coord.queued) == 2
    h.coord.cancel(next(iter(h.coord.queued)))
    await h.submit()  # room again


def _sqlite(h) -> SqliteStore:  # type: ignore[no-untyped-def]
    store = h.coord.store
    assert isinstance(store, SqliteStore)
    return store


async def test_disk_full_refuses_submissions_with_503_then_resumes(harness: MakeHarness) -> None:
    h = await harness(retry_after_s=2)
    before = await h.submit()
    conn = _sqlite(h)._live()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL, exactly as a full disk
    big = {str(i): {"class_type": "Note", "inputs": {"text": "x" * 2000}} for i in range(40)}
    refused = 0
    for _ in range(5):
        resp = await h.client.post("/v1/jobs", json={"workflow": big})
        body = await resp.json()
        if resp.status == 503:
            refused += 1
            assert resp.headers["Retry-After"] == "2"
            assert body["error"]["code"] == "store_unavailable"
            assert "disk full" in body["error"]["message"]
    assert refused == 5
    assert len(h.coord.jobs) == 1  # nothing half-stored in memory either
    listed = await (await h.client.get("/v1/jobs")).json()  # reads still work
    assert [j["id"] for j in listed["jobs"]] == [before["id"]]
    await asyncio.sleep(0.2)  # the background loops keep running through the fault
    conn.execute("PRAGMA max_page_count = 1073741823")
    after = await h.submit(workflow=big)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert (await h.job(after["id"]))["status"] == "QUEUED"
    assert (await h.client.get("/healthz")).status == 200


async def test_read_only_store_refuses_with_503_and_loops_survive(harness: MakeHarness) -> None:
    h = await harness()
    job = await h.submit()
    conn = _sqlite(h)._live()
    conn.execute("PRAGMA query_only = ON")  # every write now fails as on a read-only medium
    resp = await h.client.post(
        "/v1/jobs", json={"workflow": {"1": {"class_type": "X", "inputs": {}}}}
    )
    body = await resp.json()
    assert resp.status == 503 and "Retry-After" in resp.headers, body
    assert body["error"]["code"] == "store_unavailable"
    assert "read-only" in body["error"]["message"]
    agent = h.agent("a1")
    with pytest.raises(ProtocolError) as info:
        await agent.register()  # the agent is refused too, and will retry
    assert info.value.status == 503
    await asyncio.sleep(0.3)  # the scheduler tries to place the job; the store refuses
    assert (await h.job(job["id"]))["status"] == "QUEUED"
    assert not h.client.server.app[SUPERVISOR].failed.done()
    conn.execute("PRAGMA query_only = OFF")
    await agent.register()
    leased = (await agent.lease(3.0)).jobs
    assert [j.job_id for j in leased] == [job["id"]]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_body_sent_too_slowly_gets_408(harness: MakeHarness) -> None:
    h = await harness(body_read_timeout_s=0.3)
    port = h.client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"workflow":'
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(4096), 5)
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"request_timeout" in head
    writer.close()


async def test_huge_header_is_refused(harness: MakeHarness) -> None:
    h = await harness(max_header_bytes=1024)
    resp = await h.client.get("/healthz", headers={"X-Big": "a" * 4000})
    assert resp.status in (400, 431)
    assert (await h.client.get("/healthz")).status == 200


async def test_headers_sent_too_slowly_close_the_connection(harness: MakeHarness) -> None:
    h = await harness(keepalive_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", h.client.server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")  # and never the rest
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    writer.close()
    assert (await h.client.get("/healthz")).status == 200
