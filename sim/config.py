"""Frozen configuration of one simulated ComfyUI server."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["DEFAULT_MODELS", "FaultSettings", "ModelSpec", "SimConfig"]


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint the simulator pretends to have, and the VRAM it holds once loaded."""

    name: str
    vram_mb: int


DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("v1-5-pruned-emaonly.safetensors", 2048),
    ModelSpec("dreamshaper_8.safetensors", 2200),
    ModelSpec("sd_xl_turbo_1.0_fp16.safetensors", 5200),
    ModelSpec("sd_xl_base_1.0.safetensors", 6600),
)


@dataclass(frozen=True, kw_only=True)
class FaultSettings:
    """Fault knobs at start-up; `POST /sim/faults` changes the live copy (see faults.py)."""

    crash_after_s: float | None = None  # os._exit this long after a prompt started running
    crash_on_prompt: int | None = None  # os._exit while running the Nth prompt (1-based)
    hang: bool = False  # stop at the next node / step; never sends executing{null}
    drop_ws_after_s: float | None = None  # close the prompt's client socket(s) mid-run
    oom_node_class: str | None = None  # this node class fails with torch.OutOfMemoryError
    oom_probability: float = 0.0  # each VRAM-using node fails with OOM at this rate
    fail_class_type: str | None = None  # this node class fails with a plain exception
    slow_start_s: float = 0.0  # sleep this long before listening
    hang_prompt: bool = False  # POST /prompt never answers while set
    garbage: bool = False  # every ComfyUI route answers 200 with a body that is not JSON


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    output_dir: Path
    input_dir: Path
    temp_dir: Path | None = None  # default: a `temp` folder beside output_dir
    host: str = "127.0.0.1"
    port: int = 8188
    vram_mb: int = 24576
    gpu_name: str = "NVIDIA GeForce RTX 4090 (simulated)"
    device: Literal["cuda", "cpu"] = "cuda"
    step_ms: float = 40.0  # per sampler step at 512x512; scales with pixel count
    node_ms: float = 2.0  # base cost of other nodes
    load_ms_per_gb: float = 150.0  # checkpoint load time when not resident
    preview_every: int = 2  # sampler preview frame every N steps (0: none)
    seed: int = 0
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    hidden_node_classes: tuple[str, ...] = ()  # node classes this "install" lacks
    max_upload_size: int = 100 * 1024 * 1024
    faults: FaultSettings = field(default_factory=FaultSettings)
    # spend a real ComfyUI's measured CPU per request (sim/costs.py); off: answer for free
    request_costs: bool = True
    # node work spends CPU in a worker thread (ComfyUI in CPU mode); off: it waits (a GPU)
    node_cpu: bool = False

    @classmethod
    def for_data_dir(cls, data_dir: Path | str, **kwargs: object) -> SimConfig:
        """`output/`, `input/` and `temp/` under one folder."""
        root = Path(data_dir)
        return cls(
            output_dir=root / "output",
            input_dir=root / "input",
            temp_dir=root / "temp",
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def resolved_temp_dir(self) -> Path:
        return self.temp_dir if self.temp_dir is not None else self.output_dir.parent / "temp"
