"""The agent's reports travel together: at most one reports request in flight per agent.

A report (started, events, finish of any job) handed to `Coalescer.send` goes out at once when no
request is in flight (on the event loop's next turn, so reports made in the same turn go
together); otherwise it waits, with every report made meanwhile, for the request in flight to be
answered, and they go in the next one. `send` is one try: it answers the report's own result, or
raises what the whole request met; the caller's retry policy decides what happens next, so each
report keeps its own limit (shared/retry.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec

R = TypeVar("R")
MAX_REPORTS = 256  # protocol.Reports' limit
MAX_BYTES = 2 << 20  # well under the coordinator's body limit (8 MiB by default)


@dataclass(slots=True)
class _Item(Generic[R]):
    body: msgspec.Raw  # the report, encoded once
    future: asyncio.Future[R] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Coalescer(Generic[R]):
    """`post` sends one request: the encoded reports in, one result per report out (its value,
    or the exception that report alone raises); a failure of the whole request raises."""

    def __init__(
        self,
        post: Callable[[list[msgspec.Raw]], Awaitable[list[R | Exception]]],
        fan_out: Callable[[Exception], Exception],
        max_reports: int = MAX_REPORTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.post = post
        self.fan_out = fan_out  # a whole request's failure, as raised to each of its reports
        self.max_reports = max_reports
        self.max_bytes = max_bytes
        self.waiting: deque[_Item[R]] = deque()
        self.sender: asyncio.Task[None] | None = None
        self.sizes: list[int] = []  # reports per request sent (tests, logs)

    async def send(self, body: msgspec.Raw) -> R:
        """One try of one report (already encoded); see the module's doc."""
        item: _Item[R] = _Item(body)
        self.waiting.append(item)
        if self.sender is None:
            self.sender = asyncio.create_task(self._drain())
        return await item.future  # cancelled with the caller: the sender skips it

    def _take(self) -> list[_Item[R]]:
        batch: list[_Item[R]] = []
        size = 0
        while self.waiting and len(batch) < self.max_reports:
            item = self.waiting[0]
            if batch and size + len(item.body) > self.max_bytes:
                break
            self.waiting.popleft()
            if not item.future.done():  # its caller gave up meanwhile
                batch.append(item)
                size += len(item.body)
        return batch

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch = self._take()
                if batch:
                    await self._one(batch)
        finally:
            self.sender = None

    async def _one(self, batch: list[_Item[R]]) -> None:
        self.sizes.append(len(batch))
        try:
            results = await self.post([item.body for item in batch])
            if len(results) != len(batch):
                raise ValueError(f"{len(results)} answers to {len(batch)} reports")
        except asyncio.CancelledError:
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(self.fan_out(exc))
            return
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
