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
    assert route_key("/api/system_stats") == "GET /system_stats"
    assert route_key("/history/abc") == "GET /history/{id}"
    assert route_key("/api/history/abc") == "GET /history/{id}"
    assert route_key("/view") == "GET /view"
    assert route_key("/api/prompt", "POST") == "POST /prompt"


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
    assert spent - base >= COMFYUI_CPU_MS["GET /system_stats"] * 0.9


async def test_post_prompt_and_a_websocket_connect_cost_what_comfyui_spends(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Charged where a real ComfyUI spends them: on POST /prompt (not only GETs) and on the
    WebSocket upgrade."""
    config = SimConfig.for_data_dir(tmp_path)
    app = create_app(config, exit_fn=lambda code: None)
    client = await aiohttp_client(app)
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}}}
    t0 = time.thread_time()
    for i in range(10):
        async with client.post("/prompt", json={"prompt": graph, "prompt_id": f"p{i}"}) as r:
            await r.read()
    post_ms = 1000 * (time.thread_time() - t0) / 10
    assert post_ms >= COMFYUI_CPU_MS["POST /prompt"] * 0.9
    t0 = time.thread_time()
    for i in range(10):
        ws = await client.ws_connect(f"/ws?clientId=c{i}")
        await ws.close()
    assert 1000 * (time.thread_time() - t0) / 10 >= COMFYUI_CPU_MS["GET /ws"] * 0.9


async def test_node_cpu_spends_the_node_time_as_cpu(tmp_path: Path) -> None:
    """--node-cpu: a node's work is CPU in a worker thread (a CPU-mode ComfyUI), not a wait."""
    from comfyfleet.sim.executor import _NodeRun

    class Run:
        ex = type("Ex", (), {"config": SimConfig.for_data_dir(tmp_path, node_cpu=True)})()
        item = type("Item", (), {"prompt": {}, "extra_data": {}})()
        work_due = None

    node = _NodeRun(Run(), "1", "EmptyImage")  # type: ignore[arg-type]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await node.work(30.0)
    assert time.process_time() - cpu0 >= 0.027
    assert time.perf_counter() - wall0 >= 0.027
    Run.ex.config = SimConfig.for_data_dir(tmp_path)
    cpu0 = time.process_time()
    await _NodeRun(Run(), "1", "EmptyImage").work(30.0)  # type: ignore[arg-type]
    assert time.process_time() - cpu0 < 0.015


async def test_a_prompts_own_bookkeeping_is_absorbed_into_its_nodes_nominal_time(
    tmp_path: Path,
) -> None:
    """Node work waits until the prompt's work so far is due, counted from execution_start:
    time the simulator spends between nodes (frames, PNG files) does not lengthen a prompt
    beyond its nominal time (bench.utilisation measures the fleet's gaps, not the sim's)."""
    import asyncio

    from comfyfleet.sim.costs import burn
    from comfyfleet.sim.executor import _NodeRun

    class Run:
        ex = type("Ex", (), {"config": SimConfig.for_data_dir(tmp_path)})()
        item = type("Item", (), {"prompt": {}, "extra_data": {}})()
        work_due: float | None = None

    run = Run()
    t0 = time.perf_counter()
    run.work_due = asyncio.get_running_loop().time()  # execution_start
    await _NodeRun(run, "1", "EmptyImage").work(40.0)  # type: ignore[arg-type]
    burn(15.0)  # the simulator's own work between two nodes
    await _NodeRun(run, "2", "SaveImage").work(40.0)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    assert 0.079 <= elapsed < 0.092, elapsed
