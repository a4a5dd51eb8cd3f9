"""The agent's side of the protocol: msgpack over HTTP, retries on connection trouble."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import structlog

from comfyfleet.shared import codec
from comfyfleet.shared import protocol as p

log = structlog.get_logger("agent.coordinator")
T = TypeVar("T")


class AgentError(Exception):
    """Base of every exception raised by comfyfleet.agent."""


class CoordinatorUnavailable(AgentError):
    pass


class Refused(AgentError):
    """The coordinator answered 4xx: `status` and its error body."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {error.get('message', error)}")
        self.status = status
        self.error = error

    @property
    def stale(self) -> bool:
        return self.status == 409 and self.error.get("code") == "stale_attempt"


class CoordinatorClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        agent_id: str,
        timeout_s: float = 60.0,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.session = session
        self.base = base_url.rstrip("/") + "/agent/v1"
        self.agent_id = agent_id
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5)
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.ssl: ssl.SSLContext | bool = ssl_context or True

    async def call(
        self,
        path: str,
        msg: Any,
        reply: type[T],
        *,
        retries: int = 3,
        http_timeout: aiohttp.ClientTimeout | None = None,
    ) -> T:
        body = codec.encode(msg)
        delay = 0.2
        for attempt in range(retries + 1):
            try:
                async with self.session.post(
                    f"{self.base}/{path}",
                    data=body,
                    timeout=http_timeout or self.timeout,
                    headers={"Content-Type": codec.MSGPACK, "Accept": codec.MSGPACK, **self.auth},
                    ssl=self.ssl,
                ) as resp:
                    data = await resp.read()
                    return self._answer(resp.status, resp.content_type, data, reply)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if attempt == retries:
                    raise CoordinatorUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise CoordinatorUnavailable(path)

    @staticmethod
    def _answer(status: int, ctype: str, data: bytes, reply: type[T]) -> T:
        if status == 200:
            return codec.decode(
                data, reply, codec.MSGPACK if ctype == codec.MSGPACK else codec.JSON
            )
        try:
            decoded = (
                msgspec.msgpack.decode(data)
                if ctype == codec.MSGPACK
                else msgspec.json.decode(data)
            )
            error = decoded.get("error", {}) if isinstance(decoded, dict) else {}
        except msgspec.DecodeError:
            error = {"message": data[:200].decode(errors="replace")}
        if 400 <= status < 500:
            raise Refused(status, error)
        raise CoordinatorUnavailable(f"HTTP {status}: {error.get('message', '')}")

    async def register(self, msg: p.Register) -> p.RegisterReply:
        return await self.call("register", msg, p.RegisterReply)

    async def heartbeat(self, msg: p.Heartbeat) -> p.HeartbeatReply:
        return await self.call("heartbeat", msg, p.HeartbeatReply, retries=0)

    async def lease(self, free: dict[str, int], wait_s: float) -> p.LeaseReply:
        msg = p.LeaseRequest(agent_id=self.agent_id, free=free, wait_s=wait_s)
        timeout = aiohttp.ClientTimeout(total=wait_s + 15, sock_connect=5)
        return await self.call("lease", msg, p.LeaseReply, retries=0, http_timeout=timeout)

    async def started(self, job: p.Assignment, prompt_id: str, seeds: dict[str, int]) -> p.Ack:
        return await self.call(
            "started",
            p.Started(
                agent_id=self.agent_id,
                job_id=job.job_id,
                attempt=job.attempt,
                prompt_id=prompt_id,
                seeds=seeds,
            ),
            p.Ack,
        )

    async def events(self, job: p.JobRef, events: list[p.JobEvent]) -> p.Ack:
        return await self.call(
            "events",
            p.Events(agent_id=self.agent_id, job_id=job.job_id, attempt=job.attempt, events=events),
            p.Ack,
            retries=1,
        )

    async def finish(self, msg: p.Finish) -> p.Ack:
        return await self.call("finish", msg, p.Ack, retries=8)

    async def _upload_call(
        self, method: str, url: str, params: dict[str, str], data: bytes | None = None
    ) -> p.UploadState:
        """One output request: PUT a chunk, or GET how much of the file the coordinator holds."""
        async with self.session.request(
            method,
            url,
            params=params,
            data=data,
            timeout=self.timeout,
            headers={"Accept": codec.MSGPACK, **self.auth},
            ssl=self.ssl,
        ) as resp:
            return self._answer(resp.status, resp.content_type, await resp.read(), p.UploadState)

    async def upload(
        self, job: p.JobRef, name: str, path: Path, size: int, sha256: str, chunk_size: int
    ) -> None:
        """Send one output file in chunks, resuming from what the coordinator already holds."""
        url = f"{self.base}/jobs/{job.job_id}/outputs/{name}"
        params = {"agent_id": self.agent_id, "attempt": str(job.attempt), "size": str(size)}
        offset = 0
        failures = 0
        ahead: tuple[int, asyncio.Future[bytes]] | None = None
        try:
            while True:
                try:
                    if failures:  # after trouble, ask where to resume
                        state = await self._upload_call("GET", url, params)
                        offset = state.received
                        if state.complete:
                            return
                    if ahead is not None and ahead[0] == offset:
                        data = await ahead[1]
                    else:
                        _drop(ahead)
                        data = await asyncio.to_thread(_read_at, path, offset, chunk_size)
                    ahead = None
                    if offset + len(data) < size:  # read the next chunk while this one travels
                        ahead = (
                            offset + len(data),
                            asyncio.ensure_future(
                                asyncio.to_thread(_read_at, path, offset + len(data), chunk_size)
                            ),
                        )
                    state = await self._upload_call(
                        "PUT", url, {**params, "offset": str(offset), "sha256": sha256}, data
                    )
                    if state.complete:
                        return
                    offset = state.received
                    failures = 0
                except (aiohttp.ClientConnectionError, TimeoutError, CoordinatorUnavailable) as exc:
                    failures += 1
                    if failures > 8:
                        raise CoordinatorUnavailable(f"upload {name}: {exc}") from exc
                    await asyncio.sleep(min(0.2 * 2**failures, 5.0))
                except Refused as exc:
                    if exc.status == 409 and exc.error.get("field") == "offset":
                        failures += 1  # out of step: ask where to resume
                        continue
                    raise
        finally:
            _drop(ahead)


def _drop(ahead: tuple[int, asyncio.Future[bytes]] | None) -> None:
    """Let go of a read-ahead nobody will use (its error, if any, is not worth a warning)."""
    if ahead is not None:
        if ahead[1].done() and not ahead[1].cancelled():
            ahead[1].exception()
        ahead[1].cancel()


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
