"""Agent configuration: one frozen dataclass, passed in explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from comfyfleet.shared.settings import ConfigError


@dataclass(frozen=True, slots=True)
class AgentConfig:
    coordinator_url: str  # one URL, or several comma-separated (every coordinator of a store)
    comfyui_urls: tuple[str, ...]
    agent_id: str
    data_dir: Path
    gpu_source: str = "auto"  # auto | nvml | comfyui
    labels: dict[str, str] = field(default_factory=dict)
    drain_grace_s: float = 30.0  # on SIGTERM, running jobs get this long to finish
    stall_s: float = 10.0  # no ComfyUI event for this long: ask /history
    health_interval_s: float = 2.0
    max_output_bytes: int = 2 << 30
    events_flush_s: float = 0.1  # batch progress events for this long
    request_timeout_s: float = 60.0
    cancel_wait_s: float = 30.0  # after /interrupt, give up on a ComfyUI that never stops
    comfyui_timeout_s: float = 30.0  # one HTTP call to ComfyUI (a hung /prompt) gives up after
    vram_sample_s: float = 0.25  # sample ComfyUI's VRAM this often while a job runs
    inventory_refresh_s: float = 60.0  # re-read models and node classes this often
    log_level: str = "info"
    agent_token: str | None = field(default=None, repr=False)  # sent as Authorization: Bearer
    ca_file: Path | None = None  # CA bundle to verify an https coordinator (default: system)
    # Prompts each ComfyUI holds at once: 2 keeps the next one queued inside ComfyUI while the
    # current one runs (no round trip between jobs on the GPU); the coordinator reserves VRAM
    # for both. 1 turns the pipeline off.
    capacity: int = 2
    # The GPU (NVML index) of each ComfyUI, in the order of comfyui_urls; empty: each instance's
    # `--cuda-device N` as its /system_stats argv shows, else its position in the list.
    comfyui_gpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.comfyui_gpus and len(self.comfyui_gpus) != len(self.comfyui_urls):
            raise ConfigError(
                "comfyui_gpus",
                f"gives {len(self.comfyui_gpus)} GPU indexes for {len(self.comfyui_urls)} "
                "ComfyUI URLs: one per URL, in the same order",
            )

    def gpu_of(self, ordinal: int) -> int | None:
        """The GPU configured for the ComfyUI at position `ordinal` (None: find out)."""
        return self.comfyui_gpus[ordinal] if self.comfyui_gpus else None

    @property
    def state_file(self) -> Path:
        return self.data_dir / "agent-state.json"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"
