"""Messages round-trip through msgpack and JSON, and bad input names its field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.shared import codec
from comfyfleet.shared import protocol as p
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import JobSpec

REGISTER = p.Register(
    agent_id="a1",
    version="0.1",
    host=p.HostInfo(hostname="h", cpu_count=8, ram_total_mb=32000, ram_available_mb=30000),
    gpus=[p.GpuInfo(index=0, name="RTX", vram_total_mb=24576, vram_free_mb=24000)],
    instances=[p.InstanceInfo(instance_id="0", url="http://127.0.0.1:8188", gpu_index=0)],
    running=[p.RunningJob(job_id="j1", attempt=2, instance_id="0", prompt_id="p")],
)


@pytest.mark.parametrize("ctype", [codec.MSGPACK, codec.JSON])
def test_round_trip(ctype: str) -> None:
    assert codec.decode(codec.encode(REGISTER, ctype), p.Register, ctype) == REGISTER


def test_register_instance_id_is_optional_and_checked() -> None:
    older = codec.decode(b'{"agent_id": "a1"}', p.Register, codec.JSON)
    assert older.instance_id == ""  # an agent from before the field
    again = codec.decode(b'{"agent_id": "a1", "instance_id": "0f3a9c"}', p.Register, codec.JSON)
    assert again.instance_id == "0f3a9c"
    with pytest.raises(InvalidInput) as err:
        codec.decode(b'{"agent_id": "a1", "instance_id": "a b"}', p.Register, codec.JSON)
    assert err.value.field is not None and "instance_id" in err.value.field


def test_preview_bytes_survive_msgpack() -> None:
    ev = p.Events(
        agent_id="a",
        job_id="j",
        attempt=1,
        events=[p.JobEvent(kind="preview", t=1.0, image=b"\x89PNG\x00\xff", mime="image/png")],
    )
    back = codec.decode(codec.encode(ev), p.Events)
    assert back.events[0].image == b"\x89PNG\x00\xff"


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        (b'{"workflow": {}, "resources": {"vram_mb": -1}}', "resources.vram_mb", "invalid"),
        (b'{"workflow": {}, "resources": {"gpus": 2}}', "resources.gpus", "invalid"),
        (b'{"workflow": {}, "bogus": 1}', "bogus", "unknown_field"),
        (b'{"workflow": {}, "resources": {"x": 1}}', "resources.x", "unknown_field"),
        (b'{"resources": {}}', "workflow", "missing"),
        (b'{"workflow": {}, "priority": "high"}', "priority", "invalid"),
        (b'{"workflow": {}, "timeout_s": 0}', "timeout_s", "invalid"),
        (b'{"workflow": {}, "constraints": {"labels": {"a": 1}}}', "constraints.labels", "invalid"),
        (b"{not json", "body", "malformed"),
    ],
)
def test_job_spec_errors_name_the_field(body: bytes, field: str | None, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        codec.decode(body, JobSpec, codec.JSON)
    assert info.value.field == field
    assert info.value.code == code


def test_invalid_utf8_inside_msgpack_is_a_clean_error() -> None:
    with pytest.raises(InvalidInput) as info:
        codec.decode(b"\x81\xa8agent_id\xa2\x80\x80", p.Heartbeat)
    assert info.value.code == "malformed"


def test_stale_attempt_zero_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        codec.decode(codec.encode({"job_id": "j", "attempt": 0}), p.JobRef)
    assert info.value.field == "attempt"


@given(st.binary(max_size=200))
def test_garbage_msgpack_is_a_clean_error(data: bytes) -> None:
    try:
        codec.decode(data, p.Heartbeat)
    except InvalidInput:
        pass
