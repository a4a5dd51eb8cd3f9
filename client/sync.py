"""The synchronous client: the async client run on a private event loop in its own thread.

The thread makes it usable from anywhere, also from code that runs an event loop of its own
(a notebook, a test driving a browser); `AsyncClient` is the better fit inside async code."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from comfyfleet.client.aio import AsyncClient
from comfyfleet.client.models import Agent, Job, JobList, StreamEvent

T = TypeVar("T")


class Client:
    """`with Client(url) as c: job = c.wait(c.submit(workflow).id)`."""

    def __init__(
        self, url: str | None = None, *, api_key: str | None = None, timeout_s: float = 30.0
    ) -> None:
        self._aio = AsyncClient(url, api_key=api_key, timeout_s=timeout_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="comfyfleet-client", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return self._aio.url

    def _run(self, coro: Awaitable[T]) -> T:
        async def call() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._aio.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def submit(self, workflow: dict[str, Any], **kw: Any) -> Job:
        return self._run(self._aio.submit(workflow, **kw))

    def get(self, job_id: str) -> Job:
        return self._run(self._aio.get(job_id))

    def jobs(
        self, status: str | list[str] | None = None, limit: int = 50, cursor: str | None = None
    ) -> JobList:
        return self._run(self._aio.jobs(status, limit, cursor))

    def cancel(self, job_id: str) -> Job:
        return self._run(self._aio.cancel(job_id))

    def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        return self._run(self._aio.wait(job_id, timeout_s))

    def events(
        self, job_id: str | None = None, *, last_event_id: int | None = None, reconnect: bool = True
    ) -> Iterator[StreamEvent]:
        stream = self._aio.events(job_id, last_event_id=last_event_id, reconnect=reconnect)
        try:
            while True:
                try:
                    yield self._run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(stream.aclose())

    def download(self, url: str, target: str | os.PathLike[str]) -> Path:
        return self._run(self._aio.download(url, target))

    def fetch(self, url: str) -> bytes:
        return self._run(self._aio.fetch(url))

    def download_outputs(self, job_id: str, directory: str | os.PathLike[str]) -> list[Path]:
        return self._run(self._aio.download_outputs(job_id, directory))

    def agents(self) -> list[Agent]:
        return self._run(self._aio.agents())

    def agent(self, agent_id: str) -> Agent:
        return self._run(self._aio.agent(agent_id))

    def drain(self, agent_id: str) -> Agent:
        return self._run(self._aio.drain(agent_id))

    def health(self) -> dict[str, Any]:
        return self._run(self._aio.health())
