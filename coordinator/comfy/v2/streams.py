"""Live state of v2 jobs and their SSE subscribers, fed by the coordinator.

`JobStreams` is a feed watcher (as the WebSocket hub is): the coordinator calls `job_changed`
and `comfy_events` synchronously. For each open job submitted through `/api/v2/jobs` it keeps
the latest progress snapshot (`progress.Tracker` over the frames ComfyUI sent on the agent) and
the most recent preview, which `GET /api/v2/jobs/{id}` reports and a new event stream gets on
connect. Another facade prompt (one posted to `/prompt` with a UUID id) is followed from the
moment a stream subscribes to it.

Each subscriber holds its own frames: lifecycle frames (`status`, `output`) queue in order and
are never dropped (a job has few); `progress` and `preview` keep only the latest, and the
handler sends them at most every `THROTTLE_S` (v2: "throttled server-side, ~2/s"). At the end
of a job a subscriber gets the last progress, an `output` for each output, then the terminal
`status`, after which its stream ends. Nothing here blocks: a slow client only falls behind on
its own progress frames.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.coordinator.comfy.prompts import meta_of
from comfyfleet.coordinator.comfy.v2.progress import Tracker
from comfyfleet.coordinator.comfy.v2.shapes import (
    V2,
    JobView,
    outputs_json,
    parse_job_id,
    v2_status,
)
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.protocol import JobEvent
from comfyfleet.shared.status import TERMINAL, JobStatus

__all__ = ["JobStreams", "Subscriber", "sse_frame"]

THROTTLE_S = 0.5
MAX_FRAMES = 1024  # lifecycle frames a subscriber may hold (a job has a handful)


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame; no `id:` (v2's stream is live push, with no resume)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Subscriber:
    def __init__(self, job_id: str, base: str, clock: Callable[[], float]) -> None:
        self.job_id = job_id
        self.base = base  # where the client reached us: the outputs' URLs start there
        self.clock = clock
        self.frames: deque[bytes] = deque()
        self.progress: bytes | None = None
        self.preview: bytes | None = None
        self.sent_progress = -THROTTLE_S
        self.sent_preview = -THROTTLE_S
        self.done = False  # the terminal status is queued: the stream ends after it
        self.wake = asyncio.Event()

    def push(self, frames: Iterable[bytes], final: bool = False) -> None:
        if self.done:
            return
        if final:
            self.progress = self.preview = None
        self.frames.extend(frames)
        while len(self.frames) > MAX_FRAMES:
            self.frames.popleft()
        self.done = final
        self.wake.set()

    def latest(self, progress: bytes | None = None, preview: bytes | None = None) -> None:
        if self.done:
            return
        self.progress = progress or self.progress
        self.preview = preview or self.preview
        self.wake.set()

    def take(self) -> tuple[list[bytes], float | None]:
        """The frames to write now, and in how many seconds a throttled one is due."""
        now = self.clock()
        out = list(self.frames)
        self.frames.clear()
        due: float | None = None
        if self.progress is not None:
            wait = self.sent_progress + THROTTLE_S - now
            if wait <= 0:
                out.append(self.progress)
                self.progress, self.sent_progress = None, now
            else:
                due = wait
        if self.preview is not None:
            wait = self.sent_preview + THROTTLE_S - now
            if wait <= 0:
                out.append(self.preview)
                self.preview, self.sent_preview = None, now
            else:
                due = wait if due is None else min(due, wait)
        self.wake.clear()
        return out, due


@dataclass(slots=True)
class Live:
    """An open job as the streams follow it."""

    tracker: Tracker
    attempt: int = 0
    v2: bool = True  # submitted through /api/v2/jobs (else followed only while subscribed)
    preview: dict[str, Any] | None = None
    subs: set[Subscriber] = field(default_factory=set)


class JobStreams:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.live: dict[str, Live] = {}  # fleet job id -> open job followed
        self.clock = clock
        self.count = 0  # open subscribers

    # -- what the coordinator tells ---------------------------------------------------------

    def adopt(self, jobs: Iterable[JobRecord]) -> None:
        for job in jobs:
            if job.status not in TERMINAL and V2 in job.spec.metadata:
                self.live.setdefault(job.id, Live(Tracker.of(job.spec.workflow), job.attempt))

    def job_changed(self, old: JobRecord | None, new: JobRecord) -> None:
        live = self.live.get(new.id)
        if live is None:
            if new.status not in TERMINAL and V2 in new.spec.metadata:
                self.live[new.id] = Live(Tracker.of(new.spec.workflow), new.attempt)
            return
        if new.status in TERMINAL:
            del self.live[new.id]
            if new.status == JobStatus.COMPLETED:
                live.tracker.complete()
            for sub in live.subs:
                sub.push(self.ending(new, live, sub), final=True)
            return
        if old is None or v2_status(old) != v2_status(new):
            frame = sse_frame("status", {"status": v2_status(new)})
            for sub in live.subs:
                sub.push([frame])

    def comfy_events(self, job: JobRecord, attempt: int, events: Sequence[JobEvent]) -> None:
        live = self.live.get(job.id)
        if live is None or attempt < live.attempt:
            return
        if attempt > live.attempt:  # a retry elsewhere: its progress starts again
            live.tracker = live.tracker.restart()
            live.attempt = attempt
        moved = False
        preview: dict[str, Any] | None = None
        for event in events:
            if event.kind == "comfy" and isinstance(event.data, dict):
                moved = live.tracker.feed(event.data) or moved
            elif event.kind == "preview" and event.image is not None:
                preview = {
                    "node_id": event.node or "",
                    "content_type": event.mime or "image/jpeg",
                    "data_base64": base64.b64encode(event.image).decode(),
                }
        if preview is not None:
            live.preview = preview
        if live.subs and (moved or preview is not None):
            progress = sse_frame("progress", live.tracker.snapshot()) if moved else None
            image = sse_frame("preview", preview) if preview is not None else None
            for sub in live.subs:
                sub.latest(progress, image)

    # -- what the handlers ask -----------------------------------------------------------------

    def progress(self, job_id: str) -> dict[str, Any] | None:
        live = self.live.get(job_id)
        return live.tracker.snapshot() if live is not None else None

    def subscribe(self, job: JobRecord, view: JobView) -> Subscriber:
        """A subscriber greeted with the job's snapshot: its status, and while it runs its
        latest progress and preview; for a job already ended, its outputs and its end."""
        sub = Subscriber(job.id, view.base, self.clock)
        self.count += 1
        if job.status in TERMINAL:
            sub.push(self.ending(job, None, sub), final=True)
            return sub
        live = self.live.get(job.id)
        if live is None:
            tracker = Tracker.of(job.spec.workflow)
            live = self.live[job.id] = Live(tracker, job.attempt, v2=False)
        live.subs.add(sub)
        status: dict[str, Any] = {"status": v2_status(job)}
        if view.queue_position is not None and status["status"] == "queued":
            status["queue_position"] = view.queue_position
        sub.push([sse_frame("status", status)])
        if job.status == JobStatus.RUNNING:
            sub.latest(sse_frame("progress", live.tracker.snapshot()))
        if live.preview is not None:
            sub.latest(preview=sse_frame("preview", live.preview))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.count -= 1
        live = self.live.get(sub.job_id)
        if live is not None:
            live.subs.discard(sub)
            if not live.subs and not live.v2:
                del self.live[sub.job_id]

    def close_all(self) -> None:
        for live in self.live.values():
            for sub in live.subs:
                sub.push([], final=True)

    def ending(self, job: JobRecord, live: Live | None, sub: Subscriber) -> list[bytes]:
        """A subscriber's last frames: the final progress, the outputs, the terminal status."""
        meta = meta_of(job.spec.metadata)
        job_uuid = parse_job_id(meta.prompt_id) if meta is not None else None
        frames = []
        if live is not None and job.status == JobStatus.COMPLETED:
            frames.append(sse_frame("progress", live.tracker.snapshot()))
        if job_uuid is not None:
            frames.extend(sse_frame("output", o) for o in outputs_json(job, job_uuid, sub.base))
        frames.append(sse_frame("status", {"status": v2_status(job)}))
        return frames
