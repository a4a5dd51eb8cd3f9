"""The hub: where each prompt's frames go, per ComfyUI's rules and the fleet's additions."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator.comfy.hub import SEND_QUEUE, WRITE_BUFFER, Hub, Socket, ws_frame
from comfyfleet.coordinator.comfy.prompts import COMFY
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.protocol import JobEvent
from comfyfleet.shared.status import JobStatus

GRAPH = {"1": {"class_type": "SaveImage", "inputs": {}}}


def job(job_id: str, status: JobStatus, client: str | None, tenant: str = "t") -> JobRecord:
    meta = {"prompt_id": f"p-{job_id}", "client_id": client, "number": 1, "extra_data": {},
            "outputs": ["1"]}  # fmt: skip
    stamps = {"RUNNING": 1.0, status.value: 2.0}
    return JobRecord(id=job_id, spec=JobSpec(workflow=GRAPH, metadata={COMFY: meta}),
                     workflow_hash="h", created_at=1.0, status=status, tenant=tenant,
                     timestamps=stamps)  # fmt: skip


def sock(sid: str, tenant: str = "t") -> Socket:
    return Socket(tenant, sid, ws=None)  # type: ignore[arg-type]


def drain(s: Socket) -> list[Any]:
    out = []
    while not s.queue.empty():
        item = s.queue.get_nowait()
        out.append(json.loads(item) if isinstance(item, str) else item)
    return out


def frame(kind: str, **data: Any) -> JobEvent:
    return JobEvent(
        kind="comfy", t=0.0, data={"type": kind, "data": {"prompt_id": "agent", **data}}
    )


def run(hub: Hub, job_id: str, client: str | None, end: JobStatus = JobStatus.COMPLETED) -> None:
    hub.job_changed(None, job(job_id, JobStatus.QUEUED, client))
    hub.job_changed(None, job(job_id, JobStatus.RUNNING, client))
    running = job(job_id, JobStatus.RUNNING, client)
    hub.comfy_events(running, 1, [frame("execution_start"), frame("executing", node="1")])
    hub.comfy_events(running, 1, [frame("progress_state", nodes={}), frame("execution_success")])
    hub.job_changed(running, job(job_id, end, client))


def types(frames: list[Any]) -> list[str]:
    return [f["type"] if isinstance(f, dict) else "binary" for f in frames]


async def test_frames_go_only_to_the_prompts_client() -> None:
    hub = Hub()
    mine, other, elsewhere = sock("me"), sock("you"), sock("me", tenant="u")
    for s in (mine, other, elsewhere):
        hub.connect(s)
        drain(s)
    run(hub, "j1", "me")
    got = drain(mine)
    assert types(got) == ["status", "status", "execution_start", "executing", "progress_state",
                          "execution_success", "status", "executing"]  # fmt: skip
    assert all(f["data"].get("prompt_id", "p-j1") == "p-j1" for f in got)
    assert types(drain(other)) == ["status", "status", "status"]  # status goes to every socket
    assert drain(elsewhere) == []  # another tenant sees nothing


async def test_prompt_without_client_shows_only_status_and_progress_state() -> None:
    hub = Hub()
    other = sock("you")
    hub.connect(other)
    drain(other)
    run(hub, "j2", None)
    assert set(types(drain(other))) == {"status", "progress_state"}


async def test_an_end_nobody_received_is_sent_on_reconnect() -> None:
    hub = Hub()
    run(hub, "j3", "gone")  # its client never connected
    back = sock("gone")
    hub.connect(back)
    got = drain(back)
    assert types(got) == ["status", "execution_success", "status", "executing"]
    assert got[0]["data"]["sid"] == "gone"
    assert got[-1]["data"] == {"node": None, "prompt_id": "p-j3"}
    again = sock("gone")
    hub.connect(again)
    assert types(drain(again)) == ["status"]  # delivered once


async def test_reconnect_mid_run_names_the_running_node() -> None:
    hub = Hub()
    hub.job_changed(None, job("j4", JobStatus.QUEUED, "c"))
    running = job("j4", JobStatus.RUNNING, "c")
    hub.job_changed(None, running)
    hub.comfy_events(running, 1, [frame("execution_start"), frame("executing", node="7")])
    later = sock("c")
    hub.connect(later)
    assert drain(later)[1] == {"type": "executing", "data": {"node": "7"}}


async def test_a_second_socket_replaces_the_first_and_a_lagging_one_is_closed() -> None:
    hub = Hub()
    first, second = sock("c"), sock("c")
    hub.connect(first)
    hub.connect(second)
    drain(first)
    drain(second)
    run(hub, "j5", "c")
    assert drain(first) == [] and "execution_success" in types(drain(second))
    for _ in range(SEND_QUEUE + 1):
        second.put("x")
    assert second.closed


async def test_kept_ends_are_bounded_in_count_and_age() -> None:
    now = [0.0]
    hub = Hub(clock=lambda: now[0])
    for n in range(3):
        run(hub, f"old{n}", f"c{n}")
    assert len(hub.missed) == 3
    now[0] = 4000.0  # past the TTL: the next end sweeps the old ones out
    run(hub, "new", "fresh")
    assert list(hub.missed) == [("t", "fresh")]


# --- writing frames: at once while the connection keeps up, else queued, always in order ----


class FakeTransport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.buffered = 0

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return False


def parse_frame(data: bytes) -> tuple[int, bytes]:
    """(opcode, payload) of one unmasked frame, as a client reads it (RFC 6455 §5.2)."""
    assert data[0] & 0x80 and not data[1] & 0x80  # FIN, no mask
    size, at = data[1] & 0x7F, 2
    if size == 126:
        size, at = struct.unpack("!H", data[2:4])[0], 4
    elif size == 127:
        size, at = struct.unpack("!Q", data[2:10])[0], 10
    assert len(data) == at + size
    return data[0] & 0x0F, data[at:]


@given(st.one_of(st.text(max_size=70_000), st.binary(max_size=70_000)))
def test_ws_frame_is_one_whole_message(item: str | bytes) -> None:
    opcode, payload = parse_frame(ws_frame(item))
    if isinstance(item, str):
        assert (opcode, payload) == (1, item.encode())
    else:
        assert (opcode, payload) == (2, item)


def test_a_socket_that_keeps_up_is_written_at_once_and_one_behind_is_queued_in_order() -> None:
    transport = FakeTransport()
    s = Socket("t", "c", ws=None, transport=transport)  # type: ignore[arg-type]
    s.put("a")
    assert [parse_frame(f)[1] for f in transport.written] == [b"a"] and s.queue.empty()
    transport.buffered = WRITE_BUFFER  # the client stopped reading
    s.put("b")
    transport.buffered = 0
    s.put(b"c")  # "b" still waits: "c" must not overtake it
    queued = [s.queue.get_nowait() for _ in range(s.queue.qsize())]
    assert len(transport.written) == 1 and queued == ["b", b"c"] and s.pending == 2


async def test_the_writer_empties_the_queue_in_order_then_frames_go_direct_again() -> None:
    sent: list[str | bytes] = []

    class FakeWs:
        async def send_str(self, text: str) -> None:
            sent.append(text)

        async def send_bytes(self, data: bytes) -> None:
            sent.append(data)

        async def close(self) -> None:
            sent.append("closed")

    transport = FakeTransport()
    transport.buffered = WRITE_BUFFER
    s = Socket("t", "c", ws=FakeWs(), transport=transport)  # type: ignore[arg-type]
    writer = asyncio.create_task(s.writer())
    s.put("1")
    s.put(b"2")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sent == ["1", b"2"] and s.pending == 0
    transport.buffered = 0
    s.put("3")
    assert [parse_frame(f)[1] for f in transport.written] == [b"3"]
    s.close()
    await writer
    assert sent[-1] == "closed"


def test_a_clients_next_prompt_never_overtakes_the_held_end_of_the_one_before() -> None:
    """One ComfyUI ends a client's prompt before it starts the next. On the fleet the next may
    run while the first one's end waits for the coordinator's verdict: its frames wait, in
    order, and follow the end. Another client's frames are not held up."""
    hub = Hub()
    mine, other = sock("me"), sock("you")
    for s in (mine, other):
        hub.connect(s)
    first, second, theirs = (job(j, JobStatus.RUNNING, c) for j, c in
                             (("a", "me"), ("b", "me"), ("c", "you")))  # fmt: skip
    for j in (first, second, theirs):
        hub.job_changed(None, job(j.id, JobStatus.QUEUED, j.spec.metadata[COMFY]["client_id"]))
        hub.job_changed(None, j)
    drain(mine), drain(other)
    hub.comfy_events(first, 1, [frame("execution_start"), frame("executing", node="1")])
    hub.comfy_events(first, 1, [frame("execution_interrupted"), frame("executing", node=None)])
    hub.comfy_events(second, 1, [frame("execution_start"), frame("executing", node="1")])
    hub.comfy_events(theirs, 1, [frame("execution_start")])
    got = drain(mine)
    assert [(f["type"], f["data"].get("prompt_id")) for f in got] == [
        ("execution_start", "p-a"),
        ("executing", "p-a"),
    ]  # the first prompt's end is held, and the second prompt waits behind it
    assert types(drain(other)) == ["execution_start"]  # another client is not held up
    hub.job_changed(first, job("a", JobStatus.CANCELLED, "me"))
    got = [f for f in drain(mine) if f["type"] != "status"]
    assert [(f["type"], f["data"].get("prompt_id")) for f in got] == [
        ("execution_interrupted", "p-a"),
        ("executing", "p-a"),
        ("execution_start", "p-b"),
        ("executing", "p-b"),
    ]
    hub.comfy_events(second, 1, [frame("progress_state", nodes={})])  # flows again at once
    assert types(drain(mine)) == ["progress_state"]
    assert hub.gates == {} and hub.waiting == {}


