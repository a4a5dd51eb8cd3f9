"""POST agent/v1/reports: an agent's started/events/finish reports in one request, one store
transaction. Each report gets the answer it would get alone; a store fault, mid-batch or at the
COMMIT, fails the whole request with 503 and leaves the store and memory as they were."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from comfyfleet.coordinator.api.agent_routes import report_error
from comfyfleet.coordinator.errors import StoreUnavailable
from comfyfleet.shared import protocol as p
from tests.api.conftest import Harness, MakeHarness
from tests.helpers.protocol_agent import ProtocolAgent, ProtocolError

pytestmark = pytest.mark.timeout(60)


def started(agent: ProtocolAgent, job: p.Assignment | p.JobRef, attempt: int = 0) -> p.Report:
    return p.Report(
        started=p.Started(
            agent_id=agent.agent_id,
            job_id=job.job_id,
            attempt=attempt or job.attempt,
            prompt_id="pr",
        )
    )


async def leased(h: Harness, n: int) -> tuple[ProtocolAgent, list[p.Assignment]]:
    """An agent holding `n` freshly leased jobs (one GPU per job)."""
    agent = h.agent("a1", gpus=[("Sim GPU", 24576)] * n)
    await agent.register()
    for _ in range(n):
        await h.submit()
    jobs: list[p.Assignment] = []
    while len(jobs) < n:
        jobs.extend((await agent.lease(2.0)).jobs)
    return agent, jobs


async def test_mixed_reports_each_get_their_own_answer(harness: MakeHarness) -> None:
    h = await harness()
    agent, (j1, j2, j3) = await leased(h, 3)
    fake = p.OutputFile(name="never.png", size=3, sha256="0" * 64)
    reply = await agent.reports(
        [
            started(agent, j1),
            p.Report(finish=agent.finish_msg(j1)),  # completes (no outputs)
            started(agent, j2, attempt=j2.attempt + 1),  # an attempt it never had
            p.Report(finish=agent.finish_msg(j3, outputs=[fake])),  # outputs not received
            p.Report(
                events=p.Events(
                    agent_id="a1",
                    job_id="0" * 24,
                    attempt=1,
                    events=[p.JobEvent(kind="progress", t=1.0, fraction=0.5)],
                )
            ),
            started(agent, j3),
            p.Report(finish=agent.finish_msg(j1)),  # again: the job is done, the attempt stale
        ]
    )
    acks = reply.acks
    assert [a.ack.status if a.ack else None for a in acks] == [
        "RUNNING",
        "COMPLETED",
        None,
        None,
        None,
        "RUNNING",
        None,
    ]
    errors = [(a.error.status, a.error.code, a.error.field) if a.error else None for a in acks]
    assert errors[2] == (409, "stale_attempt", "attempt")
    assert errors[3] == (422, "unprocessable", "outputs")
    assert errors[4] == (404, "not_found", "job_id")
    assert errors[6] == (409, "stale_attempt", "attempt")
    assert (await h.job(j1.job_id))["status"] == "COMPLETED"
    assert (await h.job(j2.job_id))["status"] == "ASSIGNED"
    assert (await h.job(j3.job_id))["status"] == "RUNNING"
    assert h.coord.store.get_job(j1.job_id).status.value == "COMPLETED"  # type: ignore[union-attr]


async def test_a_report_naming_another_agent_refuses_the_batch(harness: MakeHarness) -> None:
    h = await harness()
    agent, (job,) = await leased(h, 1)
    other = h.agent("a2")
    with pytest.raises(ProtocolError) as info:
        await agent.reports([started(agent, job), started(other, job)])
    assert info.value.status == 400
    assert info.value.body["error"]["field"] == "reports.1.started.agent_id"
    assert (await h.job(job.job_id))["status"] == "ASSIGNED"  # nothing of it applied


@pytest.mark.parametrize(
    "body",
    [
        {"agent_id": "a1", "reports": []},
        {"agent_id": "a1", "reports": [{}]},
        {"agent_id": "a1", "reports": [{"started": None, "events": None}]},
    ],
)
async def test_malformed_batches_are_refused(harness: MakeHarness, body: Any) -> None:
    h = await harness()
    resp = await h.client.post("/agent/v1/reports", json=body)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["field"].startswith("reports")


def memory(h: Harness) -> Any:
    """What memory holds of the jobs (not `held`: that the agent showed it holds an attempt is
    true whether or not its report was written)."""
    live = h.coord.live
    return (
        dict(live.jobs),
        dict(live.queued),
        dict(live.delivered),
        dict(live.awaiting_since),
        set(live.unexplained),
        {a: set(s.jobs) for a, s in live.agents.items()},
        h.coord.bus.last_id,
    )


@contextlib.contextmanager
def faulty(h: Harness, at: str) -> Iterator[None]:
    """The coordinator's store refuses: its second job write of a batch (`mid`), or the batch's
    COMMIT (`commit`; every write inside went through)."""
    store = h.coord.store
    inner_batch, inner_update = store.batch, store.update_jobs
    calls = [0]

    def update_jobs(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        if at == "mid" and calls[0] == 2:
            raise StoreUnavailable("disk full (injected)")
        return inner_update(*args, **kw)

    @contextlib.contextmanager
    def batch() -> Iterator[None]:
        with inner_batch():
            yield
            if at == "commit":
                raise StoreUnavailable("disk full at COMMIT (injected)")

    store.update_jobs, store.batch = update_jobs, batch  # type: ignore[method-assign]
    try:
        yield
    finally:
        del store.update_jobs, store.batch  # type: ignore[attr-defined]


@pytest.mark.parametrize("at", ["mid", "commit"])
async def test_a_store_fault_fails_the_whole_batch_and_a_retry_succeeds(
    harness: MakeHarness, at: str
) -> None:
    h = await harness()
    agent, (j1, j2) = await leased(h, 2)
    await agent.started(j2)
    batch = [
        started(agent, j1),
        p.Report(finish=agent.finish_msg(j1)),
        p.Report(finish=agent.finish_msg(j2, outcome="requeue", spend_retry=False)),
    ]
    stored = [h.coord.store.get_job(j.job_id) for j in (j1, j2)]
    before = memory(h)
    with faulty(h, at):
        with pytest.raises(ProtocolError) as info:
            await agent.reports(batch)
    assert info.value.status == 503
    assert info.value.body["error"]["code"] == "store_unavailable"
    assert [h.coord.store.get_job(j.job_id) for j in (j1, j2)] == stored
    assert memory(h) == before  # memory as the store: nothing of the batch, no event published
    reply = await agent.reports(batch)  # the agent sends it again
    assert [a.ack.status if a.ack else a.error for a in reply.acks] == [
        "RUNNING",
        "COMPLETED",
        "QUEUED",
    ]
    assert (await h.job(j1.job_id))["status"] == "COMPLETED"
    assert h.coord.counters["requeues"] == 1  # the failed batch's after-effects never ran


async def test_a_batch_is_one_transaction_and_counted(harness: MakeHarness) -> None:
    h = await harness()
    agent, jobs = await leased(h, 3)
    store = h.coord.store
    batches = [0]
    inner = store.batch

    def counting() -> Any:
        batches[0] += 1
        return inner()

    store.batch = counting  # type: ignore[method-assign]
    reply = await agent.reports(
        [started(agent, j) for j in jobs] + [p.Report(finish=agent.finish_msg(j)) for j in jobs]
    )
    assert [a.ack.status for a in reply.acks if a.ack] == ["RUNNING"] * 3 + ["COMPLETED"] * 3
    assert batches[0] == 1
    text = await (await h.client.get("/metrics")).text()
    assert "comfyfleet_agent_report_batch_size_sum 6.0" in text


async def two_agents_reporting(h: Harness) -> tuple[list[p.Reports], list[str]]:
    """Two agents, each holding a leased job, and each agent's started+finish request."""
    msgs, ids = [], []
    for name in ("a1", "a2"):
        agent = h.agent(name, gpus=[("Sim GPU", 24576)])
        await agent.register()
        await h.submit()
        jobs: list[p.Assignment] = []
        while not jobs:
            jobs = (await agent.lease(2.0)).jobs
        job = jobs[0]
        reports = [started(agent, job), p.Report(finish=agent.finish_msg(job))]
        msgs.append(p.Reports(agent_id=name, reports=reports))
        ids.append(job.job_id)
    return msgs, ids


