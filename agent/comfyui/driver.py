"""Run (or re-attach to) one prompt on one ComfyUI and report how it ended (DESIGN.md §5).

The I/O shell around ``events.PromptTracker``:

* The WebSocket ``/ws?clientId=C`` is opened BEFORE the prompt is submitted (events go only to
  that clientId) and announces ``supports_preview_metadata`` so previews carry their prompt_id.
* ComfyUI sends no keep-alive: when nothing arrives for our prompt for ``stall_s`` (or while the
  socket is down), GET /history/{id} and GET /queue tell whether it finished, runs or waits.
* A dropped socket is reconnected with the same clientId in the background; after a reconnect
  /queue tells whether the id-less ``executing`` frame that follows belongs to our prompt.
* ComfyUI unreachable for longer than ``unavailable_grace_s``, or our prompt unknown to both
  /history and /queue after it was accepted (ComfyUI restarted), ends the run as ``lost``.
* ``timeout_s`` (plus ``queue_wait_s``, what the prompts ahead may take) counts from submission,
  and again in full from ``execution_start``: a prompt that waited in ComfyUI's queue behind
  another one (agent pipeline) is not charged for the wait.
* ``cancel`` (or ``timeout_s``) interrupts a running prompt with POST /interrupt {prompt_id},
  removes a pending one with POST /queue {"delete": [id]}, and waits (at most ``cancel_wait_s``)
  for ComfyUI to confirm. If the prompt finished on its own first, that real result is returned.
* An interrupt nobody here asked for (someone else's POST /interrupt) ends as ``failed`` with
  ``exception_type == "Interrupted"`` and ``retryable=True``.
* Cancelling the task that awaits ``run_prompt``/``attach_prompt`` only stops following; the
  prompt keeps running in ComfyUI (an agent restart re-attaches with ``attach_prompt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import aiohttp
import structlog

from comfyfleet.agent.comfyui.client import (
    ComfyUIClient,
    ComfyUIUnavailable,
    PromptRejected,
    parse_queue,
    queue_graph,
    ws_url,
)
from comfyfleet.agent.comfyui.events import (
    Done,
    Failed,
    HistoryResult,
    Interrupted,
    OutputRef,
    PromptTracker,
    Started,
    Succeeded,
    Update,
    interpret_history,
)
from comfyfleet.agent.comfyui.sockets import SocketPool

__all__ = [
    "Frame",
    "OutcomeStatus",
    "PromptOutcome",
    "UpdateCallback",
    "attach_prompt",
    "run_prompt",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Frame:
    """Relay mode: a ComfyUI text frame about this prompt, exactly as ComfyUI sent it (given to
    `on_update` before the updates it caused are, so that a `Done` stays last)."""

    msg: Mapping[str, Any]


# The frames a relay forwards: ComfyUI's execution events (not `status`, which is per server).
RELAYED = frozenset(
    {
        "execution_start",
        "execution_cached",
        "executing",
        "progress",
        "progress_state",
        "executed",
        "execution_success",
        "execution_error",
        "execution_interrupted",
    }
)

OutcomeStatus = Literal["succeeded", "failed", "rejected", "cancelled", "timeout", "lost"]
UpdateCallback = Callable[[Update | Frame], Awaitable[None] | None]

_T = TypeVar("_T")

FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}


@dataclass(frozen=True, slots=True)
class PromptOutcome:
    """How one prompt ended on ComfyUI."""

    status: OutcomeStatus
    prompt_id: str
    outputs: list[OutputRef] = field(default_factory=list)
    error: Failed | None = None  # failed: the node error (or the foreign interrupt)
    rejection: dict[str, Any] | None = None  # rejected: ComfyUI's "error" object
    node_errors: dict[str, Any] = field(default_factory=dict)  # rejected: per-node errors
    interrupted: Interrupted | None = None  # cancelled/timeout: where ComfyUI stopped
    reason: str = ""  # human-readable detail (lost, cancelled, timeout)
    cached: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # node -> seconds (WS-observed)
    number: int | None = None  # ComfyUI's queue number

    @property
    def retryable(self) -> bool:
        """Worth running again (maybe elsewhere): lost, timeout, OOM-like failures."""
        if self.status in ("lost", "timeout"):
            return True
        return self.status == "failed" and self.error is not None and self.error.retryable


# ------------------------------------------------------------------------------------------------


async def run_prompt(
    client: ComfyUIClient,
    ws_url_or_base: str | None,
    graph: Mapping[str, Any],
    prompt_id: str,
    client_id: str,
    *,
    on_update: UpdateCallback,
    cancel: asyncio.Event,
    timeout_s: float,
    stall_s: float = 10.0,
    extra_data: Mapping[str, Any] | None = None,
    unavailable_grace_s: float = 10.0,
    cancel_wait_s: float = 30.0,
    http_timeout_s: float = 10.0,
    queue_wait_s: float = 0.0,
    relay: bool = False,
) -> PromptOutcome:
    """Submit ``graph`` as ``prompt_id`` and follow it to its end. Never raises ComfyUI errors.

    ``ws_url_or_base`` is ComfyUI's http(s) base or its ws(s) URL (None: the client's base).
    ``timeout_s`` counts from the call (queue wait included), extended by ``queue_wait_s`` (the
    most the prompts ahead of it in ComfyUI's queue may take); once the prompt starts it has
    ``timeout_s`` from its ``execution_start``.
    """
    return await _Run(
        client,
        ws_url_or_base,
        prompt_id,
        client_id,
        graph=graph,
        on_update=on_update,
        cancel=cancel,
        timeout_s=timeout_s,
        stall_s=stall_s,
        unavailable_grace_s=unavailable_grace_s,
        cancel_wait_s=cancel_wait_s,
        http_timeout_s=http_timeout_s,
        queue_wait_s=queue_wait_s,
        relay=relay,
    ).run(submit=True, extra_data=extra_data)


async def attach_prompt(
    client: ComfyUIClient,
    ws_url_or_base: str | None,
    prompt_id: str,
    client_id: str,
    *,
    on_update: UpdateCallback,
    cancel: asyncio.Event,
    timeout_s: float,
    stall_s: float = 10.0,
    graph: Mapping[str, Any] | None = None,
    unavailable_grace_s: float = 10.0,
    cancel_wait_s: float = 30.0,
    http_timeout_s: float = 10.0,
    relay: bool = False,
) -> PromptOutcome:
    """Follow a prompt submitted before an agent restart (same outcome contract as run_prompt).

    Reconnects the WebSocket with ``client_id``, then asks /history (already finished?) and
    /queue (running or waiting?); unknown to both -> ``lost``. Without ``graph`` the graph is
    taken from ComfyUI's queue entry (for node types and the progress fraction).
    """
    return await _Run(
        client,
        ws_url_or_base,
        prompt_id,
        client_id,
        graph=graph,
        on_update=on_update,
        cancel=cancel,
        timeout_s=timeout_s,
        stall_s=stall_s,
        unavailable_grace_s=unavailable_grace_s,
        cancel_wait_s=cancel_wait_s,
        http_timeout_s=http_timeout_s,
        relay=relay,
    ).run(submit=False, extra_data=None)


# ------------------------------------------------------------------------------------------------

# Items the background tasks hand to the main loop.
_TEXT, _BINARY, _WS_DOWN, _WS_UP, _CANCEL = "text", "binary", "ws_down", "ws_up", "cancel"


_CLOSED_TYPES = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.ERROR,
)


class _Lost(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Run:
    def __init__(
        self,
        client: ComfyUIClient,
        ws_url_or_base: str | None,
        prompt_id: str,
        client_id: str,
        *,
        graph: Mapping[str, Any] | None,
        on_update: UpdateCallback,
        cancel: asyncio.Event,
        timeout_s: float,
        stall_s: float,
        unavailable_grace_s: float,
        cancel_wait_s: float,
        http_timeout_s: float,
        queue_wait_s: float = 0.0,
        relay: bool = False,
    ) -> None:
        self.client = client
        self.relay = relay
        self.url = ws_url(ws_url_or_base or client.base_url, client_id)
        self.sockets: SocketPool | None = getattr(client, "sockets", None)
        self.prompt_id = prompt_id
        self.client_id = client_id
        self.graph = graph
        self.on_update = on_update
        self.cancel = cancel
        self.timeout_s = timeout_s
        self.stall_s = max(0.01, stall_s)
        self.grace_s = unavailable_grace_s
        self.cancel_wait_s = cancel_wait_s
        self.http_timeout_s = http_timeout_s
        self.log = log.bind(prompt_id=prompt_id, client_id=client_id)
        self.tracker = PromptTracker(prompt_id, graph)
        self.items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ws_up = False
        self.unreachable_since: float | None = None
        self.number: int | None = None
        self.stop: Literal["cancelled", "timeout"] | None = None
        self.stop_deadline = 0.0
        self.deleted = False
        self.interrupt_sent_at: float | None = None
        self.submit_error: str | None = None  # POST /prompt failed: maybe queued, maybe not
        self.loop = asyncio.get_running_loop()
        self.queue_wait_s = max(0.0, queue_wait_s)
        self.deadline = self.now() + timeout_s
        self.clock_restarted = False

    def now(self) -> float:
        return self.loop.time()

    # -- entry --------------------------------------------------------------------------------

    async def run(self, *, submit: bool, extra_data: Mapping[str, Any] | None) -> PromptOutcome:
        self.deadline = self.now() + self.timeout_s + self.queue_wait_s
        if self.cancel.is_set() and submit:
            return self._outcome("cancelled", reason="cancelled before submission")
        tasks: list[asyncio.Task[None]] = []
        try:
            self.ws = await self.sockets.take(self.url) if self.sockets is not None else None
            if self.ws is None:
                try:
                    self.ws = await self._connect_with_grace()
                except _Lost as exc:
                    return self._outcome("lost", reason=exc.reason)
            self.ws_up = True
            tasks.append(asyncio.create_task(self._reader(), name=f"comfyui-ws-{self.prompt_id}"))
            tasks.append(asyncio.create_task(self._watch_cancel(), name="comfyui-cancel-watch"))
            next_poll = self.now() + self.stall_s
            if submit:
                try:
                    # Bounded by the client's own request timeout (not http_timeout_s): a
                    # subclass may do more than the POST once ComfyUI accepted the prompt.
                    self.number = await self.client.submit(
                        self.graph or {}, self.prompt_id, self.client_id, extra_data
                    )
                    self.log.info("comfyui.submitted", number=self.number)
                except PromptRejected as exc:
                    self.log.info("comfyui.rejected", error=exc.error.get("type"))
                    return self._outcome(
                        "rejected", rejection=exc.error, node_errors=exc.node_errors
                    )
                except ComfyUIUnavailable as exc:
                    # Maybe queued, maybe not: /history and /queue will tell.
                    self.log.warning("comfyui.submit_uncertain", error=str(exc))
                    self.submit_error = str(exc)
                    next_poll = self.now()
            else:
                next_poll = self.now()  # attach: ask /history and /queue first
            return await self._follow(next_poll)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.ws is not None and self.sockets is not None and self.ws_up:
                await self.sockets.give(self.url, self.ws)  # kept for this clientId's next run
            elif self.ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.ws.close(), 2.0)
            self.ws = None

    # -- main loop ----------------------------------------------------------------------------

    async def _follow(self, next_poll: float) -> PromptOutcome:
        while True:
            now = self.now()
            if self.stop is None:
                if self.cancel.is_set():
                    next_poll = await self._begin_stop("cancelled")
                elif now >= self.deadline:
                    next_poll = await self._begin_stop("timeout")
            elif now >= self.stop_deadline:
                self.log.warning("comfyui.stop_unconfirmed", wait_s=self.cancel_wait_s)
                return self._stop_outcome(
                    f"ComfyUI did not confirm the {self.stop} within {self.cancel_wait_s}s"
                )
            if self.now() >= next_poll:
                outcome = await self._poll()
                if outcome is not None:
                    return outcome
                next_poll = self.now() + self._poll_interval()
            wake = min(next_poll, self.deadline if self.stop is None else self.stop_deadline)
            try:
                kind, payload = await asyncio.wait_for(
                    self.items.get(), timeout=max(0.0, wake - self.now())
                )
            except TimeoutError:
                continue
            if kind == _TEXT:
                relayed = self.relay and self._relayed(payload)
                updates: list[Update | Frame] = list(self.tracker.feed(payload, self.now()))
                if relayed:  # the frame itself, before a closing Done
                    ends = bool(updates) and isinstance(updates[-1], Done)
                    updates.insert(len(updates) - 1 if ends else len(updates), Frame(payload))
            elif kind == _BINARY:
                updates = list(self.tracker.feed_binary(payload, self.now()))
            elif kind == _WS_DOWN:
                self.ws_up = False
                self.log.info("comfyui.ws_down")
                next_poll = min(next_poll, self.now() + self._poll_interval())
                continue
            elif kind == _WS_UP:
                self.ws_up = True
                self.log.info("comfyui.ws_reconnected")
                queue_state = payload
                if queue_state is None:
                    next_poll = self.now()
                elif self.prompt_id in queue_state.running:
                    self.tracker.set_running(True)
                elif self.prompt_id in queue_state.pending:
                    self.tracker.set_running(False)
                else:  # finished (or lost) while the socket was down
                    self.tracker.set_running(False)
                    next_poll = self.now()
                continue
            else:  # _CANCEL: handled at the top of the loop
                continue
            if not updates:
                continue
            if self.ws_up:
                next_poll = max(next_poll, self.now() + self.stall_s)
            if not self.clock_restarted and any(isinstance(u, Started) for u in updates):
                # A prompt that waited in ComfyUI's queue (agent pipeline) gets its whole
                # timeout from when it starts, as the coordinator counts it from RUNNING.
                self.clock_restarted = True
                self.deadline = self.now() + self.timeout_s
            await self._deliver(updates)
            if any(isinstance(u, Done) for u in updates):
                return await self._finish()

    def _relayed(self, payload: Any) -> bool:
        return (
            isinstance(payload, Mapping)
            and payload.get("type") in RELAYED
            and self.tracker.owns(payload)
        )

    def _poll_interval(self) -> float:
        if self.unreachable_since is not None:
            return min(0.5, max(0.05, self.grace_s / 4))
        if self.stop is not None or not self.ws_up:
            return min(self.stall_s, 1.0)
        return self.stall_s

    async def _poll(self) -> PromptOutcome | None:
        """Ask /history then /queue; an outcome if the prompt ended (or is lost)."""
        try:
            hist = interpret_history(
                self.prompt_id, await self._http(self.client.history(self.prompt_id))
            )
            if hist.finished:
                return await self._finish_from_history(hist)
            queue_payload = await self._http(self.client.queue_raw())
            queue_state = parse_queue(queue_payload)
            if self.prompt_id in queue_state.running:
                self._reachable()
                self._adopt_graph(queue_payload)
                self.tracker.set_running(True)
                if self.stop is not None and (
                    self.interrupt_sent_at is None or self.now() - self.interrupt_sent_at > 2.0
                ):
                    await self._send_interrupt()
                return None
            if self.prompt_id in queue_state.pending:
                self._reachable()
                self._adopt_graph(queue_payload)
                self.tracker.set_running(False)
                if self.stop is None or not await self._send_delete():
                    return None
            # Neither (or just deleted): it may have finished between the two questions.
            hist = interpret_history(
                self.prompt_id, await self._http(self.client.history(self.prompt_id))
            )
        except ComfyUIUnavailable as exc:
            now = self.now()
            if self.unreachable_since is None:
                self.unreachable_since = now
                self.log.warning("comfyui.unreachable", error=str(exc))
            if now - self.unreachable_since >= self.grace_s:
                if self.stop is not None:
                    return self._stop_outcome(f"ComfyUI unreachable during {self.stop}: {exc}")
                return self._lost(f"ComfyUI unreachable for {self.grace_s}s: {exc}")
            return None
        self._reachable()
        if hist.finished:
            return await self._finish_from_history(hist)
        if self.stop is not None:
            reason = "removed from the queue" if self.deleted else "no longer known to ComfyUI"
            return self._stop_outcome(reason)
        if self.submit_error is not None:
            return self._lost(
                f"POST /prompt failed ({self.submit_error}) and ComfyUI does not know the prompt"
            )
        return self._lost("prompt unknown to ComfyUI /history and /queue (ComfyUI restarted?)")

    def _reachable(self) -> None:
        if self.unreachable_since is not None:
            self.log.info("comfyui.reachable_again")
        self.unreachable_since = None

    def _adopt_graph(self, queue_payload: Mapping[str, Any]) -> None:
        if self.graph is None:
            graph = queue_graph(queue_payload, self.prompt_id)
            if graph is not None:
                self.graph = graph
                self.tracker.set_graph(graph)

    # -- stopping -----------------------------------------------------------------------------

    async def _begin_stop(self, why: Literal["cancelled", "timeout"]) -> float:
        self.stop = why
        self.stop_deadline = self.now() + self.cancel_wait_s
        self.log.info("comfyui.stopping", why=why, running=self.tracker.running)
        if self.tracker.running:
            with contextlib.suppress(ComfyUIUnavailable):
                await self._send_interrupt()
        return self.now()  # poll at once: delete if pending, confirm otherwise

    async def _send_interrupt(self) -> None:
        await self._http(self.client.interrupt(self.prompt_id))
        if self.interrupt_sent_at is None:
            self.log.info("comfyui.interrupt_sent")
        self.interrupt_sent_at = self.now()

    async def _send_delete(self) -> bool:
        """Remove our waiting prompt; True once /queue confirms it is gone (it never runs)."""
        await self._http(self.client.delete_queued([self.prompt_id]))
        self.deleted = True
        self.log.info("comfyui.queue_delete_sent")
        # Verify at once: it may have started meanwhile (then interrupt it instead).
        queue_state = parse_queue(await self._http(self.client.queue_raw()))
        if self.prompt_id in queue_state.running:
            self.tracker.set_running(True)
            await self._send_interrupt()
            return False
        return self.prompt_id not in queue_state.pending

    # -- endings ------------------------------------------------------------------------------

    async def _finish(self) -> PromptOutcome:
        """The socket said Done: cross-check outputs with /history and build the outcome."""
        hist: HistoryResult | None = None
        try:
            hist = interpret_history(
                self.prompt_id, await self._http(self.client.history(self.prompt_id))
            )
        except ComfyUIUnavailable as exc:
            self.log.warning("comfyui.history_unavailable_at_end", error=str(exc))
        if hist is not None and hist.finished:
            ws_keys = {o.key for o in self.tracker.outputs}
            hist_keys = {o.key for o in hist.outputs}
            if ws_keys != hist_keys:
                self.log.warning(
                    "comfyui.outputs_mismatch",
                    ws_only=sorted(ws_keys - hist_keys),
                    history_only=sorted(hist_keys - ws_keys),
                )
            if self.number is None:
                self.number = hist.number
            # Outputs (or the terminal frame) the socket missed: history knows.
            await self._deliver(self.tracker.finish_from_history(hist))
        if self.tracker.result is None:
            return self._lost("prompt ended but its result is unknown")
        return self._from_result()

    async def _finish_from_history(self, hist: HistoryResult) -> PromptOutcome:
        self._reachable()
        if self.number is None:
            self.number = hist.number
        await self._deliver(self.tracker.finish_from_history(hist))
        return self._from_result()

    def _from_result(self) -> PromptOutcome:
        result = self.tracker.result
        if isinstance(result, Succeeded):
            self.log.info("comfyui.succeeded", outputs=len(self.tracker.outputs))
            return self._outcome("succeeded")
        if isinstance(result, Failed):
            self.log.info(
                "comfyui.failed",
                node_id=result.node_id,
                node_type=result.node_type,
                exception_type=result.exception_type,
                retryable=result.retryable,
            )
            return self._outcome("failed", error=result)
        if isinstance(result, Interrupted):
            if self.stop is not None:
                return self._stop_outcome(f"interrupted at node {result.node_id}", result)
            self.log.warning("comfyui.interrupted_by_someone_else", node_id=result.node_id)
            return self._outcome(
                "failed",
                error=Failed(
                    node_id=result.node_id,
                    node_type=result.node_type,
                    exception_type="Interrupted",
                    exception_message="interrupted by another ComfyUI client",
                    retryable=True,
                ),
                interrupted=result,
            )
        return self._lost("prompt ended but its result is unknown")

    def _stop_outcome(self, reason: str, interrupted: Interrupted | None = None) -> PromptOutcome:
        assert self.stop is not None
        self.log.info("comfyui.stopped", why=self.stop, reason=reason)
        return self._outcome(self.stop, reason=reason, interrupted=interrupted)

    def _lost(self, reason: str) -> PromptOutcome:
        self.log.warning("comfyui.lost", reason=reason)
        return self._outcome("lost", reason=reason)

    def _outcome(self, status: OutcomeStatus, **kw: Any) -> PromptOutcome:
        return PromptOutcome(
            status=status,
            prompt_id=self.prompt_id,
            outputs=list(self.tracker.outputs),
            cached=list(self.tracker.cached),
            timings=dict(self.tracker.timings),
            number=self.number,
            **kw,
        )

    # -- helpers ------------------------------------------------------------------------------

    async def _http(self, coro: Awaitable[_T]) -> _T:
        try:
            async with asyncio.timeout(self.http_timeout_s):
                return await coro
        except TimeoutError as exc:
            raise ComfyUIUnavailable(f"no answer within {self.http_timeout_s}s") from exc

    async def _deliver(self, updates: Sequence[Update | Frame]) -> None:
        for update in updates:
            try:
                result = self.on_update(update)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.log.exception("comfyui.on_update_failed", update=type(update).__name__)

    async def _connect_once(self) -> aiohttp.ClientWebSocketResponse:
        try:
            async with asyncio.timeout(self.http_timeout_s):
                ws = await self.client.session.ws_connect(
                    self.url, heartbeat=30.0, max_msg_size=64 * 1024 * 1024
                )
                await ws.send_str(json.dumps(FEATURE_FLAGS))
                return ws
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ComfyUIUnavailable(f"WebSocket {self.url}: {type(exc).__name__}: {exc}") from exc

    async def _connect_with_grace(self) -> aiohttp.ClientWebSocketResponse:
        start = self.now()
        delay = 0.05
        while True:
            try:
                return await self._connect_once()
            except ComfyUIUnavailable as exc:
                if self.now() - start >= self.grace_s or self.now() >= self.deadline:
                    raise _Lost(f"ComfyUI unreachable: {exc}") from exc
                self.log.info("comfyui.ws_connect_retry", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _reader(self) -> None:
        """Relay WebSocket frames to the main loop; reconnect (same clientId) when dropped."""
        delay = 0.05
        while True:
            ws = self.ws
            if ws is None:
                try:
                    ws = await self._connect_once()
                except ComfyUIUnavailable:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.05
                self.ws = ws
                # Before relaying frames (they wait in the socket): is our prompt the one running?
                # The id-less `executing` that follows a reconnect belongs to it only then.
                try:
                    queue_state = parse_queue(await self._http(self.client.queue_raw()))
                except ComfyUIUnavailable:
                    queue_state = None
                self.items.put_nowait((_WS_UP, queue_state))
            try:
                msg = await ws.receive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken socket is a dropped socket
                self.log.info("comfyui.ws_receive_failed", error=repr(exc))
                msg = None
            if msg is not None and msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    continue
                self.items.put_nowait((_TEXT, frame))
            elif msg is not None and msg.type == aiohttp.WSMsgType.BINARY:
                self.items.put_nowait((_BINARY, msg.data))
            elif msg is None or msg.type in _CLOSED_TYPES:
                self.ws = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2.0)
                self.items.put_nowait((_WS_DOWN, None))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _watch_cancel(self) -> None:
        await self.cancel.wait()
        self.items.put_nowait((_CANCEL, None))
