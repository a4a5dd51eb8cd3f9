"""Receiving one output chunk as it streams in: the bytes go to the part file and its running
sha256 in a worker thread while the event loop reads the next ones (one pass, no gathered copy
of the body, no hashing on the event loop: what is already on disk is hashed in a thread too)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import StreamReader, web

from comfyfleet.coordinator.api.body import SlowClient, TooLarge
from comfyfleet.coordinator.errors import StoreUnavailable
from comfyfleet.coordinator.outputs import ChunkSink
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.shared import protocol as p
from comfyfleet.shared.errors import InvalidInput

Key = tuple[str, int, str]


class UploadLocks:
    """One chunk at a time per output file: a retried PUT waits for the one still streaming."""

    def __init__(self) -> None:
        self.locks: dict[Key, tuple[asyncio.Lock, int]] = {}  # lock, requests holding/waiting

    def hold(self, key: Key) -> _Held:
        return _Held(self, key)


class _Held:
    def __init__(self, owner: UploadLocks, key: Key) -> None:
        self.owner, self.key = owner, key
        lock, users = owner.locks.get(key, (asyncio.Lock(), 0))
        owner.locks[key] = (lock, users + 1)
        self.lock = lock

    async def __aenter__(self) -> None:
        try:
            await self.lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        self.lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self.owner.locks[self.key]
        if users <= 1:
            del self.owner.locks[self.key]  # nobody else waits: the entry goes (bounded map)
        else:
            self.owner.locks[self.key] = (lock, users - 1)


UPLOAD_LOCKS = web.AppKey("upload_locks", UploadLocks)


async def receive_chunk(
    coordinator: Coordinator,
    locks: UploadLocks,
    content: StreamReader,
    length: int | None,
    limit: int,
    agent_id: str,
    job_id: str,
    attempt: int,
    name: str,
    offset: int,
    size: int,
    sha256: str,
    read_timeout_s: float,
) -> p.UploadState:
    if length is not None and length > limit:
        raise TooLarge(f"body of {length} bytes exceeds {limit} bytes", "body")
    async with locks.hold((job_id, attempt, name)):
        # whole-file hashing (a stored file, a part file after a restart) off the event loop
        await asyncio.to_thread(coordinator.outputs.warm, job_id, attempt, name)
        sink = coordinator.open_upload(
            agent_id, job_id, attempt, name, offset, size, sha256, length
        )
        if isinstance(sink, p.UploadState):
            return sink
        try:
            async with asyncio.timeout(read_timeout_s):  # a stalled sender frees the file's lock
                got = await _pump(content, sink, limit)
        except TimeoutError:
            sink.abort()
            raise SlowClient(f"chunk not received within {read_timeout_s:g} s", "body") from None
        except BaseException:
            sink.abort()
            raise
        if length is not None and got != length:
            sink.abort()
            raise InvalidInput("body", f"body ended after {got} of {length} bytes")
        job_id, attempt, name = sink.key
        try:
            result = await asyncio.to_thread(sink.close)  # the file's fsync and rename
        except StoreUnavailable:  # its folder went with an attempt gone stale meanwhile: 409
            coordinator.fenced_after_write(agent_id, job_id, attempt)
            raise
        coordinator.fenced_after_write(agent_id, job_id, attempt)
        return p.UploadState(
            name=name, received=result.received, size=sink.size, complete=result.complete
        )


async def _pump(content: StreamReader, sink: ChunkSink, limit: int) -> int:
    """Read the body; while one batch is written and hashed in a thread, gather the next."""
    got = 0
    batch: list[bytes] = []
    writing: asyncio.Future[None] | None = None
    try:
        while True:
            piece = await content.readany()
            if piece:
                got += len(piece)
                if got > limit:
                    raise TooLarge(f"body exceeds {limit} bytes", "body")
                batch.append(piece)
            if writing is not None and (writing.done() or not piece):
                await writing  # raises what the write raised
                writing = None
            if batch and writing is None:
                writing = asyncio.ensure_future(asyncio.to_thread(sink.write, batch))
                batch = []
            if not piece and writing is None and not batch:
                return got
    finally:
        if writing is not None and not writing.done():
            await asyncio.wait([writing])  # never leave a thread writing into a closed file
