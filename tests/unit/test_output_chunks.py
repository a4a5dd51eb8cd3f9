"""Chunked output files: running checksum, resume after a restart, corruption refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator.outputs import ChunkResult, OutputFiles
from comfyfleet.shared.errors import InvalidInput

pytestmark = pytest.mark.timeout(60)


def send(out: OutputFiles, data: bytes, start: int, chunk: int, sha: str) -> int:
    offset = start
    while offset < len(data):
        res = out.write_chunk(
            "j", 1, "o.png", offset, len(data), sha, data[offset : offset + chunk]
        )
        offset = res.received
        if res.complete:
            break
    return offset


@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=1, max_size=5000), chunk=st.integers(1, 700), cut=st.floats(0, 1))
def test_resumed_upload_after_restart_verifies(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, chunk: int, cut: float
) -> None:
    root = tmp_path_factory.mktemp("out")
    sha = hashlib.sha256(data).hexdigest()
    first = OutputFiles(root, 1 << 20)
    stop = int(len(data) * cut) // chunk * chunk
    if stop:
        offset = 0
        while offset < stop:
            offset = first.write_chunk(
                "j", 1, "o.png", offset, len(data), sha, data[offset : min(offset + chunk, stop)]
            ).received
    restarted = OutputFiles(root, 1 << 20)  # no running checksum: rebuilt from the part file
    assert send(restarted, data, restarted.received("j", 1, "o.png"), chunk, sha) == len(data)
    assert restarted.verify("j", 1, "o.png", len(data), sha)
    assert restarted.final_path("j", 1, "o.png").read_bytes() == data
    assert restarted.partial == {}


def test_wrong_checksum_is_refused_and_the_part_dropped(tmp_path: Path) -> None:
    out = OutputFiles(tmp_path, 1 << 20)
    data = b"x" * 100
    out.write_chunk("j", 1, "o.png", 0, 100, "0" * 64, data[:60])
    with pytest.raises(InvalidInput):
        out.write_chunk("j", 1, "o.png", 60, 100, "0" * 64, data[60:])
    assert out.received("j", 1, "o.png") == 0
    assert out.partial == {}


@settings(max_examples=25, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=4000),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
    broken_at=st.integers(0, 4000),
)
def test_streamed_pieces_and_a_broken_off_body_resume_to_the_same_file(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, cuts: list[int], broken_at: int
) -> None:
    """A chunk written in any pieces, aborted part way (body broke off), resumes and verifies."""
    out = OutputFiles(tmp_path_factory.mktemp("out"), 1 << 20)
    sha = hashlib.sha256(data).hexdigest()
    stop = min(broken_at, len(data) - 1)
    sink = out.open_chunk("j", 1, "o.png", 0, len(data), sha, None)
    assert not isinstance(sink, ChunkResult)
    bounds = sorted({0, stop, *(c for c in cuts if c < stop)})
    sink.write([data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])
    sink.abort()
    assert out.received("j", 1, "o.png") == stop
    assert send(out, data, stop, 997, sha) == len(data)
    assert out.verify("j", 1, "o.png", len(data), sha)
    assert out.final_path("j", 1, "o.png").read_bytes() == data
