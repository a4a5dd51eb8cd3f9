"""The SSE writer: events waiting when it wakes go out in one write, in order; a job's stream
ends after its terminal event, leaving what came after it unsent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from comfyfleet.coordinator.api.stream_routes import GATHER_S, _pump, sse_frame
from comfyfleet.coordinator.events import Event, Subscription

pytestmark = pytest.mark.timeout(10)


class Written:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)


def events(n: int, terminal_at: int | None = None) -> list[Event]:
    return [Event(i, "job", {"n": i}, "j", terminal=i == terminal_at) for i in range(n)]


async def test_waiting_events_go_out_in_one_write_in_order() -> None:
    sub = Subscription(None, 100)
    evs = events(5)
    sub.buffer.extend(evs)
    sub.close()
    out = Written()
    await _pump(out, sub, end_on_terminal=False)  # type: ignore[arg-type]
    assert out.writes == [b"".join(sse_frame(e) for e in evs)]


async def test_a_job_stream_ends_after_its_terminal_event() -> None:
    sub = Subscription("j", 100)
    evs = events(6, terminal_at=3)
    sub.buffer.extend(evs)
    out = Written()
    await _pump(out, sub, end_on_terminal=True)  # type: ignore[arg-type]
    assert out.writes == [b"".join(sse_frame(e) for e in evs[:4])]
    assert list(sub.buffer) == evs[4:]


async def test_events_the_view_hides_are_left_out() -> None:
    sub = Subscription(None, 100)
    evs = events(4, terminal_at=1)
    sub.buffer.extend(evs)
    sub.close()
    out = Written()

    def odd(event: Event) -> Any:
        return event if event.id % 2 else None

    await _pump(out, sub, end_on_terminal=False, view=odd)  # type: ignore[arg-type]
    assert out.writes == [sse_frame(evs[1]) + sse_frame(evs[3])]


async def test_an_event_soon_after_joins_the_write_of_the_one_before() -> None:
    sub = Subscription(None, 100)
    out = Written()
    pump = asyncio.ensure_future(_pump(out, sub, end_on_terminal=False))  # type: ignore[arg-type]
    first, second = events(2)
    sub.push(first)
    await asyncio.sleep(0)  # the writer wakes for the first event and waits a moment
    await asyncio.sleep(0)
    sub.push(second)
    await asyncio.sleep(GATHER_S * 4)
    sub.close()
    await asyncio.wait_for(pump, 5)
    assert out.writes == [sse_frame(first) + sse_frame(second)]
