"""Outputs inside a finish report: the protocol's check of `data`, and which outputs an agent
sends inline (the rest are uploaded)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.agent.coordinator_client import Refused
from comfyfleet.agent.deliver import inline_names, send_finish, with_data
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


class FakeCoordinator:
    """What send_finish calls: uploads and finish reports, recorded; a finish carrying data is
    refused as too large when `refuse_inline`."""

    def __init__(self, refuse_inline: bool = False, refuse_field: str = "outputs.0.data") -> None:
        self.refuse_inline, self.refuse_field = refuse_inline, refuse_field
        self.uploads: list[str] = []
        self.finishes: list[p.Finish] = []

    async def upload(self, ref: p.JobRef, name: str, *_: object) -> None:
        self.uploads.append(name)

    async def finish(self, msg: p.Finish) -> p.Ack:
        self.finishes.append(msg)
        if self.refuse_inline and any(isinstance(o.data, bytes) for o in msg.outputs):
            raise Refused(400, {"code": "too_large", "field": self.refuse_field})
        return p.Ack(status="COMPLETED")


def spooled(tmp_path: Path) -> p.Finish:
    outputs = []
    for name, data in (("a.png", b"abc"), ("big.png", b"x" * 20)):
        (tmp_path / name).write_bytes(data)
        outputs.append(p.OutputFile(name=name, size=len(data), sha256=SHA))
    return p.Finish(agent_id="a", job_id="j", attempt=1, outcome="completed", outputs=outputs)


async def test_small_outputs_go_inline_and_large_ones_are_uploaded(tmp_path: Path) -> None:
    coord = FakeCoordinator()
    ack = await send_finish(coord, tmp_path, spooled(tmp_path), 1 << 20, 10, 1 << 20)  # type: ignore[arg-type]
    assert ack.status == "COMPLETED" and coord.uploads == ["big.png"]
    assert [o.data for o in coord.finishes[0].outputs] == [b"abc", msgspec.UNSET]
    coord = FakeCoordinator()
    await send_finish(coord, tmp_path, spooled(tmp_path), 1 << 20, 0, 1 << 20)  # type: ignore[arg-type]
    assert coord.uploads == ["a.png", "big.png"]  # an older coordinator: announced nothing


async def test_a_refused_inline_file_is_uploaded_instead(tmp_path: Path) -> None:
    coord = FakeCoordinator(refuse_inline=True)
    ack = await send_finish(coord, tmp_path, spooled(tmp_path), 1 << 20, 10, 1 << 20)  # type: ignore[arg-type]
    assert ack.status == "COMPLETED" and len(coord.finishes) == 2
    assert sorted(coord.uploads) == ["a.png", "big.png", "big.png"]
    assert all(o.data is msgspec.UNSET for o in coord.finishes[1].outputs)
    other = FakeCoordinator(refuse_inline=True, refuse_field="outputs")  # not about inline data
    with pytest.raises(Refused):
        await send_finish(other, tmp_path, spooled(tmp_path), 1 << 20, 10, 1 << 20)  # type: ignore[arg-type]
    assert len(other.finishes) == 1
