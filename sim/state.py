"""Everything one simulator instance holds, stored on its app under `SIM_STATE`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from comfyfleet.sim import events
from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.executor import Executor
from comfyfleet.sim.faults import Faults
from comfyfleet.sim.files import annotated_input_path
from comfyfleet.sim.nodes import CATALOGUE, CatalogueContext, NodeSpec
from comfyfleet.sim.prompt_queue import PromptQueue
from comfyfleet.sim.stats import SimStats
from comfyfleet.sim.validation import ValidationContext
from comfyfleet.sim.vram import Vram
from comfyfleet.sim.ws import Hub

__all__ = ["SIM_STATE", "SimState", "build_state"]


@dataclass
class SimState:
    config: SimConfig
    hub: Hub
    queue: PromptQueue
    vram: Vram
    faults: Faults
    stats: SimStats
    executor: Executor
    number: int = 0  # next prompt number, as ComfyUI counts (failed validations included)
    started_at: float = field(default_factory=time.monotonic)
    ballast: bytes = b""  # the leak_ram_mb fault's memory

    def catalogue_context(self) -> CatalogueContext:
        return CatalogueContext(
            checkpoints=tuple(m.name for m in self.config.models),
            list_input_files=self._input_files,
        )

    @property
    def catalogue(self) -> Mapping[str, NodeSpec]:
        """The node classes this simulated install has."""
        hidden = self.config.hidden_node_classes
        if not hidden:
            return CATALOGUE
        return {name: spec for name, spec in CATALOGUE.items() if name not in hidden}

    def validation_context(self) -> ValidationContext:
        return ValidationContext(
            catalogue=self.catalogue,
            nodes=self.catalogue_context(),
            image_exists=self._image_exists,
        )

    def _input_files(self) -> list[str]:
        try:
            return [p.name for p in self.config.input_dir.iterdir() if p.is_file()]
        except OSError:
            return []

    def _image_exists(self, name: str) -> bool:
        path = annotated_input_path(self.config, name)
        return path is not None and path.is_file()


SIM_STATE = web.AppKey("comfyfleet_comfyui_sim", SimState)


def build_state(config: SimConfig, exit_fn: Callable[[int], None] = os._exit) -> SimState:
    hub = Hub()
    queue: PromptQueue

    def announce_status() -> None:
        hub.send_json("status", events.status(queue.remaining))

    queue = PromptQueue(on_change=announce_status)
    vram = Vram(config.vram_mb)
    faults = Faults.from_settings(config.faults)
    hub.mute = lambda: faults.ws_silent
    stats = SimStats()
    executor = Executor(
        config=config,
        queue=queue,
        hub=hub,
        vram=vram,
        faults=faults,
        stats=stats,
        exit_fn=exit_fn,
    )
    return SimState(
        config=config,
        hub=hub,
        queue=queue,
        vram=vram,
        faults=faults,
        stats=stats,
        executor=executor,
    )
