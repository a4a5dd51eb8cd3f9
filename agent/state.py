"""The small state file that lets a restarted agent re-attach to prompts still in ComfyUI."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("agent.state")


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
    """Jobs this agent holds, by (job id, attempt), written atomically (temp file + rename) on
    every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.jobs: dict[tuple[str, int], HeldJob] = {}

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
        return list(self.jobs.values())

    def put(self, job: HeldJob) -> None:
        self.jobs[(job.job_id, job.attempt)] = job
        self._write()

    def remove(self, job_id: str, attempt: int) -> None:
        if self.jobs.pop((job_id, attempt), None) is not None:
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"jobs": [asdict(j) for j in self.jobs.values()]}))
        os.replace(tmp, self.path)
