"""The agent's reports travel together (agent/coalesce.py, agent/coordinator_client.py): at most
one reports request in flight, reports made meanwhile go in the next one, each report gets its
own answer and keeps its own retry policy; an older coordinator gets them one by one."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.agent.coalesce import Coalescer
from comfyfleet.agent.coordinator_client import CoordinatorClient, CoordinatorUnavailable, Refused
from comfyfleet.shared import codec
from comfyfleet.shared import protocol as p

pytestmark = pytest.mark.timeout(30)


class Server:
    """A fake coordinator side: records each request's reports, answers as told."""

    def __init__(self) -> None:
        self.requests: list[list[int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next: Exception | None = None

    async def post(self, bodies: list[msgspec.Raw]) -> list[int | Exception]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            numbers = [msgspec.msgpack.decode(bytes(b)) for b in bodies]
            self.requests.append(numbers)
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            return [ValueError(n) if n < 0 else n * 10 for n in numbers]
        finally:
            self.in_flight -= 1


def raw(n: int) -> msgspec.Raw:
    return msgspec.Raw(msgspec.msgpack.encode(n))


def copy(exc: Exception) -> Exception:
    return type(exc)(*exc.args)


async def test_an_idle_report_goes_at_once_and_later_ones_wait_and_go_together() -> None:
    server = Server()
    c: Coalescer[int] = Coalescer(server.post, copy)
    assert await c.send(raw(1)) == 10  # alone: no wait for company
    server.gate.clear()
    first = asyncio.ensure_future(c.send(raw(2)))
    await asyncio.sleep(0.01)  # its request is in flight
    rest = [asyncio.ensure_future(c.send(raw(n))) for n in (3, 4, 5)]
    await asyncio.sleep(0.01)
    server.gate.set()
    assert await first == 20 and [await r for r in rest] == [30, 40, 50]
    assert server.requests == [[1], [2], [3, 4, 5]]
    assert server.most_in_flight == 1


async def test_each_report_gets_its_own_error_and_a_whole_failure_reaches_each() -> None:
    server = Server()
    c: Coalescer[int] = Coalescer(server.post, copy)
    ok, bad = c.send(raw(1)), c.send(raw(-1))
    results = await asyncio.gather(ok, bad, return_exceptions=True)
    assert results[0] == 10 and isinstance(results[1], ValueError)
    server.fail_next = OSError("down")
    out = await asyncio.gather(c.send(raw(1)), c.send(raw(2)), return_exceptions=True)
    assert all(isinstance(e, OSError) for e in out) and out[0] is not out[1]
    assert await c.send(raw(3)) == 30  # and the next request goes


async def test_a_caller_that_gave_up_is_left_out() -> None:
    server = Server()
    c: Coalescer[int] = Coalescer(server.post, copy)
    server.gate.clear()
    first = asyncio.ensure_future(c.send(raw(1)))
    await asyncio.sleep(0.01)
    gone = asyncio.ensure_future(c.send(raw(2)))
    kept = asyncio.ensure_future(c.send(raw(3)))
    await asyncio.sleep(0.01)
    gone.cancel()
    server.gate.set()
    assert await first == 10 and await kept == 30
    assert server.requests == [[1], [3]]


async def test_a_request_holds_at_most_the_limits() -> None:
    server = Server()
    c: Coalescer[int] = Coalescer(server.post, copy, max_reports=3, max_bytes=1 << 20)
    server.gate.clear()
    sends = [asyncio.ensure_future(c.send(raw(n))) for n in range(8)]
    await asyncio.sleep(0.01)
    server.gate.set()
    assert [await s for s in sends] == [n * 10 for n in range(8)]
    assert [len(r) for r in server.requests] == [3, 3, 2]
    small: Coalescer[int] = Coalescer(server.post, copy, max_bytes=1)
    server.requests.clear()
    assert await asyncio.gather(small.send(raw(1)), small.send(raw(2))) == [10, 20]
    assert server.requests == [[1], [2]]  # one byte each: two would pass the limit


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 50), st.floats(0, 0.003)), min_size=1, max_size=30))
def test_every_report_gets_exactly_its_answer_one_request_at_a_time(
    plan: list[tuple[int, float]],
) -> None:
    async def run() -> None:
        server = Server()
        c: Coalescer[int] = Coalescer(server.post, copy, max_reports=4)

        async def one(n: int, delay: float) -> int | str:
            await asyncio.sleep(delay)
            try:
                return await c.send(raw(n))
            except ValueError as exc:
                return f"refused {exc.args[0]}"

        got = await asyncio.gather(*(one(n, d) for n, d in plan))
        assert got == [n * 10 if n >= 0 else f"refused {n}" for n, _ in plan]
        assert server.most_in_flight == 1
        assert sorted(x for r in server.requests for x in r) == sorted(n for n, _ in plan)

    asyncio.run(run())


# ---- the client over HTTP -------------------------------------------------------------------


def job(n: int) -> p.Assignment:
    return p.Assignment(job_id=f"j{n}", attempt=1, instance_id="0", workflow={}, timeout_s=60)


