"""The client's SSE parser reads exactly what the coordinator's stream writes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.client.sse import SSEParser
from comfyfleet.coordinator.api.stream_routes import sse_frame
from comfyfleet.coordinator.events import Event

pytestmark = pytest.mark.timeout(30)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


def parse(stream: bytes, parser: SSEParser | None = None) -> list[Any]:
    parser = parser or SSEParser()
    out = []
    for line in stream.decode().split("\n"):
        event = parser.feed(line)
        if event is not None:
            out.append(event)
    return out


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["job", "progress", "agent"]),
            st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        ),
        max_size=10,
    )
)
def test_frames_round_trip(items: list[tuple[str, dict[str, Any]]]) -> None:
    frames = b"retry: 1000\n\n: keep-alive\n\n" + b"".join(
        sse_frame(Event(i + 1, kind, data)) for i, (kind, data) in enumerate(items)
    )
    parser = SSEParser()
    events = parse(frames, parser)
    assert [(e.id, e.kind, e.data) for e in events] == [
        (i + 1, kind, data) for i, (kind, data) in enumerate(items)
    ]
    assert parser.retry_ms == 1000
    assert parser.last_id == (len(items) or None)


def test_multiline_data_and_default_kind() -> None:
    events = parse(b'data: {"a":\ndata: 1}\n\ndata: plain\n\n')
    assert [(e.kind, e.data) for e in events] == [
        ("message", {"a": 1}),
        ("message", {"text": "plain"}),
    ]
