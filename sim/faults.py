"""Live fault knobs: start from `FaultSettings`, changed at runtime by `POST /sim/faults`."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from comfyfleet.sim.config import FaultSettings

__all__ = ["FaultError", "Faults"]


class FaultError(ValueError):
    """A `/sim/faults` body that names an unknown knob or gives a bad value."""


_NUMBER_OR_NONE = {"crash_after_s", "drop_ws_after_s"}
_INT_OR_NONE = {"crash_on_prompt"}
_STR_OR_NONE = {"oom_node_class", "fail_class_type"}
_BOOL = {"hang", "hang_prompt", "garbage", "ws_silent"}


@dataclasses.dataclass
class Faults:
    crash_after_s: float | None = None
    crash_on_prompt: int | None = None
    hang: bool = False
    drop_ws_after_s: float | None = None
    oom_node_class: str | None = None
    oom_probability: float = 0.0
    fail_class_type: str | None = None
    slow_start_s: float = 0.0
    hang_prompt: bool = False
    garbage: bool = False
    ws_silent: bool = False  # sockets stay open but get no frame (ComfyUI #15240)
    leak_vram_mb: float = 0.0  # VRAM held that POST /free does not release (a leak)
    leak_ram_mb: float = 0.0  # RAM the process holds on to (a leak)

    @classmethod
    def from_settings(cls, settings: FaultSettings) -> Faults:
        return cls(**dataclasses.asdict(settings))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def update(self, patch: Any) -> None:
        """Apply a JSON object of knob -> value; `{"reset": true}` clears all first."""
        if not isinstance(patch, dict):
            raise FaultError("body must be a JSON object")
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(patch) - names - {"reset"}
        if unknown:
            raise FaultError(f"unknown fault knob(s): {', '.join(sorted(unknown))}")
        checked = {name: _check(name, value) for name, value in patch.items() if name != "reset"}
        if patch.get("reset"):
            for f in dataclasses.fields(self):
                setattr(self, f.name, f.default)
        for name, value in checked.items():
            setattr(self, name, value)

    def oom_roll(self, rng: random.Random) -> bool:
        return self.oom_probability > 0 and rng.random() < self.oom_probability


def _check(name: str, value: Any) -> Any:
    if name in _BOOL:
        if not isinstance(value, bool):
            raise FaultError(f"{name} must be true or false")
        return value
    if value is None and name in _NUMBER_OR_NONE | _INT_OR_NONE | _STR_OR_NONE:
        return None
    if name in _STR_OR_NONE:
        if not isinstance(value, str) or not value:
            raise FaultError(f"{name} must be a node class name or null")
        return value
    if name in _INT_OR_NONE:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FaultError(f"{name} must be a positive integer or null")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultError(f"{name} must be a non-negative number")
    if name == "oom_probability" and value > 1:
        raise FaultError("oom_probability must be between 0 and 1")
    return float(value)
