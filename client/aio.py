"""The asynchronous client (aiohttp)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import msgspec

from comfyfleet.client.errors import APIError, ClientError, UIFormatWorkflow
from comfyfleet.client.models import Agent, AgentList, Job, JobList, StreamEvent
from comfyfleet.client.settings import resolve_api_key, resolve_url
from comfyfleet.client.sse import SSEParser
from comfyfleet.shared.endpoints import Endpoints, backoff_s
from comfyfleet.shared.errors import InvalidInput

T = TypeVar("T")


def load_workflow(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an API-format workflow file; a UI-format export raises `UIFormatWorkflow`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(f"{path} is not JSON: {exc}") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise UIFormatWorkflow()
    if isinstance(data, dict) and isinstance(data.get("workflow"), dict):
        inner: dict[str, Any] = data["workflow"]
        return inner  # a submission body saved to a file
    if not isinstance(data, dict):
        raise ClientError(f"{path}: a workflow is a JSON object of nodes")
    return data


class AsyncClient:
    """`async with AsyncClient(url, api_key=...) as c: job = await c.submit(workflow)`.

    `url` may name several coordinators of one store (a list, or comma-separated): a request
    that cannot reach one, or that finds no leader there, is tried on the next, after a jittered
    backoff; a follower sends what only the leader answers to the leader (followed)."""

    def __init__(
        self,
        url: str | list[str] | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        try:
            self.endpoints = Endpoints(resolve_url(url))
        except InvalidInput as exc:
            raise ClientError(f"coordinator URL: {exc.message}") from None
        self.api_key = resolve_api_key(api_key)
        self.timeout_s = timeout_s
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The coordinator in use now."""
        return self.endpoints.current

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s)
            )
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        type_: type[T],
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> T:
        data = None if json_body is None else msgspec.json.encode(json_body)
        hdrs = self._headers(headers)
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        tries = 1 if len(self.endpoints.urls) == 1 else 2 * len(self.endpoints.urls)
        for attempt in range(1, tries + 1):
            try:
                return await self._request_once(method, path, type_, data, params, hdrs)
            except (ClientError, APIError) as exc:
                moving_on = not isinstance(exc, APIError) or exc.status in (502, 503, 504)
                if not moving_on or attempt == tries:
                    raise
                self.endpoints.failed()
                await asyncio.sleep(backoff_s(attempt, 0.2, 2.0))
        raise ClientError(f"no coordinator of {self.endpoints} answered")

    async def _request_once(
        self,
        method: str,
        path: str,
        type_: type[T],
        data: bytes | None,
        params: Mapping[str, str] | None,
        headers: dict[str, str],
    ) -> T:
        try:
            async with self.session.request(
                method,
                self.url + path,
                data=data,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise _api_error(resp.status, body)
                return msgspec.json.decode(body, type=type_)
        except aiohttp.ClientError as exc:
            raise ClientError(f"cannot reach the coordinator at {self.url}: {exc}") from None
        except TimeoutError:
            raise ClientError(
                f"the coordinator at {self.url} did not answer in {self.timeout_s:g} s"
            ) from None

    # ---------------------------------------------------------------- jobs

    async def submit(
        self,
        workflow: dict[str, Any],
        *,
        vram_mb: int | None = None,
        gpus: int | None = None,
        priority: int | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Job:
        """Submit a workflow. An idempotency key is made up when none is given, so a retried
        call never makes a second job."""
        body: dict[str, Any] = {"workflow": workflow, **extra}
        resources = dict(body.pop("resources", {}) or {})
        if vram_mb is not None:
            resources["vram_mb"] = vram_mb
        if gpus is not None:
            resources["gpus"] = gpus
        if resources:
            body["resources"] = resources
        for name, value in (
            ("priority", priority),
            ("timeout_s", timeout_s),
            ("max_retries", max_retries),
            ("metadata", metadata),
        ):
            if value is not None:
                body[name] = value
        key = idempotency_key or uuid.uuid4().hex
        return await self._request(
            "POST", "/v1/jobs", Job, json_body=body, headers={"Idempotency-Key": key}
        )

    async def get(self, job_id: str) -> Job:
        return await self._request("GET", f"/v1/jobs/{job_id}", Job)

    async def jobs(
        self, status: str | list[str] | None = None, limit: int = 50, cursor: str | None = None
    ) -> JobList:
        params = {"limit": str(limit)}
        if status:
            params["status"] = status if isinstance(status, str) else ",".join(status)
        if cursor:
            params["cursor"] = cursor
        return await self._request("GET", "/v1/jobs", JobList, params=params)

    async def cancel(self, job_id: str) -> Job:
        return await self._request("POST", f"/v1/jobs/{job_id}/cancel", Job)

    async def events(
        self, job_id: str | None = None, *, last_event_id: int | None = None, reconnect: bool = True
    ) -> AsyncGenerator[StreamEvent, None]:
        """Live events of one job (ends after its terminal state) or of the whole fleet.

        A dropped connection is resumed with `Last-Event-ID`, so no event is missed or repeated
        while the coordinator still holds it."""
        path = f"/v1/jobs/{job_id}/events" if job_id else "/v1/events"
        last = last_event_id
        failures = 0
        while True:
            headers = self._headers({"Accept": "text/event-stream"})
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            parser = SSEParser(last_id=last)
            try:
                async with self.session.get(self.url + path, headers=headers) as resp:
                    if resp.status >= 400:
                        raise _api_error(resp.status, await resp.read())
                    failures = 0
                    async for raw in resp.content:
                        event = parser.feed(raw.decode("utf-8").rstrip("\r\n"))
                        last = parser.last_id
                        if event is None:
                            continue
                        yield event
                        if job_id and event.terminal:
                            return
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures += 1
                self.endpoints.failed()  # several coordinators: resume the stream on another
                if not reconnect or failures > 10:
                    raise ClientError(f"event stream from {self.url} broke: {exc}") from None
            if not reconnect:
                return
            await asyncio.sleep(min(0.1 * 2**failures, 2.0))

    async def wait(self, job_id: str, timeout_s: float | None = None) -> Job:
        """Follow the job's events until it is terminal; returns the final job."""

        async def follow() -> None:
            async for _ in self.events(job_id):
                pass

        try:
            await asyncio.wait_for(follow(), timeout_s)
        except TimeoutError:
            raise ClientError(f"job {job_id} not finished within {timeout_s:g} s") from None
        return await self.get(job_id)

    async def download(self, url: str, target: str | os.PathLike[str]) -> Path:
        """Download one output (`Output.url`) to a file path."""
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        full = url if url.startswith("http") else self.url + url
        try:
            async with self.session.get(full, headers=self._headers()) as resp:
                if resp.status >= 400:
                    raise _api_error(resp.status, await resp.read())
                tmp = path.with_name(path.name + ".part")
                with tmp.open("wb") as fh:
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        fh.write(chunk)
                tmp.replace(path)
        except aiohttp.ClientError as exc:
            raise ClientError(f"download of {url} failed: {exc}") from None
        return path

    async def fetch(self, url: str) -> bytes:
        """An output or preview as bytes."""
        full = url if url.startswith("http") else self.url + url
        async with self.session.get(full, headers=self._headers()) as resp:
            body = await resp.read()
            if resp.status >= 400:
                raise _api_error(resp.status, body)
            return body

    async def download_outputs(self, job_id: str, directory: str | os.PathLike[str]) -> list[Path]:
        job = await self.get(job_id)
        return [await self.download(o.url, Path(directory) / o.name) for o in job.outputs]

    # ---------------------------------------------------------------- agents

    async def agents(self) -> list[Agent]:
        return (await self._request("GET", "/v1/agents", AgentList)).agents

    async def agent(self, agent_id: str) -> Agent:
        return await self._request("GET", f"/v1/agents/{agent_id}", Agent)

    async def drain(self, agent_id: str) -> Agent:
        return await self._request("POST", f"/v1/agents/{agent_id}/drain", Agent)

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/healthz", dict)

    async def wait_ready(self, agents: int = 1, timeout_s: float = 60.0) -> list[Agent]:
        """Wait until the coordinator answers and `agents` agents are ONLINE."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                online = [a for a in await self.agents() if a.status == "ONLINE"]
                if len(online) >= agents:
                    return online
            except ClientError:
                pass
            if time.monotonic() > deadline:
                raise ClientError(
                    f"{agents} agents not online at {self.url} within {timeout_s:g} s"
                )
            await asyncio.sleep(0.25)


def _api_error(status: int, body: bytes) -> APIError:
    try:
        err = msgspec.json.decode(body).get("error") or {}
        return APIError(
            status, str(err.get("code") or "error"), str(err.get("message") or ""), err.get("field")
        )
    except (msgspec.DecodeError, AttributeError):
        return APIError(status, "http_error", body[:200].decode("utf-8", "replace"))
