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


class VramWatch:
    """The VRAM one ComfyUI instance holds, read by one loop shared by every job running there.

    `open(key)` starts a job's window and `close(key)` ends it with the peak seen meanwhile (the
    reading in force when the window opened counts: a job shorter than the interval still gets
    one). The loop reads every `interval_s` while any window is open and not at all otherwise, so
    ComfyUI answers at most one reading per interval whatever the number of jobs (its
    /system_stats costs it ~2.5 ms of CPU; bench/notes.md). `read_mb` returns None when there is
    nothing to read now (a CPU-only instance; it must answer without I/O then): the loop ends
    until the next window opens. A failed reading is skipped.
    """

    def __init__(self, read_mb: Callable[[], Awaitable[int | None]], interval_s: float) -> None:
        self._read = read_mb
        self._interval = interval_s
        self.last_mb: int | None = None
        self.readings = 0
        self._windows: dict[object, int | None] = {}
        self._task: asyncio.Task[None] | None = None

    def open(self, key: object) -> None:
        self._windows[key] = self.last_mb
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="vram-watch")

    def close(self, key: object) -> int | None:
        """The window's peak. The loop ends by itself at its next turn if no window is open
        (not at once: the next job's window, a moment later, needs no extra reading)."""
        return self._windows.pop(key, None)

    async def _sample(self) -> bool:
        """One reading; False when there is nothing to read."""
        try:
            value = await self._read()
        except Exception:  # noqa: BLE001 - a failed reading must not fail a job
            return True
        if value is None:
            return False
        self.readings += 1
        self.last_mb = value
        for key, peak in self._windows.items():
            if peak is None or value > peak:
                self._windows[key] = value
        return True

    async def _loop(self) -> None:
        while True:
            if not self._windows or not await self._sample():
                return
            await asyncio.sleep(self._interval)
