"""The agent's side of the protocol: msgpack over HTTP, every call under the one retry policy
(shared/retry.py) with the limit its call site needs.

The agent may know several coordinators of one store (`Endpoints`): a request that gets no
answer moves on to the next URL, a follower's redirect (307) moves to the leader.

Reports (started, events, finish) travel together (`coalesce.Coalescer`, POST reports): while one
request is in flight the next reports wait and go in one request. Each keeps its own retry policy
and errors as if it went alone. A coordinator without the reports route (404/405: an older one)
gets them one by one on their own routes from then on.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import structlog

from comfyfleet.agent.coalesce import Coalescer
from comfyfleet.shared import codec
from comfyfleet.shared import protocol as p
from comfyfleet.shared.endpoints import Endpoints
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.retry import ONCE, RetryPolicy, Transient, retry_after_s, retryable_status

log = structlog.get_logger("agent.coordinator")
T = TypeVar("T")

# How long each call keeps trying through connection errors, timeouts, 408, 429 and 5xx.
REGISTER = RetryPolicy(deadline_s=30.0)  # register_until_done goes on with a fresh message
STARTED = RetryPolicy(deadline_s=30.0)
EVENTS = RetryPolicy(attempts=2, wait_max_s=1.0)  # progress is best effort
REPORT = RetryPolicy()  # outputs and finish: until the coordinator answers, however long
OFFSET_CONFLICTS = 8  # an upload out of step this many times running gives up
MAX_REDIRECTS = 3
# With several coordinators, one that accepts connections but does not answer (a paused process,
# a dead host) must not hold the agent for the full request timeout: an answer must start within
# READ_S, a heartbeat must be answered within max(HEARTBEAT_MIN_S, 2 intervals), and a heartbeat
# that failed ends the lease long-poll waiting on the same coordinator.
READ_S = 15.0
HEARTBEAT_MIN_S = 2.0


class AgentError(Exception):
    """Base of every exception raised by comfyfleet.agent."""


class CoordinatorUnavailable(AgentError, Transient):
    """No usable answer: no connection, a timeout, or a status in `status` (408, 429, 5xx)."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after


class Refused(AgentError):
    """The coordinator answered 4xx (not 408 or 429): `status` and its error body."""

    def __init__(self, status: int, error: dict[str, Any], *, of_batch: bool = False) -> None:
        super().__init__(f"HTTP {status}: {error.get('message', error)}")
        self.status = status
        self.error = error
        self.of_batch = of_batch  # the whole reports request was refused, not this report

    @property
    def stale(self) -> bool:
        return self.status == 409 and self.error.get("code") == "stale_attempt"


class _Reports(msgspec.Struct, frozen=True, kw_only=True):
    """protocol.Reports with each report already encoded (as the coalescer holds them)."""

    agent_id: str
    reports: list[msgspec.Raw]


def _ack_of(item: p.ReportAck) -> p.Ack | Exception:
    """One report's answer in a batch: its Ack, or the Refused it would have met alone."""
    if item.error is not None:
        e = item.error
        return Refused(e.status, {"code": e.code, "message": e.message, "field": e.field})
    if item.ack is None:
        return CoordinatorUnavailable("reports: an answer with neither ack nor error")
    return item.ack


def _for_each(exc: Exception) -> Exception:
    """What a failed reports request raises to each report in it (its own copy)."""
    if isinstance(exc, Refused):
        return Refused(exc.status, exc.error, of_batch=True)
    if isinstance(exc, CoordinatorUnavailable):
        return CoordinatorUnavailable(str(exc), exc.status, exc.retry_after_s)
    return CoordinatorUnavailable(f"reports: {type(exc).__name__}: {exc}")


