"""The durable outbox: a finished attempt's outputs and finish report, kept in the spool until
the coordinator acknowledges them.

Each attempt has a folder `spool/<job_id>-<attempt>/` holding its output files under their
stored names (shared/names.py) and, once the attempt is over, `.report.json` (a stored name never
starts with a dot, so the two never meet). The report is written atomically before anything is
sent; the folder goes only when the coordinator has acknowledged the report (or refused the
attempt as stale). A restarted agent finds the reports here and sends them again, so neither a
coordinator outage of any length nor an agent restart loses a result. Every method blocks
(file I/O): the agent calls them through asyncio.to_thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import structlog

from comfyfleet.shared import protocol as p

log = structlog.get_logger("agent.outbox")
REPORT_FILE = ".report.json"


class Report(msgspec.Struct, frozen=True, kw_only=True):
    """What the coordinator must hear about one attempt, with what the agent reports it under."""

    instance_id: str
    prompt_id: str
    finish: p.Finish

    @property
    def key(self) -> tuple[str, int]:
        return (self.finish.job_id, self.finish.attempt)


class Outbox:
    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir

    def folder(self, job_id: str, attempt: int) -> Path:
        return self.spool_dir / f"{job_id}-{attempt}"

    def put(self, report: Report) -> None:
        """Keep `report` and its output files (synced to disk; the report atomically) until
        `remove`."""
        folder = self.folder(*report.key)
        folder.mkdir(parents=True, exist_ok=True)
        for output in report.finish.outputs:  # the files first: the report vouches for them
            with open(folder / output.name, "rb") as fh:
                os.fsync(fh.fileno())
        tmp = folder / (REPORT_FILE + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(msgspec.json.encode(report))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / REPORT_FILE)
        _sync_dir(folder)

    def load(self) -> list[Report]:
        """Every report not yet acknowledged; an unreadable one is logged and left for a look."""
        reports = []
        for path in sorted(self.spool_dir.glob(f"*/{REPORT_FILE}")):
            try:
                reports.append(msgspec.json.decode(path.read_bytes(), type=Report))
            except (OSError, msgspec.DecodeError) as exc:
                log.error("outbox_report_unreadable", path=str(path), error=str(exc))
        return reports

    def remove(self, job_id: str, attempt: int) -> None:
        shutil.rmtree(self.folder(job_id, attempt), ignore_errors=True)

    def sweep(self, keep: set[tuple[str, int]]) -> int:
        """Remove spool folders that hold no report and belong to no attempt in `keep` (what a
        crash left half-fetched); returns how many went."""
        if not self.spool_dir.is_dir():
            return 0
        removed = 0
        for folder in self.spool_dir.iterdir():
            job_id, _, attempt = folder.name.rpartition("-")
            if not folder.is_dir() or (folder / REPORT_FILE).exists():
                continue
            if attempt.isdigit() and (job_id, int(attempt)) in keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        return removed


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
