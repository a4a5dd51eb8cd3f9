"""Outputs inside a finish report: the protocol's check of `data`, and which outputs an agent
sends inline (the rest are uploaded)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.agent.collect import inline_names, with_data
from comfyfleet.shared import codec
from comfyfleet.shared import protocol as p
from comfyfleet.shared.errors import InvalidInput

SHA = "0" * 64


def out(name: str, size: int, **kw: object) -> p.OutputFile:
    return p.OutputFile(name=name, size=size, sha256=SHA, **kw)  # type: ignore[arg-type]


def test_data_must_hold_exactly_size_bytes() -> None:
    assert out("a", 3, data=b"abc").data == b"abc"
    with pytest.raises(ValueError, match="data"):
        out("a", 4, data=b"abc")
    body = {"name": "a", "size": 2, "sha256": SHA, "data": b"abc"}
    finish = {"agent_id": "a1", "job_id": "j", "attempt": 1, "outcome": "completed"}
    msg = {"agent_id": "a1", "reports": [{"finish": {**finish, "outputs": [out("b", 0), body]}}]}
    with pytest.raises(InvalidInput) as caught:
        codec.decode(msgspec.msgpack.encode(msg), p.Reports)
    assert caught.value.field == "reports.0.finish.outputs.1.data"


def test_unset_data_is_not_on_the_wire() -> None:
    """Older coordinators refuse unknown fields: an output without data never names it."""
    assert b"data" not in codec.encode(out("a", 3))
    assert "data" not in msgspec.to_builtins(out("a", 3))
    assert codec.decode(codec.encode(out("a", 3, data=b"xyz")), p.OutputFile).data == b"xyz"
    # an older coordinator's answer: no limit announced, nothing goes inline
    reply = {"heartbeat_interval_s": 1.0, "lease_ttl_s": 3.0, "lease_wait_s": 1.0, "chunk_size": 8}
    assert codec.decode(codec.encode(reply), p.RegisterReply).inline_output_bytes == 0


@given(
    sizes=st.lists(st.integers(0, 2000), max_size=12),
    limit=st.integers(0, 1000),
    budget=st.integers(0, 4000),
)
def test_inline_choice_keeps_to_the_limit_and_the_budget(
    sizes: list[int], limit: int, budget: int
) -> None:
    outputs = [out(f"o{i}", size) for i, size in enumerate(sizes)]
    chosen = inline_names(outputs, limit, budget)
    picked = [o for o in outputs if o.name in chosen]
    assert all(o.size <= limit for o in picked)
    assert sum(o.size for o in picked) <= budget
    left = [o.size for o in outputs if o.name not in chosen]
    if left:  # nothing left out would have fit, smallest first
        assert min(left) > limit or min(left) + sum(o.size for o in picked) > budget
    assert inline_names(outputs, 0, budget) <= {o.name for o in outputs if o.size == 0}


def test_with_data_reads_the_spool_and_refuses_a_changed_file(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"abc")
    (tmp_path / "b.png").write_bytes(b"big")
    sha = hashlib.sha256(b"abc").hexdigest()
    files = [p.OutputFile(name="a.png", size=3, sha256=sha), out("b.png", 3)]
    got = with_data(tmp_path, files, {"a.png"})
    assert [f.data for f in got] == [b"abc", msgspec.UNSET]
    (tmp_path / "a.png").write_bytes(b"abcd")
    with pytest.raises(OSError, match="a.png"):
        with_data(tmp_path, files, {"a.png"})