def answer(status: int, ctype: str, data: bytes, reply: type[T], retry_after: str | None) -> T:
    """The reply of a 200; CoordinatorUnavailable for what may be retried; Refused for a 4xx."""
    if status == 200:
        return codec.decode(data, reply, codec.MSGPACK if ctype == codec.MSGPACK else codec.JSON)
    try:
        decoded = (
            msgspec.msgpack.decode(data) if ctype == codec.MSGPACK else msgspec.json.decode(data)
        )
        error = decoded.get("error", {}) if isinstance(decoded, dict) else {}
    except msgspec.DecodeError:
        error = {"message": data[:200].decode(errors="replace")}
    if not isinstance(error, dict):
        error = {"message": str(error)}
    if retryable_status(status) or not 400 <= status < 500:
        raise CoordinatorUnavailable(
            f"HTTP {status}: {error.get('message', '')}",
            status,
            retry_after_s(retry_after, time.time()),
        )
    raise Refused(status, error)


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
        self.direct_uploads = False  # outputs go to object storage (the coordinator says so)
        self.batches = True  # until the coordinator shows it has no reports route
        self.coalescer: Coalescer[p.Ack] = Coalescer(self._post_reports, _for_each)

    @property
    def base(self) -> str:
        return self.endpoints.current + "/agent/v1"

    async def _request(
        self,
        method: str,
        path: str,
        reply: type[T],
        *,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
        http_timeout: aiohttp.ClientTimeout | None = None,
    ) -> T:
        """One HTTP request to `path` under the agent API of the coordinator in use, no retry:
        a follower's redirect is followed (the leader is used from now on); a transport failure
        moves on to the next coordinator and becomes CoordinatorUnavailable."""
        headers = {"Accept": codec.MSGPACK, **self.auth}
        if content_type:
            headers["Content-Type"] = content_type
        for _ in range(MAX_REDIRECTS + 1):
            url = f"{self.base}/{path}"
            try:
                async with self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    timeout=http_timeout or self.timeout,
                    headers=headers,
                    ssl=self.ssl,
                    allow_redirects=False,
                ) as resp:
                    body = await resp.read()
                    location = resp.headers.get("Location")
                    if resp.status in (307, 308) and location:
                        self._redirected(location, path)
                        continue
                    return answer(
                        resp.status, resp.content_type, body, reply, resp.headers.get("Retry-After")
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.endpoints.failed()
                raise CoordinatorUnavailable(
                    f"{method} {url}: {type(exc).__name__}: {exc}"
                ) from exc
        raise CoordinatorUnavailable(f"{method} {path}: more than {MAX_REDIRECTS} redirects")

    def _redirected(self, location: str, path: str) -> None:
        try:
            self.endpoints.redirected(location)
        except InvalidInput as exc:
            raise CoordinatorUnavailable(f"{path}: redirected to {exc.message}") from None
        log.info("coordinator_redirect", leader=self.endpoints.current)

    async def call(
        self,
        path: str,
        msg: Any,
        reply: type[T],
        policy: RetryPolicy,
        http_timeout: aiohttp.ClientTimeout | None = None,
    ) -> T:
        body = codec.encode(msg)
        return await policy.call(
            lambda: self._request(
                "POST",
                path,
                reply,
                data=body,
                content_type=codec.MSGPACK,
                http_timeout=http_timeout,
            ),
            path,
        )

    async def register(self, msg: p.Register) -> p.RegisterReply:
        reply = await self.call("register", msg, p.RegisterReply, REGISTER)
        if self.several:
            total = max(HEARTBEAT_MIN_S, 2 * reply.heartbeat_interval_s)
            self.heartbeat_timeout = aiohttp.ClientTimeout(total=total, sock_connect=5)
        return reply

    async def heartbeat(self, msg: p.Heartbeat) -> p.HeartbeatReply:
        url = self.endpoints.current
        try:
            return await self.call("heartbeat", msg, p.HeartbeatReply, ONCE, self.heartbeat_timeout)
        except CoordinatorUnavailable:
            polling = self.polling
            if polling is not None and polling[0] == url and not polling[1].done():
                polling[1].cancel()  # the long-poll waits on a coordinator that does not answer
            raise

    async def lease(
        self, free: dict[str, int], wait_s: float, finishing: list[p.JobRef] | None = None
    ) -> p.LeaseReply:
        msg = p.LeaseRequest(
            agent_id=self.agent_id, free=free, wait_s=wait_s, finishing=finishing or []
        )
        timeout = aiohttp.ClientTimeout(total=wait_s + 15, sock_connect=5)
        call = asyncio.ensure_future(self.call("lease", msg, p.LeaseReply, ONCE, timeout))
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
        msg = p.Started(
            agent_id=self.agent_id,
            job_id=job.job_id,
            attempt=job.attempt,
            prompt_id=prompt_id,
            seeds=seeds,
        )
        return await self._report("started", msg, p.Report(started=msg), STARTED)

    async def events(self, job: p.JobRef, events: list[p.JobEvent]) -> p.Ack:
        msg = p.Events(
            agent_id=self.agent_id, job_id=job.job_id, attempt=job.attempt, events=events
        )
        return await self._report("events", msg, p.Report(events=msg), EVENTS)

    async def finish(self, msg: p.Finish) -> p.Ack:
        return await self._report("finish", msg, p.Report(finish=msg), REPORT)

    async def _report(self, path: str, msg: Any, report: p.Report, policy: RetryPolicy) -> p.Ack:
        """Send one report under `policy`: with the others in flight (POST reports), or alone
        on its own route once the coordinator has shown it takes no batches."""
        together = msgspec.Raw(codec.encode(report))

        async def once() -> p.Ack:
            if self.batches:
                try:
                    return await self.coalescer.send(together)
                except Refused as exc:
                    if not (exc.of_batch and exc.status in (404, 405)):
                        raise
                    if self.batches:
                        self.batches = False
                        log.info("coordinator_takes_reports_one_by_one", status=exc.status)
            return await self._request(
                "POST", path, p.Ack, data=codec.encode(msg), content_type=codec.MSGPACK
            )

        return await policy.call(once, path)

    async def _post_reports(self, bodies: list[msgspec.Raw]) -> list[p.Ack | Exception]:
        data = codec.encode(_Reports(agent_id=self.agent_id, reports=bodies))
        reply = await self._request(
            "POST", "reports", p.ReportsReply, data=data, content_type=codec.MSGPACK
        )
        return [_ack_of(item) for item in reply.acks]

    async def upload(
        self, job: p.JobRef, name: str, path: Path, size: int, sha256: str, chunk_size: int
    ) -> None:
        """Send one output file in chunks, resuming from what the coordinator already holds;
        retries (REPORT) until the coordinator has it all, however long it is unavailable."""
        if self.direct_uploads:
            from comfyfleet.agent.direct_upload import upload_direct

            return await upload_direct(self, job, name, path, size, sha256)
        url = f"jobs/{job.job_id}/outputs/{name}"  # under the coordinator in use at each try
        params = {"agent_id": self.agent_id, "attempt": str(job.attempt), "size": str(size)}
        offset = 0
        resume = False  # ask where to resume first (after a failed or out-of-step chunk)
        ahead: tuple[int, asyncio.Future[bytes]] | None = None

        async def step() -> p.UploadState:
            nonlocal offset, resume, ahead
            if resume:
                state = await self._request("GET", url, p.UploadState, params=params)
                if state.complete:
                    return state
                offset, resume = state.received, False
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
            resume = True  # if this PUT fails, part of it may have arrived
            state = await self._request(
                "PUT",
                url,
                p.UploadState,
                params={**params, "offset": str(offset), "sha256": sha256},
                data=data,
            )
            resume = False
            return state

        conflicts = 0
        try:
            while True:
                try:
                    state = await REPORT.call(step, f"upload {name}")
                except Refused as exc:
                    if exc.status != 409 or exc.error.get("field") != "offset":
                        raise
                    conflicts += 1  # out of step: ask where to resume
                    if conflicts > OFFSET_CONFLICTS:
                        raise
                    resume = True
                    continue
                if state.complete:
                    return
                offset, conflicts = state.received, 0
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