def test_queue_remaining_lets_go_of_the_prompt_before_on_the_same_instance() -> None:
    """A ComfyUI runs one prompt at a time: when the next starts on an instance, the one that
    ran there before left ComfyUI's queue even if its report is still on its way; a prompt on
    another instance still counts, and a requeued prompt counts again."""
    hub = Hub()
    s = sock("me")
    hub.connect(s)

    def on(job_id: str, status: JobStatus, instance: str) -> JobRecord:
        return dataclasses.replace(job(job_id, status, "me"), agent_id="a", instance_id=instance)

    for j in ("a", "b", "c"):
        hub.job_changed(None, on(j, JobStatus.QUEUED, "i0"))
    hub.job_changed(None, on("a", JobStatus.RUNNING, "i0"))
    hub.job_changed(None, on("c", JobStatus.RUNNING, "i1"))  # another instance: a still runs
    assert hub.remaining("t") == 3
    hub.job_changed(None, on("b", JobStatus.RUNNING, "i0"))  # a was interrupted; b started
    assert hub.remaining("t") == 2
    statuses = [f["data"]["status"]["exec_info"]["queue_remaining"] for f in drain(s)
                if f["type"] == "status"]  # fmt: skip
    assert statuses[-1] == 2
    hub.job_changed(None, on("a", JobStatus.CANCELLED, "i0"))  # its report: not counted twice
    assert hub.remaining("t") == 2
    hub.job_changed(None, on("b", JobStatus.QUEUED, "i0"))  # b requeued (its agent was lost)
    hub.job_changed(None, on("c", JobStatus.RUNNING, "i0"))  # c retried where b ran
    assert hub.remaining("t") == 2  # b waits in the queue again; c runs
    for j in ("b", "c"):
        hub.job_changed(None, on(j, JobStatus.COMPLETED, "i0"))
    assert hub.remaining("t") == 0
