"""Counters the tests and benchmarks read from `GET /sim/stats`."""

from __future__ import annotations

import dataclasses

__all__ = ["SimStats"]


@dataclasses.dataclass
class SimStats:
    prompts_submitted: int = 0  # accepted by POST /prompt
    prompts_rejected: int = 0  # answered 400
    prompts_started: int = 0
    prompts_executed: int = 0  # finished, whatever the outcome
    prompts_succeeded: int = 0
    prompts_failed: int = 0
    prompts_interrupted: int = 0
    interrupt_requests: int = 0  # POST /interrupt calls
    nodes_executed: int = 0
    nodes_cached: int = 0
    files_saved: int = 0
    oom_errors: int = 0
    injected_failures: int = 0
    hangs: int = 0
    crashes: int = 0
    ws_connections: int = 0  # total accepted
    ws_dropped: int = 0  # closed by the drop_ws fault

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)
