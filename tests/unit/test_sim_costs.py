"""The simulator spends a real ComfyUI's measured CPU per request (sim/costs.py)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.costs import COMFYUI_CPU_MS, route_key
from comfyfleet.sim.server import create_app


def test_route_keys_of_the_cost_table() -> None:
    assert route_key("/api/system_stats") == "/system_stats"
    assert route_key("/history/abc") == "/history/{id}"
    assert route_key("/api/history/abc") == "/history/{id}"
    assert route_key("/view") == "/view"


async def _cpu_ms_per_call(client: Any, path: str, n: int = 20) -> float:
    t0 = time.thread_time()  # the test client serves in this thread's event loop
    for _ in range(n):
        async with client.get(path) as r:
            assert r.status == 200
            await r.read()
    return 1000 * (time.thread_time() - t0) / n


async def test_system_stats_costs_what_comfyui_spends_and_nothing_when_off(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    config = SimConfig.for_data_dir(tmp_path)
    costly = await aiohttp_client(create_app(config, exit_fn=lambda code: None))
    free = await aiohttp_client(
        create_app(dataclasses.replace(config, request_costs=False), exit_fn=lambda code: None)
    )
    await _cpu_ms_per_call(free, "/system_stats", 3)  # warm up
    base = await _cpu_ms_per_call(free, "/system_stats")
    spent = await _cpu_ms_per_call(costly, "/system_stats")
    assert spent - base >= COMFYUI_CPU_MS["/system_stats"] * 0.9
