"""Named background tasks under one supervisor: one dying stops the daemon, never half alive."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import structlog


class Supervisor:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.log = structlog.get_logger(name)

    def start(self, name: str, fn: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        async def guarded() -> None:
            await fn()

        task = asyncio.create_task(guarded(), name=f"{self.name}:{name}")
        self.tasks[name] = task
        task.add_done_callback(functools.partial(self._done, name))
        return task

    def _done(self, name: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        reason = f"background loop {name} ended" + (f": {exc!r}" if exc else " unexpectedly")
        if exc is not None:
            self.log.error("loop_died", loop=name, error=repr(exc), exc_info=exc)
        else:
            self.log.error("loop_died", loop=name, error="returned")
        if not self.failed.done():
            self.failed.set_result(reason)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
