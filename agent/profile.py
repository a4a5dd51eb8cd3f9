"""Per-node profile of a finished prompt, and the VRAM peak sampled while it ran."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from comfyfleet.shared import protocol as p


def profile_of(
    timings: Mapping[str, float], cached: list[str], graph: Mapping[str, Any]
) -> list[p.NodeTiming]:
    """Nodes ComfyUI served from cache first (0 ms), then executed nodes with their time, in the
    order the graph lists them."""
    out: list[p.NodeTiming] = []

    def node_type(node: str) -> str | None:
        entry = graph.get(node)
        ct = entry.get("class_type") if isinstance(entry, Mapping) else None
        return ct if isinstance(ct, str) else None

    seen: set[str] = set()
    for node in cached:
        if node not in seen:
            seen.add(node)
            out.append(p.NodeTiming(node=node, node_type=node_type(node), cached=True))
    for node, seconds in timings.items():
        if node not in seen:
            seen.add(node)
            out.append(
                p.NodeTiming(
                    node=node, node_type=node_type(node), ms=round(max(0.0, seconds) * 1000, 3)
                )
            )
    return out


def comfyui_held_mb(stats: Mapping[str, Any]) -> int:
    """VRAM the ComfyUI process holds (torch's reserved pool) on its first CUDA device."""
    for dev in stats.get("devices", []):
        if isinstance(dev, dict) and dev.get("type") == "cuda":
            held = dev.get("torch_vram_total")
            if isinstance(held, int | float) and not isinstance(held, bool) and held > 0:
                return int(held) // (1 << 20)
            return 0
    return 0


class VramSampler:
    """Polls `read_mb` (VRAM the ComfyUI holds) every `interval_s` while running; keeps the peak.
    Errors of one sample are ignored: the peak is best effort."""

    def __init__(self, read_mb: Callable[[], Awaitable[int | None]], interval_s: float) -> None:
        self._read = read_mb
        self._interval = interval_s
        self.peak_mb: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="vram-sampler")

    async def _sample(self) -> None:
        try:
            value = await self._read()
        except Exception:  # noqa: BLE001 - a failed sample must not fail the job
            return
        if value is not None and (self.peak_mb is None or value > self.peak_mb):
            self.peak_mb = value

    async def _loop(self) -> None:
        while True:
            await self._sample()
            await asyncio.sleep(self._interval)

    async def stop(self) -> int | None:
        """Stop sampling; one last sample; the peak seen."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._sample()
        return self.peak_mb
