"""Where finished outputs live, as retention sees them: remove a job's outputs, count the bytes
held, tell how full the medium is.

`LocalOutputs` is the data directory (`outputs/JOB/ATTEMPT/NAME`, written by outputs.py).
Removing is idempotent (a sweep cut short by a crash removes the same job again) and blocking:
callers on an event loop run it in a worker thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol


class OutputStore(Protocol):
    def remove_job(self, job_id: str, tenant: str) -> None:
        """Remove every output of the job, of every attempt; nothing there is fine."""
        ...

    def stored_bytes(self) -> int:
        """Bytes of outputs held now (walks the store: call it rarely, off the event loop)."""
        ...

    def fullness(self) -> float | None:
        """Used fraction of the medium the outputs fill; None where that has no meaning."""
        ...


class LocalOutputs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id in (".", ".."):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def remove_job(self, job_id: str, tenant: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def stored_bytes(self) -> int:
        total = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(folder, name)).st_size
                except OSError:
                    pass  # removed meanwhile
        return total

    def fullness(self) -> float | None:
        try:
            usage = shutil.disk_usage(self.root)
        except OSError:
            return None
        return usage.used / usage.total if usage.total else None
