"""A simulated ComfyUI 0.3.64 server (`comfyfleet comfyui-sim`).

Same routes (also under /api/), JSON shapes and WebSocket event orders as the recordings in
tests/fixtures/comfyui-traces; simulated nodes with configurable timings and VRAM; real PNG
outputs; fault knobs (`POST /sim/faults`) and counters (`GET /sim/stats`).
"""

from comfyfleet.sim.config import FaultSettings, ModelSpec, SimConfig
from comfyfleet.sim.server import create_app, run, serve
from comfyfleet.sim.state import SIM_STATE

__all__ = ["SIM_STATE", "FaultSettings", "ModelSpec", "SimConfig", "create_app", "run", "serve"]