async def test_requests_of_one_loop_turn_are_one_transaction(harness: MakeHarness) -> None:
    """The single writer: several agents' requests that arrive together share one commit."""
    h = await harness()
    msgs, ids = await two_agents_reporting(h)
    store, batches = h.coord.store, [0]
    inner = store.batch

    def counting() -> Any:
        batches[0] += 1
        return inner()

    store.batch = counting  # type: ignore[method-assign]
    replies = await asyncio.gather(*(h.coord.report_batch(m, report_error) for m in msgs))
    assert [[a.ack.status for a in r.acks if a.ack] for r in replies] == [
        ["RUNNING", "COMPLETED"]
    ] * 2
    assert batches[0] == 1
    assert [h.coord.store.get_job(j).status.value for j in ids] == ["COMPLETED"] * 2  # type: ignore[union-attr]
    text = await (await h.client.get("/metrics")).text()
    assert "comfyfleet_agent_report_group_size_sum 2.0" in text


async def test_a_store_fault_fails_every_request_of_the_group(harness: MakeHarness) -> None:
    h = await harness()
    msgs, ids = await two_agents_reporting(h)
    stored = [h.coord.store.get_job(j) for j in ids]
    before = memory(h)
    with faulty(h, "commit"):
        results = await asyncio.gather(
            *(h.coord.report_batch(m, report_error) for m in msgs), return_exceptions=True
        )
    assert [type(r) for r in results] == [StoreUnavailable] * 2
    assert [h.coord.store.get_job(j) for j in ids] == stored
    assert memory(h) == before
    replies = await asyncio.gather(*(h.coord.report_batch(m, report_error) for m in msgs))
    assert all(a.ack is not None and a.ack.status for r in replies for a in r.acks)
    assert [h.coord.store.get_job(j).status.value for j in ids] == ["COMPLETED"] * 2  # type: ignore[union-attr]
