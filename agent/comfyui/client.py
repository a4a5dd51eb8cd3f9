"""Async HTTP client for one ComfyUI instance (shared/COMFYUI.md "HTTP").

Every failure to get a well-formed answer (connection refused, timeout, 5xx, a body that is not
the JSON ComfyUI sends) raises ``ComfyUIUnavailable``; a 400 on POST /prompt raises
``PromptRejected`` with ComfyUI's structured ``error`` and ``node_errors``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog

from comfyfleet.agent.comfyui.events import OutputRef
from comfyfleet.agent.comfyui.sockets import SocketPool
from comfyfleet.shared.retry import Transient

__all__ = [
    "ComfyUIClient",
    "ComfyUIError",
    "ComfyUIUnavailable",
    "OutputMissing",
    "OutputTooLarge",
    "PromptRejected",
    "QueueState",
    "ViewResult",
    "parse_queue",
    "queue_graph",
    "within",
    "ws_url",
]

log = structlog.get_logger(__name__)

_CHUNK = 256 * 1024
_T = TypeVar("_T")


class ComfyUIError(Exception):
    """Base of every exception raised by comfyfleet.agent.comfyui."""


class ComfyUIUnavailable(ComfyUIError, Transient):
    """ComfyUI did not answer, or answered something that is not its protocol; `status` says
    which (None: no answer), and shared/retry.py whether it is worth trying again."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PromptRejected(ComfyUIError):
    """POST /prompt answered 400: the workflow is invalid (nothing was queued)."""

    def __init__(self, error: Mapping[str, Any], node_errors: Mapping[str, Any]) -> None:
        msg = str(error.get("message") or error.get("type") or "prompt rejected")
        super().__init__(msg)
        self.error: dict[str, Any] = dict(error)
        self.node_errors: dict[str, Any] = dict(node_errors)

    @property
    def type(self) -> str:
        return str(self.error.get("type") or "")


class OutputMissing(ComfyUIError):
    """GET /view answered 404 (or 400): the file is not there."""


class OutputTooLarge(ComfyUIError):
    """GET /view streamed more than the allowed size; the partial file was removed."""


class QueueState(NamedTuple):
    running: list[str]
    pending: list[str]


@dataclass(frozen=True, slots=True)
class ViewResult:
    size: int
    sha256: str
    content_type: str


async def within(timeout_s: float, answer: Awaitable[_T]) -> _T:
    """`answer`, or ComfyUIUnavailable when it does not come within `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            return await answer
    except TimeoutError as exc:
        raise ComfyUIUnavailable(f"no answer within {timeout_s}s") from exc


def ws_url(base_or_ws: str, client_id: str) -> str:
    """``ws://host:port/ws?clientId=C`` from an http(s) base URL or a ws(s) URL."""
    parts = urlsplit(base_or_ws)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme or "ws")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path = f"{path}/ws"
    query = f"clientId={client_id}"
    return urlunsplit((scheme, parts.netloc, path, query, ""))


