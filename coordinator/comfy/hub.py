"""The facade's WebSocket clients, and where each prompt's frames go.

ComfyUI's rules (COMFYUI.md), per tenant: `status` goes to every socket, execution frames only to
the socket whose clientId is the prompt's `client_id`; a prompt without one shows only `status`
and `progress_state` frames, to every socket. A second socket with the same clientId replaces the
first. On connect: `status` with `sid`, then `executing` (no prompt_id) for the node a running
prompt of that client is at.

Beyond ComfyUI: the end of a prompt (its last frames) that finds no socket for its client is
kept (bounded, for `MISSED_TTL_S`) and sent when the client connects again, so a client that
reconnects after a drop or a coordinator restart still gets its prompt's end.

The coordinator calls `job_changed` and `comfy_events` synchronously. A frame for a socket
that is keeping up is written to its connection at once, as WebSocket bytes encoded once for
every socket it goes to (`ws_frame`): a `status` to 1,000 sockets is one encoding and 1,000
writes, not 1,000 task switches. A socket that is behind (its connection's send buffer above
`WRITE_BUFFER`, or frames already waiting) gets its frames queued (bounded) and written by its
own task, in order, so a slow client never slows the fleet and is disconnected when it falls
`SEND_QUEUE` frames behind (ComfyUI clients reconnect).

One ComfyUI runs a client's prompts one after another, so a client never sees a prompt start
before the one before it ended. The fleet runs them side by side, and a prompt's end is held
until the coordinator decides it (`PromptStream`), so another prompt's frames could overtake it.
While one prompt of a client holds its end, the frames of that client's other prompts wait
(bounded by `WAITING_MAX`) and follow, in arrival order, once the end went out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from comfyfleet.coordinator.comfy.catalog import FEATURES
from comfyfleet.coordinator.comfy.prompts import meta_of
from comfyfleet.coordinator.comfy.stream import (
    Binary,
    LegacyOrder,
    Out,
    PromptStream,
    Status,
    Text,
)
from comfyfleet.coordinator.comfy.v2.shapes import V2
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.protocol import JobEvent
from comfyfleet.shared.status import TERMINAL, JobStatus

__all__ = ["Hub", "encode_binary", "status_msg"]

log = structlog.get_logger("coordinator.comfy")

SEND_QUEUE = 2048  # frames a socket may fall behind before it is closed
WRITE_BUFFER = 64 << 10  # bytes in a connection's send buffer past which frames are queued
MISSED_PER_CLIENT = 64  # prompt ends kept for a client with no socket
MISSED_CLIENTS = 10_000  # clients with ends kept (the oldest go first)
MISSED_TTL_S = 3600.0
WAITING_MAX = 1024  # batches of frames kept behind a held end; past it, order gives way
_PREVIEW_FORMAT = {"image/jpeg": 1, "image/png": 2}


def status_msg(remaining: int, sid: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}}
    if sid is not None:
        data["sid"] = sid
    return {"type": "status", "data": data}


def encode_binary(frame: Binary, prompt_id: str, metadata: bool) -> bytes:
    """ComfyUI's binary frames: preview type 1 (`[1][format][image]`) or, for a client that
    asked for preview metadata, type 4 (`[4][len][json][image]`); node text type 3."""
    if frame.kind == "text":
        node = (frame.node or "").encode()
        return struct.pack(">II", 3, len(node)) + node + frame.payload
    if metadata:
        meta = json.dumps(
            {
                "node_id": frame.node,
                "prompt_id": prompt_id,
                "display_node_id": frame.node,
                "parent_node_id": None,
                "real_node_id": frame.node,
                "image_type": frame.mime,
            }
        ).encode()
        return struct.pack(">II", 4, len(meta)) + meta + frame.payload
    return struct.pack(">II", 1, _PREVIEW_FORMAT.get(frame.mime, 1)) + frame.payload


def ws_frame(item: str | bytes) -> bytes:
    """One unfragmented server-to-client WebSocket message (RFC 6455 §5.2: FIN, text or binary
    opcode, no mask), ready to write to the connection."""
    payload, opcode = (item.encode(), 0x1) if isinstance(item, str) else (item, 0x2)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


@dataclass(eq=False, slots=True)
class Socket:
    tenant: str
    sid: str
    ws: web.WebSocketResponse
    # the connection under the WebSocket (None: every frame goes through the queue)
    transport: asyncio.BaseTransport | None = None
    metadata: bool = False  # sent feature_flags asking for preview metadata
    queue: asyncio.Queue[str | bytes | None] = field(
        default_factory=lambda: asyncio.Queue(SEND_QUEUE)
    )
    pending: int = 0  # frames queued and not yet written
    closed: bool = False

    def put(self, item: str | bytes, frame: bytes | None = None) -> None:
        """Send `item` (`frame`: its bytes as `ws_frame` encodes them, when the caller has
        them): at once when nothing waits and the connection keeps up, else through the queue,
        so frames always go out in order."""
        if self.closed:
            return
        if self.pending == 0 and self._keeps_up():
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(frame if frame is not None else ws_frame(item))
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("comfy_ws_lagging", sid=self.sid)
            self.close()
            return
        self.pending += 1

    def _keeps_up(self) -> bool:
        transport = self.transport
        return (
            isinstance(transport, asyncio.WriteTransport)
            and not transport.is_closing()
            and transport.get_write_buffer_size() < WRITE_BUFFER
        )

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)

    async def writer(self) -> None:
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    await self.ws.close()
                    return
                if isinstance(item, bytes):
                    await self.ws.send_bytes(item)
                else:
                    await self.ws.send_str(item)
                self.pending -= 1
        except (ConnectionError, RuntimeError):  # the client went away mid-send
            self.closed = True


@dataclass(slots=True)
class Prompt:
    """An open facade job as the hub follows it."""

    tenant: str
    client_id: str | None
    stream: PromptStream
    ran: bool = False  # went RUNNING (once: status is sent on the first start only)
    keep_end: bool = True  # keep the end for a client that has no socket (not for v2 jobs)
    legacy: LegacyOrder = field(default_factory=LegacyOrder)  # for a client without metadata
    ended: bool = False  # the coordinator decided its end
    place: tuple[str | None, str | None] = (None, None)  # (agent, ComfyUI instance) it ran on
    counted: bool = True  # still in queue_remaining (ComfyUI has not let it go)

    def holds_end(self) -> bool:
        return not self.ended and self.stream.holding


class Hub:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.sockets: dict[tuple[str, str], Socket] = {}
        self.prompts: dict[str, Prompt] = {}  # job_id -> open facade prompt
        self.open_count: dict[str, int] = {}  # tenant -> open prompts (queue_remaining)
        self.missed: dict[tuple[str, str], deque[tuple[float, list[str | bytes]]]] = {}
        # per client: the prompt whose held end the client's other prompts wait behind
        self.gates: dict[tuple[str, str], Prompt] = {}
        self.waiting: dict[tuple[str, str], deque[tuple[Prompt, list[Out], bool]]] = {}

    # -- what the coordinator tells -----------------------------------------------------------

    def adopt(self, jobs: Iterable[JobRecord]) -> None:
        """Follow the open facade jobs found at start (after a coordinator restart)."""
        for job in jobs:
            if job.status not in TERMINAL and job.id not in self.prompts:
                self._track(job, started=job.status == JobStatus.RUNNING)

    def _track(self, job: JobRecord, started: bool) -> Prompt | None:
        meta = meta_of(job.spec.metadata)
        if meta is None:
            return None
        prompt = Prompt(job.tenant, meta.client_id, PromptStream(job.id, meta.prompt_id, started))
        prompt.keep_end = V2 not in job.spec.metadata  # a v2 client follows its job over SSE
        prompt.ran = started
        if started:
            prompt.place = (job.agent_id, job.instance_id)
        self.prompts[job.id] = prompt
        self.open_count[job.tenant] = self.open_count.get(job.tenant, 0) + 1
        return prompt

    def job_changed(self, old: JobRecord | None, new: JobRecord) -> None:
        prompt = self.prompts.get(new.id)
        if prompt is None:
            if new.status in TERMINAL:
                return
            prompt = self._track(new, started=False)
            if prompt is None:
                return
            self._broadcast_status(new.tenant)
            return
        if new.status in TERMINAL:
            del self.prompts[new.id]
            prompt.ended = True
            self._uncount(prompt)
            self._route(prompt, prompt.stream.end(new), final=True)
            if prompt.client_id is not None:  # (without one, the end went to every socket)
                self._broadcast_status(prompt.tenant, skip=prompt.client_id)
            return
        if new.status == JobStatus.QUEUED:  # requeued: in the queue again, on no instance
            prompt.place = (None, None)
            if not prompt.counted:
                prompt.counted = True
                self.open_count[prompt.tenant] = self.open_count.get(prompt.tenant, 0) + 1
        if new.status == JobStatus.RUNNING:
            prompt.place = (new.agent_id, new.instance_id)
            self._let_go_before(prompt)
            if not prompt.ran:
                prompt.ran = True
                self._broadcast_status(prompt.tenant)

    def _let_go_before(self, prompt: Prompt) -> None:
        """A ComfyUI runs one prompt at a time: when `prompt` starts on an instance, the prompt
        that ran there before has left ComfyUI's queue (its end may still be on its way, e.g.
        an interrupted prompt's report comes after the next prompt's start), so it no longer
        counts in queue_remaining, as ComfyUI's own status frame says."""
        for other in self.prompts.values():
            if other is not prompt and other.ran and other.place == prompt.place:
                self._uncount(other)

    def _uncount(self, prompt: Prompt) -> None:
        if prompt.counted:
            prompt.counted = False
            self.open_count[prompt.tenant] = max(0, self.open_count.get(prompt.tenant, 1) - 1)

    def comfy_events(self, job: JobRecord, attempt: int, events: Iterable[JobEvent]) -> None:
        prompt = self.prompts.get(job.id)
        if prompt is None:
            return
        outs: list[Out] = []
        for event in events:
            outs.extend(prompt.stream.feed(attempt, event))
        if outs:
            self._route(prompt, outs, final=False)
        elif prompt.client_id is not None and prompt.holds_end():  # all it had is held
            self.gates.setdefault((prompt.tenant, prompt.client_id), prompt)

    # -- sockets -----------------------------------------------------------------------------

    def remaining(self, tenant: str) -> int:
        return self.open_count.get(tenant, 0)

    def connect(self, sock: Socket) -> None:
        """Register a socket and greet it as ComfyUI does (plus the ends it missed)."""
        key = (sock.tenant, sock.sid)
        self.sockets[key] = sock  # a second socket with this clientId replaces the first
        sock.put(json.dumps(status_msg(self.remaining(sock.tenant), sock.sid)))
        for prompt in self.prompts.values():
            if (prompt.tenant, prompt.client_id) == key and prompt.stream.node is not None:
                sock.put(json.dumps({"type": "executing", "data": {"node": prompt.stream.node}}))
        now = self.clock()
        for at, frames in self.missed.pop(key, ()):
            if now - at <= MISSED_TTL_S:
                for frame in frames:
                    sock.put(frame)

    def disconnect(self, sock: Socket) -> None:
        key = (sock.tenant, sock.sid)
        if self.sockets.get(key) is sock:
            del self.sockets[key]
        sock.close()

    def feature_flags(self, sock: Socket, flags: Any) -> None:
        sock.metadata = isinstance(flags, dict) and flags.get("supports_preview_metadata") is True
        sock.put(json.dumps({"type": "feature_flags", "data": FEATURES}))

    def close_all(self) -> None:
        for sock in list(self.sockets.values()):
            sock.close()
        self.sockets.clear()

    # -- routing -------------------------------------------------------------------------------

    def _broadcast_status(self, tenant: str, skip: str | None = None) -> None:
        text = json.dumps(status_msg(self.remaining(tenant)))
        frame = ws_frame(text)  # encoded once for every socket
        for (t, sid), sock in self.sockets.items():
            if t == tenant and sid != skip:
                sock.put(text, frame)

    def _route(self, prompt: Prompt, outs: list[Out], final: bool) -> None:
        client = prompt.client_id
        if client is None:
            self._deliver(prompt, outs, final)
            return
        key = (prompt.tenant, client)
        if self._waits(key, prompt):
            queue = self.waiting.setdefault(key, deque())
            queue.append((prompt, outs, final))
            if len(queue) > WAITING_MAX:  # bounded: let everything through, in order
                self.gates.pop(key, None)
                self._flush(key)
            return
        self._deliver(prompt, outs, final)
        self._gate(key, prompt)

    def _waits(self, key: tuple[str, str], prompt: Prompt) -> bool:
        """Whether `prompt`'s frames must wait behind another prompt's held end. The prompt
        others wait for always goes first; a gate whose prompt no longer holds its end (a retry,
        or its end went out) opens, and what waited follows first, in order."""
        if self.gates.get(key) is prompt:
            return False
        owner = self._owner(key)
        if owner is None and self.waiting.get(key):
            self._flush(key)
            owner = self._owner(key)
        return owner is not None and owner is not prompt

    def _owner(self, key: tuple[str, str]) -> Prompt | None:
        owner = self.gates.get(key)
        if owner is not None and not owner.holds_end():
            del self.gates[key]
            return None
        return owner

    def _gate(self, key: tuple[str, str], prompt: Prompt) -> None:
        """After `prompt`'s frames went out: it holds its end now (the client's other prompts
        wait), or it was the one they waited for and its end went out (they follow)."""
        if prompt.holds_end():
            self.gates.setdefault(key, prompt)
        elif self.gates.get(key) is prompt:
            del self.gates[key]
            self._flush(key)

    def _flush(self, key: tuple[str, str]) -> None:
        queue = self.waiting.pop(key, None)
        while queue:
            owner = self._owner(key)
            if owner is not None and queue[0][0] is not owner:
                self.waiting[key] = queue  # a prompt that went out meanwhile holds its end
                return
            prompt, outs, final = queue.popleft()
            self._deliver(prompt, outs, final)
            if prompt.holds_end():
                self.gates.setdefault(key, prompt)

    def _deliver(self, prompt: Prompt, outs: list[Out], final: bool) -> None:
        tenant, client = prompt.tenant, prompt.client_id
        if client is None:  # ComfyUI: no execution events; status and progress_state to all
            texts = [
                self._encode(o, prompt, None)
                for o in outs
                if isinstance(o, Status | Text) and _public(o)
            ]
            encoded = [(text, ws_frame(text)) for text in texts]
            for (t, _), each in list(self.sockets.items()):
                if t == tenant:
                    for text, frame in encoded:
                        each.put(text, frame)
            return
        sock = self.sockets.get((tenant, client))
        if sock is not None and not sock.closed:
            if not sock.metadata:
                outs = [o for out in outs for o in prompt.legacy.push(out)]
                if final:
                    outs += prompt.legacy.flush()
            for out in outs:
                sock.put(self._encode(out, prompt, sock))
            return
        if final and prompt.keep_end:  # keep the end for the client's next socket
            frames = [self._encode(o, prompt, None) for o in outs if not isinstance(o, Binary)]
            self._keep_missed((tenant, client), frames)

    def _keep_missed(self, key: tuple[str, str], frames: list[str | bytes]) -> None:
        now = self.clock()
        kept = self.missed.pop(key, None) or deque(maxlen=MISSED_PER_CLIENT)
        kept.append((now, frames))
        self.missed[key] = kept  # most recent last: the dict's order is the age order
        for old in list(self.missed):
            if len(self.missed) <= MISSED_CLIENTS and now - self.missed[old][-1][0] <= MISSED_TTL_S:
                break
            del self.missed[old]

    def _encode(self, out: Out, prompt: Prompt, sock: Socket | None) -> str | bytes:
        if isinstance(out, Status):
            return json.dumps(status_msg(self.remaining(prompt.tenant)))
        if isinstance(out, Text):
            return json.dumps(out.msg)
        return encode_binary(out, prompt.stream.prompt_id, sock is not None and sock.metadata)


def _public(out: Status | Text) -> bool:
    return isinstance(out, Status) or out.type == "progress_state"
