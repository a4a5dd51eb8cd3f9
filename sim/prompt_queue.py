"""The prompt queue and history, kept in memory like ComfyUI's PromptQueue (lost on restart)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_HISTORY", "PromptQueue", "QueueItem"]

MAX_HISTORY = 10000


@dataclass(frozen=True)
class QueueItem:
    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    @property
    def client_id(self) -> str | None:
        cid = self.extra_data.get("client_id")
        return cid if isinstance(cid, str) else None

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptQueue:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._heap: list[tuple[int | float, int, QueueItem]] = []
        self._seq = itertools.count()
        self._running: dict[str, QueueItem] = {}
        self._history: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()

    # --- queue -----------------------------------------------------------------------------

    @property
    def remaining(self) -> int:
        return len(self._heap) + len(self._running)

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self._heap, (item.number, next(self._seq), item))
        self._wake.set()
        self._on_change()

    async def get(self) -> QueueItem:
        while not self._heap:
            self._wake.clear()
            await self._wake.wait()
        _, _, item = heapq.heappop(self._heap)
        self._running[item.prompt_id] = item
        self._on_change()
        return item

    def task_done(self, item: QueueItem, history_entry: dict[str, Any] | None) -> None:
        self._running.pop(item.prompt_id, None)
        if history_entry is not None:
            if len(self._history) >= MAX_HISTORY:
                self._history.pop(next(iter(self._history)))
            self._history[item.prompt_id] = history_entry
        self._on_change()

    def running(self) -> list[QueueItem]:
        return list(self._running.values())

    def pending(self) -> list[QueueItem]:
        return [item for _, _, item in sorted(self._heap, key=lambda e: (e[0], e[1]))]

    def is_running(self, prompt_id: str) -> bool:
        return prompt_id in self._running

    def delete(self, prompt_ids: Iterable[Any]) -> int:
        wanted = {pid for pid in prompt_ids if isinstance(pid, str)}
        before = len(self._heap)
        self._heap = [e for e in self._heap if e[2].prompt_id not in wanted]
        heapq.heapify(self._heap)
        removed = before - len(self._heap)
        self._on_change()
        return removed

    def clear(self) -> int:
        removed = len(self._heap)
        self._heap = []
        self._on_change()
        return removed

    # --- history ---------------------------------------------------------------------------

    def history_of(self, prompt_id: str) -> dict[str, Any]:
        entry = self._history.get(prompt_id)
        return {} if entry is None else {prompt_id: entry}

    def history(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        if offset < 0 and max_items is not None:
            offset = len(self._history) - max_items
        out: dict[str, Any] = {}
        for i, (key, entry) in enumerate(self._history.items()):
            if i >= offset:
                out[key] = entry
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def delete_history(self, prompt_ids: Iterable[Any]) -> None:
        for pid in prompt_ids:
            if isinstance(pid, str):
                self._history.pop(pid, None)

    def clear_history(self) -> None:
        self._history.clear()
