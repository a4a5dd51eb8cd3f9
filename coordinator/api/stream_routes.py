"""Live streams (Server-Sent Events): one job's events, and the whole fleet's.

`GET /v1/jobs/{id}/events` starts with the job's current state (or, with `Last-Event-ID`, the
events missed since that id while the ring still holds them), follows it live, and ends after the
terminal state. `GET /v1/events` is the fleet-wide stream the dashboard follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable

import msgspec
from aiohttp import web

from comfyfleet.coordinator.api.auth import tenant_filter
from comfyfleet.coordinator.api.client_routes import _id
from comfyfleet.coordinator.api.keys import COORDINATOR
from comfyfleet.coordinator.api.views import visible_job_ids
from comfyfleet.coordinator.errors import NotFound
from comfyfleet.coordinator.events import AGENT, JOB, PROGRESS, Event, Subscription
from comfyfleet.coordinator.feed import job_event_data, progress_data
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.status import TERMINAL

routes = web.RouteTableDef()
KEEPALIVE_S = 15.0
GATHER_S = 0.005  # a writer that woke for one event waits this long for the ones after it


def last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput("Last-Event-ID", f"must be an event id (integer), not {raw!r}") from None
    if value < 0:
        raise InvalidInput("Last-Event-ID", "must not be negative")
    return value


def sse_frame(event: Event) -> bytes:
    data = msgspec.json.encode(event.data).decode()
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


async def _open(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    await resp.write(b"retry: 1000\n\n")
    return resp


async def _pump(
    resp: web.StreamResponse,
    sub: Subscription,
    end_on_terminal: bool,
    view: Callable[[Event], Event | None] = lambda event: event,
) -> None:
    """Write events until the subscription closes (or the job's terminal event went out), each
    as `view` shows it to this client; events `view` turns into None are not written. The events
    waiting when the writer wakes, and those that come within GATHER_S, go out in one write (one
    send for a busy stream, not one per event)."""
    while True:
        try:
            event = await sub.next(KEEPALIVE_S)
        except TimeoutError:
            await resp.write(b": keep-alive\n\n")
            continue
        if event is None:
            return
        if not sub.buffer and not (end_on_terminal and event.terminal):
            await asyncio.sleep(GATHER_S)  # a busy stream's next events join this write
        frames: list[bytes] = []
        while True:
            shown = view(event)
            if shown is not None:
                frames.append(sse_frame(shown))
            if end_on_terminal and event.terminal and shown is not None:
                break
            if not sub.buffer:
                event = None
                break
            event = sub.buffer.popleft()
        if frames:
            await resp.write(b"".join(frames))
        if event is not None:  # the terminal event went out
            return


@routes.get("/v1/jobs/{job_id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    coord = request.app[COORDINATOR]
    job = coord.get(_id(request, "job_id"))
    after = last_event_id(request)
    bus = coord.bus
    sub = bus.subscribe(job.id, after)  # no await since `get`: the job is as of the subscribe
    terminal = job.status in TERMINAL
    if not sub.resumed:  # start from the job's state now, stamped with the bus's current id
        first = [Event(bus.last_id, JOB, job_event_data(job), job.id, terminal=terminal)]
        live = coord.progress.get(job.id)
        if live is not None and not terminal:
            first.append(Event(bus.last_id, PROGRESS, progress_data(job, live), job.id))
        sub.buffer.extendleft(reversed(first))
    elif terminal and not any(e.terminal for e in sub.buffer):
        # the terminal event went out before `after`: say it again so the stream can end
        sub.buffer.append(Event(bus.last_id, JOB, job_event_data(job), job.id, terminal=True))
    try:
        resp = await _open(request)
        with contextlib.suppress(ConnectionResetError):
            await _pump(resp, sub, end_on_terminal=True)
    finally:
        bus.unsubscribe(sub)
    return resp


@routes.get("/v1/events")
async def fleet_events(request: web.Request) -> web.StreamResponse:
    coord = request.app[COORDINATOR]
    after = last_event_id(request)
    bus = coord.bus
    sub = bus.subscribe(None, after)
    tenant = tenant_filter(request)

    def view(event: Event) -> Event | None:
        """A tenant sees the fleet (agents, GPUs) and its own jobs; of the jobs on an agent,
        only its own ids. An admin sees everything."""
        if tenant is None:
            return event
        if event.job_id is not None:
            job = coord.jobs.get(event.job_id)
            if job is None:  # ended since: the store has it
                try:
                    job = coord.get(event.job_id)
                except NotFound:
                    return None
            return event if job.tenant == tenant else None
        if event.kind == AGENT:
            jobs = visible_job_ids(coord, event.data.get("jobs", ()), tenant)
            return dataclasses.replace(event, data={**event.data, "jobs": jobs})
        return event

    try:
        resp = await _open(request)
        with contextlib.suppress(ConnectionResetError):
            await _pump(resp, sub, end_on_terminal=False, view=view)
    finally:
        bus.unsubscribe(sub)
    return resp
