"""Typed results: the API's JSON decoded into msgspec structs (unknown fields are ignored)."""

from __future__ import annotations

from typing import Any

import msgspec

from comfyfleet.shared.history import Transition

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


class Progress(msgspec.Struct, kw_only=True):
    fraction: float | None = None
    node: str | None = None
    node_type: str | None = None
    value: float | None = None
    max: float | None = None
    cached_nodes: list[str] = []
    updated_at: float | None = None


class Output(msgspec.Struct, kw_only=True):
    name: str
    url: str
    size: int = 0
    sha256: str = ""
    content_type: str = "application/octet-stream"
    node_id: str | None = None


class Job(msgspec.Struct, kw_only=True):
    id: str
    status: str
    attempt: int = 0
    agent_id: str | None = None
    instance_id: str | None = None
    gpu_index: int | None = None
    prompt_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    timestamps: dict[str, float] = {}
    priority: int = 0
    resources: dict[str, Any] = {}
    progress: Progress = msgspec.field(default_factory=Progress)
    pending_reason: str | None = None
    cancel_requested: bool = False
    retries_used: int = 0
    max_retries: int = 0
    error: dict[str, Any] | None = None
    outputs: list[Output] = []
    workflow_hash: str = ""
    metadata: dict[str, Any] = {}
    seeds: dict[str, int] = {}
    history: list[Transition] = []
    eta: dict[str, Any] | None = None  # expected_s / remaining_s, learned per workflow shape
    vram_peak_mb: int | None = None
    gpu_name: str | None = None
    profile: list[dict[str, Any]] | None = None  # per-node timings and cache hits

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobList(msgspec.Struct, kw_only=True):
    jobs: list[Job]
    next_cursor: str | None = None


class Gpu(msgspec.Struct, kw_only=True):
    index: int
    name: str
    uuid: str = ""
    vram_total_mb: int = 0
    vram_used_mb: int = 0
    vram_free_mb: int = 0
    vram_reserved_mb: int = 0
    vram_schedulable_mb: int = 0
    utilization_pct: float | None = None


class Host(msgspec.Struct, kw_only=True):
    hostname: str = ""
    cpu_count: int = 0
    load_1m: float | None = None
    ram_total_mb: int = 0
    ram_available_mb: int = 0


class Agent(msgspec.Struct, kw_only=True):
    id: str
    status: str
    version: str = ""
    labels: dict[str, str] = {}
    last_seen: float = 0.0
    seen_ago_s: float = 0.0
    host: Host = msgspec.field(default_factory=Host)
    gpus: list[Gpu] = []
    instances: list[dict[str, Any]] = []
    models: list[str] = []
    jobs: list[str] = []


class AgentList(msgspec.Struct, kw_only=True):
    agents: list[Agent]


class StreamEvent(msgspec.Struct, kw_only=True):
    """One Server-Sent Event from `/v1/jobs/{id}/events` or `/v1/events`."""

    id: int | None
    kind: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.kind == "job" and self.data.get("status") in TERMINAL
