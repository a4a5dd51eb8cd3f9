"""The log file of a ComfyUI process: written by the process itself, rotated by the agent.

The child's stdout and stderr go straight to the file (opened O_APPEND), not through a pipe, so
a ComfyUI keeps logging while the agent restarts and the agent's death never blocks it on a full
pipe. Rotation copies the file to `.1` (older ones shift to `.2` ...) and truncates it; with
O_APPEND the child simply goes on writing at the new end. A few lines written during the copy
may be lost, which is acceptable for a diagnostic log.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class LogFile:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups

    def open_for_child(self) -> int:
        """A write-only, appending descriptor for the child's stdout/stderr (caller closes)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def rotate_if_needed(self) -> bool:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if self.max_bytes <= 0 or size <= self.max_bytes:
            return False
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self._backup(i)
                if older.exists():
                    os.replace(older, self._backup(i + 1))
            shutil.copyfile(self.path, self._backup(1))
        with open(self.path, "r+b") as fh:
            fh.truncate(0)
        return True

    def tail(self, max_bytes: int = 4000) -> str:
        """The end of the log (from the newest backup too when the file was just rotated)."""
        data = b""
        for path in (self.path, self._backup(1)):
            try:
                with open(path, "rb") as fh:
                    fh.seek(0, os.SEEK_END)
                    size = fh.tell()
                    want = max_bytes - len(data)
                    fh.seek(max(0, size - want))
                    data = fh.read(want) + data
            except FileNotFoundError:
                continue
            if len(data) >= max_bytes:
                break
        text = data.decode(errors="replace")
        if len(data) >= max_bytes and "\n" in text:
            text = text.split("\n", 1)[1]  # drop the partial first line
        return text

    def _backup(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")
