"""The SSE writer: events waiting when it wakes go out in one write, in order; a job's stream
ends after its terminal event, leaving what came after it unsent."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.coordinator.api.stream_routes import _pump, sse_frame
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
