"""The small state file that lets a restarted agent re-attach to prompts still in ComfyUI."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("agent.state")

LINGER_S = 0.5  # a change not synced by a runner is written at most this late


@dataclass(frozen=True, slots=True)
class HeldJob:
    job_id: str
    attempt: int
    instance_id: str
    prompt_id: str
    timeout_s: float
    started_at: float
    client_id: str = ""  # the WebSocket clientId the prompt was submitted with ("" = default)


class StateFile:
    """Jobs this agent holds, by (job id, attempt), written atomically (temp file + rename).

    Inside the event loop a change is written off the loop, coalesced with the changes around
    it: at the latest `linger_s` later, or when a runner awaits `sync` (it does before the
    coordinator hears that the prompt runs, so a RUNNING job can always be re-attached). A job
    that comes and goes between two writes costs no write of its own; a removal written late
    only makes a restarted agent ask ComfyUI about a prompt that is over. Outside a loop (tests,
    tools) every change is written at once.
    """

    def __init__(self, path: Path, linger_s: float = LINGER_S) -> None:
        self.path = path
        self.linger_s = linger_s
        self.jobs: dict[tuple[str, int], HeldJob] = {}
        self.version = 0  # changes made
        self.on_disk = 0  # changes the file holds
        self.writes = 0
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._lingering: asyncio.Future[None] | None = None

    def load(self) -> list[HeldJob]:
        try:
            raw = json.loads(self.path.read_text())
            held = [HeldJob(**j) for j in raw.get("jobs", [])]
            self.jobs = {(j.job_id, j.attempt): j for j in held}
        except FileNotFoundError:
            self.jobs = {}
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("state_file_unreadable", path=str(self.path), error=str(exc))
            self.jobs = {}
        self.version = self.on_disk
        return list(self.jobs.values())

    def put(self, job: HeldJob) -> None:
        self.jobs[(job.job_id, job.attempt)] = job
        self._changed()

    def remove(self, job_id: str, attempt: int) -> None:
        if self.jobs.pop((job_id, attempt), None) is not None:
            self._changed()

    async def sync(self) -> None:
        """Until the file holds every change made before the call (callers that wait meanwhile
        share one write)."""
        target = self.version
        async with self._lock:
            if self.on_disk >= target:
                return
            version, text = self.version, self._text()
            await asyncio.to_thread(self._write, text)
            self.on_disk = max(self.on_disk, version)

    def flush(self) -> None:
        """Write now, blocking (at shutdown)."""
        if self.on_disk < self.version:
            version = self.version
            self._write(self._text())
            self.on_disk = version

    def _changed(self) -> None:
        self.version += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._timer is None:
            self._timer = loop.call_later(self.linger_s, self._lingered)

    def _lingered(self) -> None:
        self._timer = None
        self._lingering = asyncio.ensure_future(self.sync())
        self._lingering.add_done_callback(_log_failure)

    def _text(self) -> str:
        return json.dumps({"jobs": [asdict(j) for j in self.jobs.values()]})

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)
        self.writes += 1


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("state_file_write_failed", error=str(exc))