def coordinator(batches: bool, seen: list[str], answers: dict[str, Any]) -> web.Application:
    """A coordinator that records the routes called; `answers[job_id]` is a ReportError to
    give that job's report, or an HTTP status for every reports request ('reports')."""

    async def reports(request: web.Request) -> web.Response:
        msg = codec.decode(await request.read(), p.Reports)
        seen.append(f"reports:{len(msg.reports)}")
        status = answers.get("reports")
        if isinstance(status, list) and status:
            code = status.pop(0)
            return web.json_response({"error": {"code": "x", "message": "m"}}, status=code)
        acks = []
        for r in msg.reports:
            body = r.started or r.events or r.finish
            assert body is not None
            error = answers.get(body.job_id)
            acks.append(
                p.ReportAck(error=error) if error else p.ReportAck(ack=p.Ack(status="RUNNING"))
            )
        return web.Response(
            body=codec.encode(p.ReportsReply(acks=acks)), content_type=codec.MSGPACK
        )

    async def single(request: web.Request) -> web.Response:
        seen.append(request.path.rsplit("/", 1)[1])
        return web.Response(body=codec.encode(p.Ack(status="RUNNING")), content_type=codec.MSGPACK)

    app = web.Application()
    if batches:
        app.router.add_post("/agent/v1/reports", reports)
    for name in ("started", "events", "finish"):
        app.router.add_post(f"/agent/v1/{name}", single)
    return app


async def client_of(aiohttp_client: Any, app: web.Application) -> CoordinatorClient:
    server = await aiohttp_client(app)
    return CoordinatorClient(server.session, str(server.make_url("/")).rstrip("/"), "a1", 5.0)


async def test_concurrent_reports_of_several_jobs_share_requests(aiohttp_client: Any) -> None:
    seen: list[str] = []
    coord = await client_of(aiohttp_client, coordinator(True, seen, {}))
    acks = await asyncio.gather(*(coord.started(job(n), "pr", {}) for n in range(6)))
    assert [a.status for a in acks] == ["RUNNING"] * 6
    assert seen == ["reports:6"]  # one turn of the loop: one request


async def test_a_refused_report_is_its_callers_refusal_only(aiohttp_client: Any) -> None:
    stale = p.ReportError(status=409, code="stale_attempt", message="stale", field="attempt")
    seen: list[str] = []
    coord = await client_of(aiohttp_client, coordinator(True, seen, {"j1": stale}))
    finish = p.Finish(agent_id="a1", job_id="j1", attempt=1, outcome="completed")
    out = await asyncio.gather(
        coord.finish(finish), coord.started(job(2), "pr", {}), return_exceptions=True
    )
    assert isinstance(out[0], Refused) and out[0].stale and out[0].error["field"] == "attempt"
    assert isinstance(out[1], p.Ack)


async def test_a_failed_batch_is_retried_per_report(aiohttp_client: Any) -> None:
    seen: list[str] = []
    coord = await client_of(aiohttp_client, coordinator(True, seen, {"reports": [503, 503]}))
    ack = await coord.started(job(1), "pr", {})  # STARTED retries through 503s
    assert ack.status == "RUNNING" and seen == ["reports:1"] * 3
    seen.clear()
    ref = p.JobRef(job_id="j2", attempt=1)
    events = [p.JobEvent(kind="progress", t=1.0)]
    coord2 = await client_of(aiohttp_client, coordinator(True, seen, {"reports": [503] * 5}))
    with pytest.raises(CoordinatorUnavailable):
        await coord2.events(ref, events)  # EVENTS: two tries, then it gives up
    assert seen == ["reports:1"] * 2


async def test_an_older_coordinator_gets_reports_one_by_one(aiohttp_client: Any) -> None:
    seen: list[str] = []
    coord = await client_of(aiohttp_client, coordinator(False, seen, {}))
    finish = p.Finish(agent_id="a1", job_id="j1", attempt=1, outcome="completed")
    acks = await asyncio.gather(coord.started(job(1), "pr", {}), coord.finish(finish))
    assert [a.status for a in acks] == ["RUNNING", "RUNNING"]
    assert sorted(seen) == ["finish", "started"] and not coord.batches
    await coord.events(p.JobRef(job_id="j1", attempt=1), [])
    assert seen[-1] == "events"


async def test_a_whole_batch_refusal_that_is_not_a_missing_route_is_each_callers(
    aiohttp_client: Any,
) -> None:
    seen: list[str] = []
    coord = await client_of(aiohttp_client, coordinator(True, seen, {"reports": [400]}))
    with pytest.raises(Refused) as info:
        await coord.started(job(1), "pr", {})
    assert info.value.status == 400 and coord.batches and seen == ["reports:1"]


def test_the_raw_batch_is_a_protocol_reports_message() -> None:
    from comfyfleet.agent.coordinator_client import _Reports

    started = p.Report(started=p.Started(agent_id="a1", job_id="j", attempt=1, prompt_id="x"))
    data = codec.encode(_Reports(agent_id="a1", reports=[msgspec.Raw(codec.encode(started))]))
    assert codec.decode(data, p.Reports) == p.Reports(agent_id="a1", reports=[started])
