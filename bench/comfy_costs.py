"""What each request costs a ComfyUI in CPU, measured: the numbers the simulator's cost model uses.

    COMFY_URL=http://127.0.0.1:8188 [COMFY_OUTPUT_DIR=...] .venv/bin/python -m bench.comfy_costs

For each kind of request, `n` of them one after another; the ComfyUI process's CPU time
(psutil, user + system; the process found by its port or COMFY_PID) over them, less what it spends
idle over the same time, divided by `n`. With COMFY_OUTPUT_DIR, also one direct prompt
(EmptyImage -> ImageInvert -> SaveImage) with the output folder holding 0 and then `files` more
files (SaveImage lists the folder on every save): the CPU per prompt at both sizes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench.comfy_direct import CpuMeter, comfy_pid, run_direct


async def _per_request(
    s: aiohttp.ClientSession, url: str, meter: CpuMeter, method: str, path: str, n: int
) -> tuple[float, float]:
    """(CPU seconds of ComfyUI, wall seconds) over `n` requests one after another."""
    body: dict[str, Any] | None = {} if method == "POST" else None
    meter.start()
    t0 = time.perf_counter()
    for _ in range(n):
        async with s.request(method, f"{url}{path}", json=body) as r:
            await r.read()
    wall = time.perf_counter() - t0
    cpu = meter.stop() or 0.0
    return cpu, wall


async def measure(url: str, n: int, files: int, output_dir: Path | None) -> dict[str, Any]:
    meter = CpuMeter(comfy_pid(url))
    if meter.proc is None:
        raise SystemExit("ComfyUI's process not found (set COMFY_PID)")
    meter.start()
    await asyncio.sleep(3)
    idle_rate = (meter.stop() or 0.0) / 3
    out: dict[str, Any] = {"idle_cpu_ms_per_s": round(1000 * idle_rate, 2)}
    async with aiohttp.ClientSession() as s:
        # a finished prompt for /history/{id} and /view
        await run_direct(url, [int(time.time()) % 10**6], "cost_probe")
        pid = uuid.uuid4().hex
        async with s.get(f"{url}/history", params={"max_items": "1"}) as r:
            last = next(iter((await r.json()).keys()), pid)
        async with s.get(f"{url}/history/{last}") as r:
            entry = (await r.json()).get(last, {})
        image = next(
            (img for o in entry.get("outputs", {}).values() for img in o.get("images", [])), None
        )
        routes = [
            ("GET", "/system_stats"),
            ("GET", "/queue"),
            ("GET", "/prompt"),
            ("GET", f"/history/{last}"),
            ("GET", "/features"),
            ("GET", "/object_info"),
        ]
        if image:
            q = "&".join(f"{k}={image.get(k, '')}" for k in ("filename", "subfolder", "type"))
            routes.append(("GET", f"/view?{q}"))
        for method, path in routes:
            count = max(3, n // 20) if path == "/object_info" else n
            cpu, wall = await _per_request(s, url, meter, method, path, count)
            key = path.split("?")[0].replace(last, "{id}")
            out[f"{method} {key}"] = round(1000 * max(0.0, cpu - idle_rate * wall) / count, 3)
    if output_dir is not None:
        out["prompt_cpu_ms"] = await _prompt_cost(url, meter, output_dir, files)
    return out


def _fill(output_dir: Path, stem: str, count: int) -> None:
    """`count` empty files in the folder SaveImage lists (the output root); 0 removes them."""
    if count:
        for i in range(count):
            (output_dir / f"{stem}_{i:05d}_.png").touch()
    else:
        for p in output_dir.glob(f"{stem}_*"):
            p.unlink()


async def _prompt_cost(url: str, meter: CpuMeter, output_dir: Path, files: int) -> dict[str, Any]:
    """CPU per prompt with the output folder as it is, then with `files` more files in it."""
    res: dict[str, Any] = {}
    stem = f"cost_filler_{uuid.uuid4().hex[:6]}"
    jobs = 50
    tag = int(time.time()) % 10**6 * 100
    try:
        for extra in (0, files):
            await asyncio.to_thread(_fill, output_dir, stem, extra)
            meter.start()
            await run_direct(url, list(range(tag, tag + jobs)), "cost_prompt", output_dir)
            tag += jobs
            res[f"{extra}_files"] = round(1000 * (meter.stop() or 0.0) / jobs, 2)
    finally:
        await asyncio.to_thread(_fill, output_dir, stem, 0)
    return res


if __name__ == "__main__":
    import sys

    url = os.environ.get("COMFY_URL", "http://127.0.0.1:8188")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    files = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    out_dir = os.environ.get("COMFY_OUTPUT_DIR")
    result = asyncio.run(measure(url, n, files, Path(out_dir) if out_dir else None))
    print(json.dumps(result, indent=1))
