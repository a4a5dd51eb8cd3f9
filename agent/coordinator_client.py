"""The agent's side of the protocol: msgpack over HTTP, retries on connection trouble.

The agent may know several coordinators (`Endpoints`): a request that fails moves on to the next
one, a follower's redirect (307) moves to the leader, and retries wait a jittered backoff.
"""

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
from comfyfleet.shared.endpoints import Endpoints, backoff_s
from comfyfleet.shared.errors import InvalidInput

log = structlog.get_logger("agent.coordinator")
T = TypeVar("T")
MAX_REDIRECTS = 3
# With several coordinators, one that accepts connections but does not answer (a paused process,
# a dead host) must not hold the agent for the full request timeout: an answer must start within
# READ_S, a heartbeat must be answered within max(HEARTBEAT_MIN_S, 2 intervals), and a heartbeat
# that failed ends the lease long-poll waiting on the same coordinator.
READ_S = 15.0
HEARTBEAT_MIN_S = 2.0


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
        self.endpoints = Endpoints(base_url)  # one URL, or several (comma-separated)
        self.agent_id = agent_id
        self.several = len(self.endpoints.urls) > 1
        read = READ_S if self.several else None
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=5, sock_read=read)
        self.heartbeat_timeout: aiohttp.ClientTimeout | None = None
        self.polling: tuple[str, asyncio.Future[p.LeaseReply]] | None = None
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.ssl: ssl.SSLContext | bool = ssl_context or True

    @property
    def base(self) -> str:
        return self.endpoints.current + "/agent/v1"

    async def send(
        self,
        method: str,
        path: str,
        reply: type[T],
        *,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
        content_type: str | None = None,
        http_timeout: aiohttp.ClientTimeout | None = None,
    ) -> T:
        """One request to the coordinator that leads: a follower's redirect is followed (the
        leader is then used from now on); a connection failure moves on to the next URL and
        raises CoordinatorUnavailable, as does a 5xx."""
        headers = {"Accept": codec.MSGPACK, **self.auth}
        if content_type:
            headers["Content-Type"] = content_type
        for _ in range(MAX_REDIRECTS + 1):
            url = f"{self.base}/{path}"
            try:
                async with self.session.request(
                    method,
                    url,
                    data=data,
                    params=params,
                    timeout=http_timeout or self.timeout,
                    headers=headers,
                    ssl=self.ssl,
                    allow_redirects=False,
                ) as resp:
                    body = await resp.read()
                    location = resp.headers.get("Location")
                    if resp.status in (307, 308) and location:
                        try:
                            self.endpoints.redirected(location)
                        except InvalidInput as exc:
                            raise CoordinatorUnavailable(f"{path}: bad redirect: {exc}") from None
                        log.info("coordinator_redirect", leader=self.endpoints.current)
                        continue
                    return self._answer(resp.status, resp.content_type, body, reply)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                failed = self.endpoints.current
                self.endpoints.failed()
                raise CoordinatorUnavailable(
                    f"{path} at {failed}: {type(exc).__name__}: {exc}"
                ) from exc
        raise CoordinatorUnavailable(f"{path}: more than {MAX_REDIRECTS} redirects")

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
        for attempt in range(retries + 1):
            try:
                return await self.send(
                    "POST",
                    path,
                    reply,
                    data=body,
                    content_type=codec.MSGPACK,
                    http_timeout=http_timeout,
                )
            except CoordinatorUnavailable:
                if attempt == retries:
                    raise
                await asyncio.sleep(backoff_s(attempt + 1))
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
        if status >= 500:
            raise CoordinatorUnavailable(f"HTTP {status}: {error.get('message', '')}")
        raise Refused(status, {"message": f"unexpected HTTP {status}", **error})

    async def register(self, msg: p.Register) -> p.RegisterReply:
        reply = await self.call("register", msg, p.RegisterReply)
        if self.several:
            total = max(HEARTBEAT_MIN_S, 2 * reply.heartbeat_interval_s)
            self.heartbeat_timeout = aiohttp.ClientTimeout(total=total, sock_connect=5)
        return reply

    async def heartbeat(self, msg: p.Heartbeat) -> p.HeartbeatReply:
        url = self.endpoints.current
        try:
            return await self.call(
                "heartbeat", msg, p.HeartbeatReply, retries=0, http_timeout=self.heartbeat_timeout
            )
        except CoordinatorUnavailable:
            polling = self.polling
            if polling is not None and polling[0] == url and not polling[1].done():
                polling[1].cancel()  # the long-poll waits on a coordinator that does not answer
            raise

    async def lease(self, free: dict[str, int], wait_s: float) -> p.LeaseReply:
        msg = p.LeaseRequest(agent_id=self.agent_id, free=free, wait_s=wait_s)
        timeout = aiohttp.ClientTimeout(total=wait_s + 15, sock_connect=5)
        call = asyncio.ensure_future(
            self.call("lease", msg, p.LeaseReply, retries=0, http_timeout=timeout)
        )
        self.polling = (self.endpoints.current, call)
        try:
            return await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if call.cancelled() and task is not None and not task.cancelling():
                raise CoordinatorUnavailable("lease: its coordinator stopped answering") from None
            raise
        finally:
            self.polling = None
            call.cancel()

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
        self, method: str, path: str, params: dict[str, str], data: bytes | None = None
    ) -> p.UploadState:
        """One output request: PUT a chunk, or GET how much of the file the coordinator holds."""
        return await self.send(method, path, p.UploadState, data=data, params=params)

    async def upload(
        self, job: p.JobRef, name: str, path: Path, size: int, sha256: str, chunk_size: int
    ) -> None:
        """Send one output file in chunks, resuming from what the coordinator already holds."""
        url = f"jobs/{job.job_id}/outputs/{name}"
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
