"""What a graceful stop waits for."""

from __future__ import annotations

import asyncio

from comfyfleet.coordinator.api.graceful import InFlight, waits_for


def test_long_polls_and_streams_are_not_waited_for() -> None:
    assert not waits_for("POST", "/agent/v1/lease")
    assert not waits_for("GET", "/v1/jobs/abc/events")
    assert not waits_for("GET", "/v1/events")
    for method, path in (
        ("POST", "/v1/jobs"),
        ("POST", "/agent/v1/finish"),
        ("POST", "/agent/v1/events"),
        ("PUT", "/agent/v1/jobs/j/outputs/a.png"),
        ("GET", "/v1/jobs/j/outputs/a.png"),
    ):
        assert waits_for(method, path), path


async def test_inflight_becomes_idle_when_the_last_request_leaves() -> None:
    inflight = InFlight()
    assert await inflight.wait_idle(0.01)
    inflight.enter()
    inflight.enter()
    assert not await inflight.wait_idle(0.01)
    inflight.leave()
    assert not inflight.idle.is_set()
    waiter = asyncio.ensure_future(inflight.wait_idle(5))
    inflight.leave()
    assert await waiter and inflight.count == 0
