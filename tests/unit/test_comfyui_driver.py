"""Driver and client against an in-test ComfyUI fake that replays recorded 0.3.64 frames."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from comfyfleet.agent.comfyui.client import (
    ComfyUIClient,
    ComfyUIUnavailable,
    OutputMissing,
    OutputTooLarge,
    PromptRejected,
    ws_url,
)
from comfyfleet.agent.comfyui.driver import attach_prompt, run_prompt
from comfyfleet.agent.comfyui.events import (
    Done,
    Executed,
    Executing,
    OutputRef,
    Preview,
    Progress,
    Succeeded,
    Update,
)
from comfyfleet.agent.comfyui.outcome import PromptOutcome

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"

pytestmark = pytest.mark.timeout(15)


def load(name: str) -> dict[str, Any]:
    return json.loads((TRACES / name).read_text())


def _image(m: dict[str, Any]) -> bytes:
    img = bytes.fromhex(m["image_magic"])
    return img + b"\0" * (m["image_len"] - len(img))


def binary_frame(m: dict[str, Any]) -> bytes:
    t = m["binary_event"]
    if t == 1:
        return struct.pack(">II", 1, m["image_type"]) + _image(m)
    if t == 4:
        meta = json.dumps(m["metadata"]).encode()
        return struct.pack(">II", 4, len(meta)) + meta + _image(m)
    if t == 3:
        node = m["node_id"].encode()
        return struct.pack(">II", 3, len(node)) + node + m["text"].encode()
    raise AssertionError(t)


def rewrite(obj: Any, pid_map: dict[str, str]) -> Any:
    text = json.dumps(obj)
    for old, new in pid_map.items():
        text = text.replace(old, new)
    return json.loads(text)


# ------------------------------------------------------------------------------------------------
# The fake


class FakeComfy:
    """Just enough ComfyUI: HTTP routes of COMFYUI.md, one WebSocket per clientId, replay."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.events: list[str] = []  # "ws_connect:<cid>", "feature_flags:<cid>", "post"
        self.sockets: dict[str, list[web.WebSocketResponse]] = {}
        self.flags: dict[str, bool] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.running: list[str] = []
        self.pending: list[str] = []
        self.graphs: dict[str, Any] = {}
        self.interrupts: dict[str, asyncio.Event] = {}
        self.refuse_ws = False
        self.reject: dict[str, Any] | None = None
        self.answer_500 = False  # queue the prompt but answer 500 (answer lost in transit)
        self.play: Callable[[FakeComfy, str, str], Coroutine[Any, Any, None]] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.number = 0
        self.ws_connected = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_post("/prompt", self.post_prompt)
        app.router.add_get("/history/{pid}", self.get_history)
        app.router.add_get("/queue", self.get_queue)
        app.router.add_post("/queue", self.post_queue)
        app.router.add_post("/interrupt", self.post_interrupt)
        app.router.add_get("/view", self.view)
        app.router.add_get("/system_stats", self.system_stats)
        app.router.add_get("/features", self.features)
        app.router.add_post("/upload/image", self.upload)
        app.on_shutdown.append(self._shutdown)
        return app

    async def _shutdown(self, app: web.Application) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.drop_ws()

    def interrupted(self, pid: str) -> asyncio.Event:
        return self.interrupts.setdefault(pid, asyncio.Event())

    # -- routes -----------------------------------------------------------------------------

    async def ws(self, request: web.Request) -> web.StreamResponse:
        cid = request.query.get("clientId", "")
        if self.refuse_ws:
            raise web.HTTPServiceUnavailable()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.events.append(f"ws_connect:{cid}")
        self.sockets.setdefault(cid, []).append(ws)
        queue_remaining = len(self.running) + len(self.pending)
        status = {"status": {"exec_info": {"queue_remaining": queue_remaining}}, "sid": cid}
        await ws.send_json({"type": "status", "data": status})
        self.ws_connected.set()
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data.get("type") == "feature_flags":
                    self.events.append(f"feature_flags:{cid}")
                    self.flags[cid] = bool(data["data"].get("supports_preview_metadata"))
                    await ws.send_json(
                        {
                            "type": "feature_flags",
                            "data": {"supports_preview_metadata": True, "max_upload_size": 1},
                        }
                    )
        if ws in self.sockets.get(cid, []):
            self.sockets[cid].remove(ws)
        return ws

    async def post_prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("POST", "/prompt", body))
        self.events.append("post")
        if self.reject is not None:
            return web.json_response(self.reject, status=400)
        pid, cid = body["prompt_id"], body.get("client_id")
        self.number += 1
        self.graphs[pid] = body["prompt"]
        self.pending.append(pid)
        if self.play is not None:
            self.tasks.append(asyncio.create_task(self.play(self, pid, cid)))
        if self.answer_500:
            return web.Response(status=500, text="oops")
        return web.json_response({"prompt_id": pid, "number": self.number, "node_errors": {}})

    async def get_history(self, request: web.Request) -> web.Response:
        pid = request.match_info["pid"]
        self.requests.append(("GET", f"/history/{pid}", None))
        return web.json_response({pid: self.history[pid]} if pid in self.history else {})

    async def get_queue(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", "/queue", None))

        def entry(pid: str) -> list[Any]:
            return [1, pid, self.graphs.get(pid, {}), {"client_id": "x"}, []]

        return web.json_response(
            {
                "queue_running": [entry(p) for p in self.running],
                "queue_pending": [entry(p) for p in self.pending],
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("POST", "/queue", body))
        for pid in body.get("delete", []):
            if pid in self.pending:
                self.pending.remove(pid)
        return web.Response()

    async def post_interrupt(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        self.requests.append(("POST", "/interrupt", body))
        pid = body.get("prompt_id")
        if pid is None or pid in self.running:
            for p in [pid] if pid else list(self.running):
                self.interrupted(p).set()
        return web.Response()

    async def view(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        key = (q.get("filename", ""), q.get("subfolder", ""), q.get("type", ""))
        if key not in self.files:
            return web.Response(status=404)
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        data = self.files[key]
        for i in range(0, len(data), 1000):
            await resp.write(data[i : i + 1000])
        await resp.write_eof()
        return resp

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(load("10_misc.json")["system_stats"]["json"])

    async def features(self, request: web.Request) -> web.Response:
        return web.json_response(load("10_misc.json")["features"]["json"])

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form["image"]
        assert isinstance(image, web.FileField)
        self.requests.append(("POST", "/upload/image", dict(form)))
        return web.json_response(
            {"name": image.filename, "subfolder": form.get("subfolder", ""), "type": "input"}
        )

    # -- scripted behaviour -----------------------------------------------------------------

    def start(self, pid: str) -> None:
        if pid in self.pending:
            self.pending.remove(pid)
        self.running.append(pid)

    def finish(self, pid: str, entry: dict[str, Any] | None) -> None:
        if pid in self.running:
            self.running.remove(pid)
        if entry is not None:
            self.history[pid] = entry

    async def send(self, cid: str, frame: Any, pid_map: dict[str, str]) -> None:
        for ws in list(self.sockets.get(cid, [])):
            if ws.closed:
                continue
            if frame["kind"] == "text":
                await ws.send_str(json.dumps(rewrite(frame["msg"], pid_map)))
            else:
                await ws.send_bytes(binary_frame(rewrite(frame["msg"], pid_map)))

    async def replay(
        self,
        cid: str,
        pid: str,
        frames: list[dict[str, Any]],
        pid_map: dict[str, str],
        history: dict[str, Any] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Send frames; like ComfyUI, write history and leave the queue before executing{null}."""
        for frame in frames:
            msg = rewrite(frame["msg"], pid_map) if frame["kind"] == "text" else None
            if (
                msg is not None
                and msg["type"] == "execution_start"
                and msg["data"]["prompt_id"] == pid
            ):
                self.start(pid)
            if (
                msg is not None
                and msg["type"] == "executing"
                and msg["data"].get("node") is None
                and msg["data"].get("prompt_id") == pid
            ):
                self.finish(pid, rewrite(history, pid_map) if history is not None else None)
            await self.send(cid, frame, pid_map)
            if delay:
                await asyncio.sleep(delay)

    async def drop_ws(self, cid: str | None = None) -> None:
        for key, sockets in list(self.sockets.items()):
            if cid is None or key == cid:
                for ws in list(sockets):
                    await ws.close()

    async def restart(self) -> None:
        """ComfyUI restarted: memory (queue, history) gone, sockets closed."""
        self.history.clear()
        self.running.clear()
        self.pending.clear()
        await self.drop_ws()

    def posted(self, path: str) -> list[Any]:
        return [body for (m, p, body) in self.requests if m == "POST" and p == path]


@pytest.fixture
async def fake(aiohttp_server: Any) -> Any:
    fc = FakeComfy()
    server: TestServer = await aiohttp_server(fc.app())
    fc.server = server  # type: ignore[attr-defined]
    fc.base = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return fc


@pytest.fixture
async def client(fake: Any) -> Any:
    async with aiohttp.ClientSession() as session:
        yield ComfyUIClient(session, fake.base, request_timeout_s=2.0, connect_timeout_s=1.0)


class Collector:
    def __init__(self) -> None:
        self.updates: list[Update] = []

    async def __call__(self, update: Update) -> None:
        self.updates.append(update)

    def kinds(self) -> list[str]:
        return [type(u).__name__ for u in self.updates]


PID = "job-1-attempt-1"
CID = "agent-a-slot-0"

FAST = {"stall_s": 0.2, "unavailable_grace_s": 0.6, "cancel_wait_s": 2.0, "http_timeout_s": 1.0}


async def drive(
    client: ComfyUIClient,
    fake: Any,
    graph: dict[str, Any],
    *,
    cancel: asyncio.Event | None = None,
    timeout_s: float = 5.0,
    collector: Collector | None = None,
    **kw: Any,
) -> PromptOutcome:
    params = {**FAST, **kw}
    before = {t for t in asyncio.all_tasks()}
    async with asyncio.timeout(8):
        outcome = await run_prompt(
            client,
            fake.base,
            graph,
            PID,
            CID,
            on_update=collector or Collector(),
            cancel=cancel or asyncio.Event(),
            timeout_s=timeout_s,
            **params,
        )
    leaked = [
        t
        for t in asyncio.all_tasks() - before
        if t.get_name().startswith("comfyui") and not t.done()
    ]
    assert leaked == []
    return outcome


def recorded_pid(d: dict[str, Any]) -> str:
    return d["post"]["json"]["prompt_id"]


# ------------------------------------------------------------------------------------------------
# Driver


async def test_success_with_outputs(fake: Any, client: ComfyUIClient) -> None:
    d = load("01_normal.json")
    pmap = {recorded_pid(d): PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"], pmap, d["history"]["json"][recorded_pid(d)])

    fake.play = play
    col = Collector()
    graph = d["post"]["request_json"]["prompt"]
    outcome = await drive(client, fake, graph, collector=col)
    assert outcome.status == "succeeded"
    assert outcome.outputs == [OutputRef("probe_invert_00001_.png", "", "output", "3")]
    assert outcome.number == 1 and outcome.cached == [] and set(outcome.timings) == {"1", "2", "3"}
    assert not outcome.retryable
    # WebSocket (with feature flags) first, then the POST with our ids.
    assert fake.events[:3] == [f"ws_connect:{CID}", f"feature_flags:{CID}", "post"]
    (body,) = fake.posted("/prompt")
    assert body["prompt_id"] == PID and body["client_id"] == CID and body["prompt"] == graph
    assert col.kinds() == [
        "Started",
        "Cached",
        "Executing",
        "Progress",
        "Executing",
        "Progress",
        "Executing",
        "Executed",
        "Progress",
        "Succeeded",
        "Done",
    ]
    fractions = [u.fraction for u in col.updates if isinstance(u, Progress)]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # outputs were cross-checked against /history at the end
    assert ("GET", f"/history/{PID}", None) in fake.requests


async def test_cached_rerun_completes(fake: Any, client: ComfyUIClient) -> None:
    d = load("02_cached_rerun.json")
    pmap = {recorded_pid(d): PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"], pmap, d["history"]["json"][recorded_pid(d)])

    fake.play = play
    col = Collector()
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"], collector=col)
    assert outcome.status == "succeeded"
    assert outcome.cached == ["1", "2", "3"]
    assert outcome.outputs == [OutputRef("probe_invert_00001_.png", "", "output", "3")]
    assert "Executing" not in col.kinds()


async def test_ws_silence_then_history_fallback(fake: Any, client: ComfyUIClient) -> None:
    d = load("01_normal.json")
    pmap = {recorded_pid(d): PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"][:7], pmap)  # up to executing(2), then silence
        await asyncio.sleep(0.3)
        fc.finish(pid, rewrite(d["history"]["json"][recorded_pid(d)], pmap))

    fake.play = play
    col = Collector()
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"], collector=col)
    assert outcome.status == "succeeded"
    assert outcome.outputs == [OutputRef("probe_invert_00001_.png", "", "output", "3")]
    assert col.kinds()[-3:] == ["Executed", "Succeeded", "Done"]
    assert len([r for r in fake.requests if r[1] == "/queue"]) >= 1  # it checked the queue


async def test_ws_drop_mid_run_completes_via_history(fake: Any, client: ComfyUIClient) -> None:
    d = load("01_normal.json")
    pmap = {recorded_pid(d): PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"][:7], pmap)
        fc.refuse_ws = True
        await fc.drop_ws(cid)
        await asyncio.sleep(0.3)
        fc.finish(pid, rewrite(d["history"]["json"][recorded_pid(d)], pmap))

    fake.play = play
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"], stall_s=5.0)
    assert outcome.status == "succeeded"
    assert outcome.outputs == [OutputRef("probe_invert_00001_.png", "", "output", "3")]


async def test_ws_reconnect_same_client_id_follows_id_less_executing(
    fake: Any, client: ComfyUIClient
) -> None:
    d = load("24_reconnect_same_clientid.json")
    old = "f2e5aa47-ce86-4398-9df3-64f873f90d2c"
    pmap = {old: PID}
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {}},
        "10": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0]}},
        "11": {"class_type": "ImageBlur", "inputs": {"image": ["10", 0]}},
        "99": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    entry = {
        "prompt": [1, PID, graph, {}, ["99"]],
        "outputs": {
            "99": {"images": [{"filename": "ComfyUI_temp_cfhof_00001_.png", "type": "temp"}]}
        },
        "status": {"status_str": "success", "completed": True, "messages": []},
    }

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["before_disconnect"], pmap)
        fc.ws_connected.clear()
        await fc.drop_ws(cid)
        await asyncio.wait_for(fc.ws_connected.wait(), 3)
        await asyncio.sleep(0.05)
        # after_reconnect[0] is the status the fake already sent on connect
        await fc.replay(cid, pid, d["after_reconnect"][1:], pmap, entry)

    fake.play = play
    col = Collector()
    outcome = await drive(client, fake, graph, collector=col, stall_s=5.0)
    assert outcome.status == "succeeded"
    assert outcome.outputs == [OutputRef("ComfyUI_temp_cfhof_00001_.png", "", "temp", "99")]
    executing = [u.node for u in col.updates if isinstance(u, Executing)]
    assert executing == ["1", "10", "11", "99"]
    assert fake.events.count(f"ws_connect:{CID}") == 2
    assert fake.events.count(f"feature_flags:{CID}") == 2


async def test_uncertain_submit_is_resolved_by_history_and_queue(
    fake: Any, client: ComfyUIClient
) -> None:
    d = load("01_normal.json")
    pmap = {recorded_pid(d): PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"], pmap, d["history"]["json"][recorded_pid(d)])

    fake.play = play
    fake.answer_500 = True
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"])
    assert outcome.status == "succeeded" and len(outcome.outputs) == 1


async def test_submit_500_not_queued_is_lost(fake: Any, client: ComfyUIClient) -> None:
    fake.answer_500 = True
    fake.graphs.clear()

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        fc.pending.remove(pid)  # it never got in

    fake.play = play
    outcome = await drive(client, fake, {"1": {"class_type": "X", "inputs": {}}})
    assert outcome.status == "lost"


async def test_rejected_with_structured_node_errors(fake: Any, client: ComfyUIClient) -> None:
    d = load("06_validation_errors.json")["missing_input"]
    fake.reject = d["json"]
    outcome = await drive(client, fake, d["request_json"]["prompt"])
    assert outcome.status == "rejected"
    assert outcome.rejection is not None
    assert outcome.rejection["type"] == "prompt_outputs_failed_validation"
    err = outcome.node_errors["1"]["errors"][0]
    assert err["type"] == "required_input_missing" and err["extra_info"]["input_name"] == "width"
    assert outcome.node_errors["1"]["class_type"] == "EmptyImage"
    assert not outcome.retryable


async def test_execution_error_fails_with_node(fake: Any, client: ComfyUIClient) -> None:
    d = load("07_execution_error.json")
    pmap = {recorded_pid(d): PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"], pmap, d["history"]["json"][recorded_pid(d)])

    fake.play = play
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"])
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert (outcome.error.node_id, outcome.error.node_type) == ("3", "SaveImage")
    assert outcome.error.exception_type == "Exception"
    assert not outcome.error.retryable and not outcome.retryable
    assert outcome.outputs == []


async def test_oom_fails_retryable(fake: Any, client: ComfyUIClient) -> None:
    d = copy.deepcopy(load("07_execution_error.json"))
    for frame in d["ws"]:
        if frame["kind"] == "text" and frame["msg"]["type"] == "execution_error":
            frame["msg"]["data"]["exception_type"] = "torch.OutOfMemoryError"
            frame["msg"]["data"]["exception_message"] = "Allocation on device "
    pmap = {recorded_pid(d): PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"], pmap, d["history"]["json"][recorded_pid(d)])

    fake.play = play
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"])
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.retryable
    assert outcome.error.exception_type == "torch.OutOfMemoryError"
    assert outcome.retryable


def _split_at_interrupt(frames: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    i = next(
        i
        for i, f in enumerate(frames)
        if f["kind"] == "text" and f["msg"]["type"] == "execution_interrupted"
    )
    # The recorded stream: executing(12) right before the interrupt; run up to node 10.
    j = next(
        k
        for k, f in enumerate(frames)
        if f["kind"] == "text"
        and f["msg"]["type"] == "executing"
        and f["msg"]["data"].get("node") == "10"
    )
    return frames[: j + 1], frames[i - 1 :]


async def test_cancel_while_running_interrupts(fake: Any, client: ComfyUIClient) -> None:
    d = load("08_interrupt_global.json")
    pmap = {recorded_pid(d): PID}
    head, tail = _split_at_interrupt(d["ws"])
    cancel = asyncio.Event()

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, head, pmap)
        cancel.set()
        await asyncio.wait_for(fc.interrupted(pid).wait(), 3)
        await asyncio.sleep(0.1)  # the running node finishes first
        await fc.replay(cid, pid, tail, pmap, d["history"]["json"][recorded_pid(d)])

    fake.play = play
    col = Collector()
    outcome = await drive(
        client, fake, d["post"]["request_json"]["prompt"], cancel=cancel, collector=col
    )
    assert outcome.status == "cancelled"
    assert {"prompt_id": PID} in fake.posted("/interrupt")
    assert all(body == {"prompt_id": PID} for body in fake.posted("/interrupt"))
    assert outcome.interrupted is not None and outcome.interrupted.node_id == "12"
    assert col.kinds()[-2:] == ["Interrupted", "Done"]
    assert fake.posted("/queue") == []


async def test_cancel_while_pending_deletes_from_queue(fake: Any, client: ComfyUIClient) -> None:
    cancel = asyncio.Event()

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await asyncio.sleep(0.1)  # waits behind someone else's prompt
        cancel.set()

    fake.play = play
    graph = load("01_normal.json")["post"]["request_json"]["prompt"]
    outcome = await drive(client, fake, graph, cancel=cancel, stall_s=5.0)
    assert outcome.status == "cancelled"
    assert fake.posted("/queue") == [{"delete": [PID]}]
    assert fake.posted("/interrupt") == []
    assert fake.pending == []


async def test_cancel_before_submit(fake: Any, client: ComfyUIClient) -> None:
    cancel = asyncio.Event()
    cancel.set()
    outcome = await drive(client, fake, {}, cancel=cancel)
    assert outcome.status == "cancelled"
    assert fake.posted("/prompt") == []


async def test_timeout_interrupts(fake: Any, client: ComfyUIClient) -> None:
    d = load("08_interrupt_global.json")
    pmap = {recorded_pid(d): PID}
    head, tail = _split_at_interrupt(d["ws"])

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, head, pmap)
        await asyncio.wait_for(fc.interrupted(pid).wait(), 5)
        await fc.replay(cid, pid, tail, pmap, d["history"]["json"][recorded_pid(d)])

    fake.play = play
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"], timeout_s=0.4)
    assert outcome.status == "timeout"
    assert {"prompt_id": PID} in fake.posted("/interrupt")
    assert outcome.retryable


async def test_timeout_unconfirmed_is_bounded(fake: Any, client: ComfyUIClient) -> None:
    d = load("08_interrupt_global.json")
    pmap = {recorded_pid(d): PID}
    head, _ = _split_at_interrupt(d["ws"])

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, head, pmap)  # then a node that ignores the interrupt

    fake.play = play
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    outcome = await drive(
        client, fake, d["post"]["request_json"]["prompt"], timeout_s=0.3, cancel_wait_s=0.5
    )
    assert outcome.status == "timeout"
    assert "did not confirm" in outcome.reason
    assert loop.time() - t0 < 2.0


async def test_foreign_interrupt_is_retryable_failure(fake: Any, client: ComfyUIClient) -> None:
    d = load("08_interrupt_global.json")
    pmap = {recorded_pid(d): PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"], pmap, d["history"]["json"][recorded_pid(d)])

    fake.play = play
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"])
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.exception_type == "Interrupted"
    assert outcome.retryable


async def test_server_gone_is_lost(fake: Any, client: ComfyUIClient) -> None:
    d = load("08_interrupt_global.json")
    pmap = {recorded_pid(d): PID}
    head, _ = _split_at_interrupt(d["ws"])
    gone = asyncio.Event()

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, head, pmap)
        gone.set()

    fake.play = play

    async def kill() -> None:
        await gone.wait()
        await fake.server.close()

    killer = asyncio.create_task(kill())
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"])
    await killer
    assert outcome.status == "lost"
    assert "unreachable" in outcome.reason
    assert outcome.retryable


async def test_unreachable_at_start_is_lost(client: ComfyUIClient, fake: Any) -> None:
    await fake.server.close()
    outcome = await drive(client, fake, {})
    assert outcome.status == "lost"


async def test_restart_is_lost(fake: Any, client: ComfyUIClient) -> None:
    d = load("08_interrupt_global.json")
    pmap = {recorded_pid(d): PID}
    head, _ = _split_at_interrupt(d["ws"])

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, head, pmap)
        await asyncio.sleep(0.05)
        await fc.restart()

    fake.play = play
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"], stall_s=5.0)
    assert outcome.status == "lost"
    assert "unknown" in outcome.reason


async def test_other_prompts_on_the_same_socket_are_ignored(
    fake: Any, client: ComfyUIClient
) -> None:
    d = load("09_queue_and_targeted_interrupt.json")
    a, b, c = (p["json"]["prompt_id"] for p in d["posts"])
    pmap = {b: PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        fc.running.append(a)
        await fc.replay(cid, pid, d["ws"], pmap, d["history_B"]["json"][b])

    fake.play = play
    col = Collector()
    outcome = await drive(client, fake, d["posts"][1]["request_json"]["prompt"], collector=col)
    assert outcome.status == "succeeded"
    assert outcome.outputs == [OutputRef("probe_b_00001_.png", "", "output", "3")]
    assert [u.outputs for u in col.updates if isinstance(u, Executed)] == [
        (OutputRef("probe_b_00001_.png", "", "output", "3"),)
    ]
    assert col.kinds().count("Started") == 1 and col.kinds().count("Done") == 1
    assert a not in json.dumps([repr(u) for u in col.updates]) and c not in str(col.updates)


async def test_type4_previews_with_feature_flags(fake: Any, client: ComfyUIClient) -> None:
    d = load("05b_ws_binary_featureflags.json")
    pmap = {recorded_pid(d): PID}
    entry = {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": {}}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        assert fc.flags.get(cid) is True
        frames = [f for f in d["ws"] if f["msg"].get("type") not in ("status", "feature_flags")]
        await fc.replay(cid, pid, frames, pmap, entry)

    fake.play = play
    col = Collector()
    outcome = await drive(client, fake, d["post"]["request_json"]["prompt"], collector=col)
    assert outcome.status == "succeeded"
    previews = [u for u in col.updates if isinstance(u, Preview)]
    assert len(previews) == 2
    assert all(p.mime == "image/png" and p.node == "2" for p in previews)
    assert all(p.image.startswith(b"\x89PNG") for p in previews)


async def test_sync_callback_and_failing_callback(fake: Any, client: ComfyUIClient) -> None:
    d = load("01_normal.json")
    pmap = {recorded_pid(d): PID}

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"], pmap, d["history"]["json"][recorded_pid(d)])

    fake.play = play
    seen: list[Update] = []

    def on_update(u: Update) -> None:
        seen.append(u)
        if isinstance(u, Executing):
            raise RuntimeError("callback bug")

    async with asyncio.timeout(5):
        outcome = await run_prompt(
            client,
            None,
            d["post"]["request_json"]["prompt"],
            PID,
            CID,
            on_update=on_update,
            cancel=asyncio.Event(),
            timeout_s=5,
            **FAST,
        )
    assert outcome.status == "succeeded"
    assert isinstance(seen[-1], Done) and any(isinstance(u, Succeeded) for u in seen)


# ------------------------------------------------------------------------------------------------
# attach_prompt


async def _attach(client: ComfyUIClient, fake: Any, **kw: Any) -> PromptOutcome:
    async with asyncio.timeout(8):
        return await attach_prompt(
            client,
            fake.base,
            PID,
            CID,
            on_update=kw.pop("collector", Collector()),
            cancel=kw.pop("cancel", asyncio.Event()),
            timeout_s=kw.pop("timeout_s", 5.0),
            **{**FAST, **kw},
        )


async def test_attach_running_prompt_follows_to_end(fake: Any, client: ComfyUIClient) -> None:
    d = load("24_reconnect_same_clientid.json")
    pmap = {"f2e5aa47-ce86-4398-9df3-64f873f90d2c": PID}
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {}},
        "10": {"class_type": "ImageBlur", "inputs": {}},
        "11": {"class_type": "ImageBlur", "inputs": {}},
        "99": {"class_type": "PreviewImage", "inputs": {}},
    }
    fake.graphs[PID] = graph
    fake.running.append(PID)
    entry = {
        "outputs": {"99": {"images": [{"filename": "t.png", "subfolder": "", "type": "temp"}]}},
        "status": {"status_str": "success", "completed": True, "messages": []},
    }

    async def after_connect() -> None:
        await asyncio.wait_for(fake.ws_connected.wait(), 3)
        await asyncio.sleep(0.1)
        await fake.replay(CID, PID, d["after_reconnect"][1:], pmap, entry)

    task = asyncio.create_task(after_connect())
    col = Collector()
    outcome = await _attach(client, fake, collector=col, stall_s=5.0)
    await task
    assert outcome.status == "succeeded"
    # node types come from the graph ComfyUI holds in its queue
    assert Executing("10", "ImageBlur") in col.updates
    assert [o.filename for o in outcome.outputs] == ["ComfyUI_temp_cfhof_00001_.png", "t.png"]


async def test_attach_finished_prompt_uses_history(fake: Any, client: ComfyUIClient) -> None:
    d = load("07_execution_error.json")
    fake.history[PID] = rewrite(d["history"]["json"][recorded_pid(d)], {recorded_pid(d): PID})
    outcome = await _attach(client, fake)
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error.node_type == "SaveImage"


async def test_attach_unknown_prompt_is_lost(fake: Any, client: ComfyUIClient) -> None:
    outcome = await _attach(client, fake)
    assert outcome.status == "lost"


async def test_attach_pending_then_cancel(fake: Any, client: ComfyUIClient) -> None:
    fake.pending.append(PID)
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, cancel.set)
    outcome = await _attach(client, fake, cancel=cancel, stall_s=5.0)
    assert outcome.status == "cancelled"
    assert fake.posted("/queue") == [{"delete": [PID]}]


# ------------------------------------------------------------------------------------------------
# Client


async def test_client_misc(fake: Any, client: ComfyUIClient) -> None:
    stats = await client.system_stats()
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert (await client.features())["supports_preview_metadata"] is True
    fake.running.append("r1")
    fake.pending.extend(["p1", "p2"])
    assert await client.queue() == (["r1"], ["p1", "p2"])
    await client.interrupt()
    await client.interrupt("r1")
    await client.delete_queued(["p2"])
    assert fake.posted("/interrupt") == [{}, {"prompt_id": "r1"}]
    assert fake.pending == ["p1"]
    assert await client.history("nope") == {}
    up = await client.upload_image(b"\x89PNG....", "a.png", subfolder="sub", overwrite=True)
    assert up == {"name": "a.png", "subfolder": "sub", "type": "input"}
    (_, _, form) = fake.requests[-1]
    assert form["overwrite"] == "true" and form["type"] == "input"


async def test_client_submit_rejected_and_unavailable(fake: Any, client: ComfyUIClient) -> None:
    d = load("06_validation_errors.json")["unknown_class"]
    fake.reject = d["json"]
    with pytest.raises(PromptRejected) as info:
        await client.submit({"1": {"class_type": "NoSuchNode", "inputs": {}}}, "p", "c")
    assert info.value.type == "invalid_prompt" and info.value.node_errors == {}
    await fake.server.close()
    with pytest.raises(ComfyUIUnavailable):
        await client.history("p")


async def test_client_view_streams_with_limit(
    fake: Any, client: ComfyUIClient, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 40
    fake.files[("a.png", "sub", "output")] = data
    ref = OutputRef("a.png", "sub", "output", "3")
    res = await client.view(ref, tmp_path / "a.png", max_bytes=len(data))
    assert res.size == len(data) and res.sha256 == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "a.png").read_bytes() == data
    with pytest.raises(OutputTooLarge):
        await client.view(ref, tmp_path / "b.png", max_bytes=len(data) - 1)
    assert not (tmp_path / "b.png").exists()
    with pytest.raises(OutputMissing):
        await client.view(OutputRef("x.png", "", "output", "3"), tmp_path / "c.png", 10)
    assert not (tmp_path / "c.png").exists()


def test_ws_url() -> None:
    assert ws_url("http://h:8188", "c") == "ws://h:8188/ws?clientId=c"
    assert ws_url("https://h/comfy/", "c") == "wss://h/comfy/ws?clientId=c"
    assert ws_url("ws://h:1/ws", "c") == "ws://h:1/ws?clientId=c"


async def _run_as(
    client: ComfyUIClient, fake: Any, graph: dict[str, Any], pid: str, col: Collector
) -> PromptOutcome:
    async with asyncio.timeout(8):
        return await run_prompt(
            client,
            fake.base,
            graph,
            pid,
            CID,
            on_update=col,
            cancel=asyncio.Event(),
            timeout_s=5.0,
            **FAST,
        )


async def test_socket_is_kept_for_the_next_prompt_of_its_client_id(
    fake: Any, client: ComfyUIClient
) -> None:
    """One WebSocket per clientId across prompts: the second run skips the upgrade."""
    d = load("01_normal.json")
    old = recorded_pid(d)

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"], {old: pid}, d["history"]["json"][old])

    fake.play = play
    graph = d["post"]["request_json"]["prompt"]
    first, second = Collector(), Collector()
    assert (await _run_as(client, fake, graph, PID, first)).status == "succeeded"
    assert (await _run_as(client, fake, graph, "job-2-attempt-1", second)).status == "succeeded"
    assert fake.events.count(f"ws_connect:{CID}") == 1
    assert fake.events.count(f"feature_flags:{CID}") == 1
    assert first.kinds() == second.kinds()  # nothing of the first prompt leaked into the second
    assert PID not in str(second.updates)


async def test_parked_socket_dropped_by_comfyui_is_reopened(
    fake: Any, client: ComfyUIClient
) -> None:
    d = load("01_normal.json")
    old = recorded_pid(d)

    async def play(fc: FakeComfy, pid: str, cid: str) -> None:
        await fc.replay(cid, pid, d["ws"], {old: pid}, d["history"]["json"][old])

    fake.play = play
    graph = d["post"]["request_json"]["prompt"]
    assert (await _run_as(client, fake, graph, PID, Collector())).status == "succeeded"
    await fake.drop_ws(CID)  # ComfyUI restarted its socket while no prompt ran
    await asyncio.sleep(0.05)
    col = Collector()
    outcome = await _run_as(client, fake, graph, "job-2-attempt-1", col)
    assert outcome.status == "succeeded"
    assert outcome.outputs == [OutputRef("probe_invert_00001_.png", "", "output", "3")]
    assert fake.events.count(f"ws_connect:{CID}") == 2
    assert col.kinds().count("Done") == 1
