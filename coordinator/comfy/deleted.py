"""What tenants removed from `/history` (`POST /history` with `delete` or `clear`).

The jobs stay in the store (the `/v1` API still shows them); the facade hides them, and the
list of what it hides is a JSON-lines file beside the uploads, so a deletion survives a restart
just as the history does. A `clear` is one line: everything that ended before it is hidden.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import structlog

from comfyfleet.coordinator.model import JobRecord

__all__ = ["DeletedHistory"]

log = structlog.get_logger("coordinator.comfy")


class DeletedHistory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, set[str]] = {}
        self.cleared: dict[str, float] = {}
        self._load()

    def _load(self) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                item = json.loads(line)
                tenant = str(item["tenant"])
            except (ValueError, KeyError, TypeError):
                log.warning("comfy_deleted_line_skipped", path=str(self.path))
                continue
            if "job_id" in item:
                self.ids.setdefault(tenant, set()).add(str(item["job_id"]))
            elif isinstance(item.get("before"), int | float):
                self.cleared[tenant] = max(self.cleared.get(tenant, 0.0), float(item["before"]))

    def _append(self, items: Iterable[dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            for item in items:
                out.write(json.dumps(item) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def hidden(self, tenant: str, job: JobRecord) -> bool:
        ended = job.updated_at or job.created_at
        return job.id in self.ids.get(tenant, ()) or ended <= self.cleared.get(tenant, -1.0)

    def delete(self, tenant: str, job_ids: Iterable[str]) -> None:
        new = [j for j in job_ids if j not in self.ids.get(tenant, ())]
        if new:
            self._append({"tenant": tenant, "job_id": j} for j in new)
            self.ids.setdefault(tenant, set()).update(new)

    def clear(self, tenant: str, now: float) -> None:
        self._append([{"tenant": tenant, "before": now}])
        self.cleared[tenant] = now
