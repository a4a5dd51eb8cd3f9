"""Small outputs inside the finish report (OutputFile.data): stored as a completed upload would be
before the report is applied, on the single finish route and in a reports batch; a bad file
refuses its own report naming the field, a store fault refuses the request and applies nothing,
an attempt gone stale keeps no file."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import threading
import time
from typing import Any

import pytest

from comfyfleet.coordinator import inline_outputs
from comfyfleet.shared import protocol as p
from tests.api.conftest import Harness, MakeHarness
from tests.helpers.protocol_agent import ProtocolAgent, ProtocolError

pytestmark = pytest.mark.timeout(60)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def inline(name: str, data: bytes, **over: Any) -> p.OutputFile:
    fields: dict[str, Any] = {
        "name": name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": "image/png",
        "data": data,
    }
    return p.OutputFile(**{**fields, **over})


async def leased(h: Harness, n: int) -> tuple[ProtocolAgent, list[p.Assignment]]:
    agent = h.agent("a1", gpus=[("Sim GPU", 24576)] * n)
    reply = await agent.register()
    assert reply.inline_output_bytes == h.coord.config.inline_output_bytes > 0
    for _ in range(n):
        await h.submit()
    jobs: list[p.Assignment] = []
    while len(jobs) < n:
        jobs.extend((await agent.lease(2.0)).jobs)
    for job in jobs:
        await agent.started(job)
    return agent, jobs


async def served(h: Harness, job_id: str, name: str) -> bytes:
    resp = await h.client.get(f"/v1/jobs/{job_id}/outputs/{name}")
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def refused(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ProtocolError) as caught:
        await call
    return caught.value.status, caught.value.body["error"]


def attempt_dir(h: Harness, job: p.Assignment) -> Any:
    return h.coord.outputs.attempt_dir(job.job_id, job.attempt)


async def test_an_inline_finish_completes_and_its_files_are_served(harness: MakeHarness) -> None:
    h = await harness()
    agent, (job,) = await leased(h, 1)
    text = b"a caption"
    await agent.finish(job, outputs=[inline("o.png", PNG), inline("t.txt", text)])
    record = await h.job(job.job_id)
    assert record["status"] == "COMPLETED"
    assert [o["name"] for o in record["outputs"]] == ["o.png", "t.txt"]
    assert all("data" not in o for o in record["outputs"])  # bytes live in files, not the record
    assert await served(h, job.job_id, "o.png") == PNG
    assert await served(h, job.job_id, "t.txt") == text
    assert not list(attempt_dir(h, job).glob(".*"))  # no temporary file left


async def test_inline_and_uploaded_outputs_go_together_in_a_batch(harness: MakeHarness) -> None:
    h = await harness()
    agent, (j1, j2) = await leased(h, 2)
    big = bytes(range(256)) * 2000
    uploaded = await agent.upload(j2, "big.png", big)
    reply = await agent.reports(
        [
            p.Report(finish=agent.finish_msg(j1, outputs=[inline("o.png", PNG)])),
            p.Report(finish=agent.finish_msg(j2, outputs=[uploaded, inline("s.png", b"s")])),
        ]
    )
    assert [a.ack and a.ack.status for a in reply.acks] == ["COMPLETED", "COMPLETED"]
    assert await served(h, j1.job_id, "o.png") == PNG
    assert await served(h, j2.job_id, "big.png") == big
    assert await served(h, j2.job_id, "s.png") == b"s"


async def test_a_checksum_mismatch_refuses_its_report_and_keeps_no_file(
    harness: MakeHarness,
) -> None:
    h = await harness()
    agent, (j1, j2) = await leased(h, 2)
    bad = inline("o.png", PNG, sha256="0" * 64)
    status, error = await refused(agent.finish(j1, outputs=[inline("a.png", b"a"), bad]))
    assert (status, error["field"]) == (400, "outputs.1.sha256")
    reply = await agent.reports(
        [
            p.Report(finish=agent.finish_msg(j1, outputs=[bad])),
            p.Report(finish=agent.finish_msg(j2, outputs=[inline("o.png", PNG)])),
        ]
    )
    first, second = reply.acks
    assert first.error is not None and first.error.status == 400
    assert first.error.field == "reports.0.finish.outputs.0.sha256"
    assert second.ack is not None and second.ack.status == "COMPLETED"  # the other goes on
    assert (await h.job(j1.job_id))["status"] == "RUNNING"
    assert not (attempt_dir(h, j1) / "o.png").exists()
    assert not (attempt_dir(h, j1) / "a.png").exists()  # a refusal writes nothing


async def test_over_the_announced_limit_is_refused(harness: MakeHarness) -> None:
    h = await harness(inline_output_bytes=100)
    agent, (job,) = await leased(h, 1)
    status, error = await refused(agent.finish(job, outputs=[inline("o.png", PNG)]))
    assert (status, error["code"], error["field"]) == (400, "too_large", "outputs.0.data")
    finish = agent.finish_msg(job, outputs=[inline("o.png", PNG)])
    reply = await agent.reports([p.Report(finish=finish)])
    assert reply.acks[0].error is not None
    assert reply.acks[0].error.field == "reports.0.finish.outputs.0.data"
    assert (await h.job(job.job_id))["status"] == "RUNNING"
    assert not attempt_dir(h, job).exists()


async def test_data_that_is_not_its_size_is_refused_naming_the_field(
    harness: MakeHarness,
) -> None:
    h = await harness()
    agent, (job,) = await leased(h, 1)
    wrong = {"name": "o.png", "size": 5, "sha256": "0" * 64, "data": b"abc"}
    body = {
        "agent_id": "a1",
        "reports": [
            {
                "finish": {
                    "agent_id": "a1",
                    "job_id": job.job_id,
                    "attempt": job.attempt,
                    "outcome": "completed",
                    "outputs": [wrong],
                }
            }
        ],
    }
    status, error = await refused(agent.call("reports", body, p.ReportsReply))
    assert (status, error["field"]) == (400, "reports.0.finish.outputs.0.data")


async def test_a_stale_attempt_is_refused_and_keeps_no_file(harness: MakeHarness) -> None:
    h = await harness()
    agent, (job,) = await leased(h, 1)
    stale = p.Assignment(**{**_fields(job), "attempt": job.attempt + 1})
    status, error = await refused(agent.finish(stale, outputs=[inline("o.png", PNG)]))
    assert (status, error["code"]) == (409, "stale_attempt")
    assert not attempt_dir(h, stale).exists()
    unknown = p.Assignment(**{**_fields(job), "job_id": "0" * 24})
    status, error = await refused(agent.finish(unknown, outputs=[inline("o.png", PNG)]))
    assert (status, error["field"]) == (404, "job_id")
    assert not attempt_dir(h, unknown).exists()


async def test_an_attempt_gone_stale_while_its_files_are_written_keeps_none(
    harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await harness()
    agent, (job,) = await leased(h, 1)
    writing, go_on = threading.Event(), threading.Event()
    write_all = inline_outputs._write_all

    def held(*args: Any) -> Any:
        writing.set()
        assert go_on.wait(10)
        return write_all(*args)

    monkeypatch.setattr(inline_outputs, "_write_all", held)
    finish = asyncio.ensure_future(agent.finish(job, outputs=[inline("o.png", PNG)]))
    assert await asyncio.to_thread(writing.wait, 10)
    record = h.coord.jobs[job.job_id]  # the sweeper takes the attempt back meanwhile
    ledger = h.coord.ledger
    ledger.apply([ledger.release_change(record, time.time(), "lost", spend_retry=False)])
    go_on.set()
    status, error = await refused(finish)
    assert (status, error["code"]) == (409, "stale_attempt")
    assert not attempt_dir(h, job).exists()
    assert (await h.job(job.job_id))["status"] in ("QUEUED", "ASSIGNED")  # placed again


@pytest.mark.parametrize("route", ["finish", "reports"])
async def test_a_store_fault_applies_nothing_and_a_retry_succeeds(
    harness: MakeHarness, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    h = await harness()
    agent, (j1, j2) = await leased(h, 2)
    plain = agent.finish_msg(j1)  # no outputs: would complete on its own
    carrying = agent.finish_msg(j2, outputs=[inline("o.png", PNG)])

    def full(*args: Any, **kw: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def send() -> Any:
        if route == "finish":
            return await agent.call("finish", carrying, p.Ack)
        return await agent.call(
            "reports",
            p.Reports(agent_id="a1", reports=[p.Report(finish=plain), p.Report(finish=carrying)]),
            p.ReportsReply,
        )

    monkeypatch.setattr(inline_outputs, "open", full, raising=False)
    status, error = await refused(send())
    assert (status, error["code"]) == (503, "store_unavailable")
    assert [(await h.job(j.job_id))["status"] for j in (j1, j2)] == ["RUNNING", "RUNNING"]
    assert not list(attempt_dir(h, j2).glob("*"))
    monkeypatch.undo()
    await send()
    assert (await h.job(j2.job_id))["status"] == "COMPLETED"
    assert await served(h, j2.job_id, "o.png") == PNG


async def test_a_retried_inline_finish_of_a_stored_file_is_idempotent(
    harness: MakeHarness,
) -> None:
    h = await harness()
    agent, (job,) = await leased(h, 1)
    await agent.upload(job, "o.png", PNG)  # an earlier try uploaded it
    other = inline("o.png", b"other bytes")
    status, error = await refused(agent.finish(job, outputs=[other]))
    assert (status, error["field"]) == (409, "outputs.0")
    await agent.finish(job, outputs=[inline("o.png", PNG)])
    assert await served(h, job.job_id, "o.png") == PNG


def _fields(job: p.Assignment) -> dict[str, Any]:
    return {f: getattr(job, f) for f in job.__struct_fields__}
