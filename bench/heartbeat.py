"""3. Heartbeat capacity: most agents at a 5 s heartbeat one coordinator serves, p99 < 50 ms.

Steps up the number of lightweight agents (each registers, then heartbeats every 5 s with its
phase spread evenly) and measures every heartbeat's round trip for `window_s` seconds per step.
The latency is measured in the load generator, which shares the machine with the coordinator.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

from bench import common
from tests.helpers.protocol_agent import ProtocolAgent

INTERVAL_S = 5.0
TARGET_P99_MS = 50.0


async def beat(
    a: ProtocolAgent, phase: float, until: float, lat: list[float], errors: list[str]
) -> None:
    await asyncio.sleep(phase)
    while time.monotonic() < until:
        t0 = time.perf_counter()
        try:
            await a.heartbeat()
            lat.append((time.perf_counter() - t0) * 1000)
        except Exception as exc:  # a refused or failed heartbeat counts against the step
            errors.append(repr(exc))
        await asyncio.sleep(max(0.0, INTERVAL_S - (time.perf_counter() - t0)))


async def step(
    s: Any, url: str, agents: list[ProtocolAgent], window_s: float, coord_pid: int
) -> dict[str, Any]:
    lat: list[float] = []
    errors: list[str] = []
    rng = random.Random(len(agents))
    until = time.monotonic() + window_s
    with common.Sampler(coord_pid) as sampler, common.Sampler(os.getpid()) as me:
        await asyncio.gather(
            *(beat(a, rng.random() * INTERVAL_S, until, lat, errors) for a in agents)
        )
    pct = common.percentiles(lat)
    return {
        "agents": len(agents),
        "heartbeats": len(lat),
        "errors": len(errors),
        **{k: round(v, 1) for k, v in pct.items()},
        "coordinator": sampler.summary(),
        "load_generator": me.summary(),
    }


async def measure(url: str, pid: int, steps: list[int], window_s: float) -> dict[str, Any]:
    results = []
    best = 0
    async with common.session() as s:
        fleet: list[ProtocolAgent] = []
        for n in steps:
            more = common.make_agents(s, url, n - len(fleet), prefix=f"hb{n}")
            await common.gather_limited([a.register() for a in more], 64)
            fleet += more
            res = await step(s, url, fleet, window_s, pid)
            results.append(res)
            ok = res["p99"] < TARGET_P99_MS and res["errors"] == 0
            if not ok:
                break
            best = n
    return {
        "interval_s": INTERVAL_S,
        "window_s": window_s,
        "steps": results,
        "max_agents_p99_under_50ms": best,
        "tested_up_to": steps[-1],
    }


def run(tmp: Path, steps: list[int], window_s: float = 15.0) -> dict[str, Any]:
    coord = common.Coordinator(tmp, ["--heartbeat-interval", str(INTERVAL_S)]).start()
    try:
        return asyncio.run(measure(coord.url, coord.pid, steps, window_s))
    finally:
        coord.stop()


if __name__ == "__main__":
    import sys
    import tempfile

    steps = [int(x) for x in sys.argv[1:]] or [500, 1000, 2000, 4000]
    with tempfile.TemporaryDirectory() as d:
        print(run(Path(d), steps, 10.0))