class ComfyUIClient:
    """HTTP calls to one ComfyUI at ``base_url`` over a caller-owned ``aiohttp.ClientSession``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        request_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, sock_connect=connect_timeout_s
        )
        self._log = log.bind(comfyui=self.base_url)
        self.sockets = SocketPool()  # a WebSocket per clientId, kept between prompts

    def ws_url(self, client_id: str) -> str:
        return ws_url(self.base_url, client_id)

    # -- plumbing -------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        data: Any = None,
        expect_json: bool = True,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        url = f"{self.base_url}{path}"
        try:
            async with self.session.request(
                method, url, json=json_body, params=params, data=data, timeout=self._timeout
            ) as resp:
                status = resp.status
                body = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ComfyUIUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if status not in ok:
            if status >= 500 or status not in (400, 404):
                raise ComfyUIUnavailable(f"{method} {path}: HTTP {status}", status)
            return status, _maybe_json(body)
        if not expect_json:
            return status, body
        try:
            return status, json.loads(body) if body else None
        except ValueError as exc:
            raise ComfyUIUnavailable(f"{method} {path}: answer is not JSON", status) from exc

    async def _get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        status, payload = await self._request("GET", path, params=params)
        if status != 200:
            raise ComfyUIUnavailable(f"GET {path}: HTTP {status}", status)
        return payload

    # -- API --------------------------------------------------------------------------------

    async def system_stats(self) -> dict[str, Any]:
        return _as_dict(await self._get_json("/system_stats"), "/system_stats")

    async def features(self) -> dict[str, Any]:
        return _as_dict(await self._get_json("/features"), "/features")

    async def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        path = "/object_info" if node_class is None else f"/object_info/{node_class}"
        return _as_dict(await self._get_json(path), path)

    async def model_folders(self) -> list[str]:
        """GET /models: the model folder names (checkpoints, loras, ...)."""
        payload = await self._get_json("/models")
        return [str(f) for f in payload] if isinstance(payload, list) else []

    async def models(self, folder: str) -> list[str]:
        """GET /models/{folder}: the model file names in one folder."""
        payload = await self._get_json(f"/models/{folder}")
        return [str(f) for f in payload] if isinstance(payload, list) else []

    async def submit(
        self,
        graph: Mapping[str, Any],
        prompt_id: str,
        client_id: str,
        extra_data: Mapping[str, Any] | None = None,
    ) -> int:
        """POST /prompt with our own prompt_id; returns ComfyUI's queue number."""
        body: dict[str, Any] = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = dict(extra_data)
        status, payload = await self._request("POST", "/prompt", json_body=body, ok=(200,))
        if status == 400:
            if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping | str):
                err = payload["error"]
                error = dict(err) if isinstance(err, Mapping) else {"message": err}
                node_errors = payload.get("node_errors")
                raise PromptRejected(
                    error, dict(node_errors) if isinstance(node_errors, Mapping) else {}
                )
            raise ComfyUIUnavailable("POST /prompt: 400 without ComfyUI error body", 400)
        if status != 200 or not isinstance(payload, Mapping):
            raise ComfyUIUnavailable(f"POST /prompt: HTTP {status}", status)
        answered = payload.get("prompt_id")
        if answered is not None and answered != prompt_id:
            raise ComfyUIUnavailable(
                f"POST /prompt: server ignored our prompt_id ({answered!r} != {prompt_id!r})",
                200,
            )
        number = payload.get("number")
        return int(number) if isinstance(number, int | float) else -1

    async def history(self, prompt_id: str) -> dict[str, Any]:
        """GET /history/{prompt_id}: raw answer (``{}`` when pending/unknown)."""
        return _as_dict(await self._get_json(f"/history/{prompt_id}"), "/history")

    async def queue(self) -> QueueState:
        """GET /queue as (running prompt ids, pending prompt ids)."""
        return parse_queue(await self.queue_raw())

    async def queue_raw(self) -> dict[str, Any]:
        """GET /queue as ComfyUI answers it (entries are [number, id, graph, extra, outputs])."""
        return _as_dict(await self._get_json("/queue"), "/queue")

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt; with prompt_id it only interrupts that prompt if it is running."""
        body = {} if prompt_id is None else {"prompt_id": prompt_id}
        await self._request("POST", "/interrupt", json_body=body, expect_json=False)

    async def free_memory(self) -> None:
        """POST /free: unload models and free cached memory (ComfyUI does it between prompts)."""
        await self._request(
            "POST",
            "/free",
            json_body={"unload_models": True, "free_memory": True},
            expect_json=False,
        )

    async def delete_queued(self, ids: list[str]) -> None:
        """POST /queue {"delete": ids}: removes waiting prompts (running ones are unaffected)."""
        await self._request("POST", "/queue", json_body={"delete": list(ids)}, expect_json=False)

    async def view(
        self, ref: OutputRef, dest: str | os.PathLike[str], max_bytes: int
    ) -> ViewResult:
        """Stream GET /view for ``ref`` into ``dest``; at most ``max_bytes`` bytes.

        404/400 -> ``OutputMissing``; over the limit -> ``OutputTooLarge``. On any failure the
        partial file is removed. Local disk errors propagate as ``OSError``.
        """
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        url = f"{self.base_url}/view"
        path = Path(dest)
        digest = hashlib.sha256()
        size = 0
        complete = False
        try:
            async with self.session.get(url, params=params, timeout=self._timeout) as resp:
                if resp.status in (400, 404):
                    raise OutputMissing(f"/view {ref.subfolder}/{ref.filename}: HTTP {resp.status}")
                if resp.status != 200:
                    raise ComfyUIUnavailable(f"GET /view: HTTP {resp.status}", resp.status)
                declared = resp.content_length
                if declared is not None and declared > max_bytes:
                    raise OutputTooLarge(f"{ref.filename}: {declared} bytes > {max_bytes}")
                content_type = resp.headers.get("Content-Type", "application/octet-stream")
                fh = await asyncio.to_thread(path.open, "wb")
                try:
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise OutputTooLarge(f"{ref.filename}: more than {max_bytes} bytes")
                        digest.update(chunk)
                        fh.write(chunk)
                finally:
                    fh.close()
            complete = True
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ComfyUIUnavailable(f"GET /view: {type(exc).__name__}: {exc}") from exc
        finally:
            if not complete:
                await asyncio.to_thread(path.unlink, True)
        return ViewResult(size=size, sha256=digest.hexdigest(), content_type=content_type)

    async def upload_image(
        self,
        data: bytes,
        filename: str,
        subfolder: str = "",
        overwrite: bool = False,
        image_type: str = "input",
    ) -> dict[str, Any]:
        """POST /upload/image (multipart); returns ``{"name", "subfolder", "type"}``."""
        form = aiohttp.FormData()
        form.add_field("image", data, filename=filename, content_type="application/octet-stream")
        form.add_field("type", image_type)
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true" if overwrite else "false")
        status, payload = await self._request("POST", "/upload/image", data=form)
        if status != 200:
            raise ComfyUIUnavailable(f"POST /upload/image: HTTP {status}", status)
        return _as_dict(payload, "/upload/image")


def _maybe_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _as_dict(payload: Any, what: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ComfyUIUnavailable(f"{what}: expected a JSON object", 200)
    return payload


def parse_queue(payload: Mapping[str, Any]) -> QueueState:
    """(running ids, pending ids) from a GET /queue answer."""
    return QueueState(
        _queue_ids(payload.get("queue_running")), _queue_ids(payload.get("queue_pending"))
    )


def queue_graph(payload: Mapping[str, Any], prompt_id: str) -> dict[str, Any] | None:
    """The graph ComfyUI holds for ``prompt_id`` in a GET /queue answer, if queued."""
    for key in ("queue_running", "queue_pending"):
        items = payload.get(key)
        if not isinstance(items, list):
            continue
        for item in items:
            if (
                isinstance(item, list | tuple)
                and len(item) > 2
                and str(item[1]) == prompt_id
                and isinstance(item[2], dict)
            ):
                return item[2]
    return None


def _queue_ids(items: Any) -> list[str]:
    ids: list[str] = []
    if isinstance(items, list):
        for item in items:
            if isinstance(item, list | tuple) and len(item) > 1:
                ids.append(str(item[1]))
    return ids
