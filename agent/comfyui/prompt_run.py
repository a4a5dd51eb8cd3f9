"""The loop behind ``driver.run_prompt`` and ``driver.attach_prompt`` (their contract is in
driver.py): frames from the relay go through the pure ``PromptTracker``; when the socket is quiet
or down, /history and /queue are asked; cancel and timeout interrupt or delete the prompt and wait
for ComfyUI to confirm; the outcome comes from ``outcome.ending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import structlog

from comfyfleet.agent.comfyui.client import (
    ComfyUIClient,
    ComfyUIUnavailable,
    PromptRejected,
    parse_queue,
    queue_graph,
    within,
    ws_url,
)
from comfyfleet.agent.comfyui.events import Done, Started, Update
from comfyfleet.agent.comfyui.frames import Frame, forwarded, with_frame
from comfyfleet.agent.comfyui.history import HistoryResult, interpret_history
from comfyfleet.agent.comfyui.outcome import (
    OutcomeStatus,
    PromptOutcome,
    StopReason,
    ending,
    snapshot,
)
from comfyfleet.agent.comfyui.relay import (
    BINARY,
    CANCEL,
    TEXT,
    WS_DOWN,
    WS_UP,
    FrameRelay,
)
from comfyfleet.agent.comfyui.sockets import SocketPool
from comfyfleet.agent.comfyui.tracker import PromptTracker

__all__ = ["PromptRun", "UpdateCallback"]

log = structlog.get_logger(__name__)

UpdateCallback = Callable[[Update | Frame], Awaitable[None] | None]

_T = TypeVar("_T")


class PromptRun:
    """One run of one prompt: the state the loop keeps between frames, polls and stops."""

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
        forward_frames: bool = False,
    ) -> None:
        self.client = client
        self.forward_frames = forward_frames
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
        self.relay = FrameRelay(client, self.url, http_timeout_s, self.log)
        self.items = self.relay.items
        self.ws_up = False
        self.unreachable_since: float | None = None
        self.number: int | None = None
        self.stop: StopReason | None = None
        self.stop_deadline = 0.0
        self.deleted = False
        self.interrupt_sent_at: float | None = None
        self.submit_error: str | None = None  # POST /prompt failed: maybe queued, maybe not
        self.loop = asyncio.get_running_loop()
        self.queue_wait_s = max(0.0, queue_wait_s)
        self.deadline = self.now() + timeout_s
        self.clock_restarted = False
        self.ws_gap = False  # the socket went down during this run

    def now(self) -> float:
        return self.loop.time()

    # -- entry --------------------------------------------------------------------------------

    async def run(self, *, submit: bool, extra_data: Mapping[str, Any] | None) -> PromptOutcome:
        self.deadline = self.now() + self.timeout_s + self.queue_wait_s
        if self.cancel.is_set() and submit:
            return self._outcome("cancelled", reason="cancelled before submission")
        tasks: list[asyncio.Task[None]] = []
        try:
            relay = self.relay
            relay.ws = await self.sockets.take(self.url) if self.sockets is not None else None
            if relay.ws is None:
                try:
                    relay.ws = await relay.connect_with_grace(self.grace_s, self.deadline)
                except ComfyUIUnavailable as exc:
                    return self._outcome("lost", reason=f"ComfyUI unreachable: {exc}")
            self.ws_up = True
            tasks.append(asyncio.create_task(relay.relay(), name=f"comfyui-ws-{self.prompt_id}"))
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
            ws, self.relay.ws = self.relay.ws, None
            if ws is not None and self.sockets is not None and self.ws_up:
                await self.sockets.give(self.url, ws)  # kept for this clientId's next run
            elif ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2.0)

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
            if not self.items.empty():  # frames waiting: no timer (and no task) per frame
                kind, payload = self.items.get_nowait()
            else:
                try:
                    async with asyncio.timeout(max(0.0, wake - self.now())):
                        kind, payload = await self.items.get()
                except TimeoutError:
                    continue
            updates: list[Update | Frame]
            if kind == TEXT:
                frame = forwarded(self.tracker, payload) if self.forward_frames else None
                updates = with_frame(self.tracker.feed(payload, self.now()), frame)
            elif kind == BINARY:
                updates = list(self.tracker.feed_binary(payload, self.now()))
            elif kind == WS_DOWN:
                self.ws_up = False
                self.ws_gap = True  # frames may be missing: the end asks /history
                self.log.info("comfyui.ws_down")
                next_poll = min(next_poll, self.now() + self._poll_interval())
                continue
            elif kind == WS_UP:
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
            else:  # CANCEL: handled at the top of the loop
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

    async def _begin_stop(self, why: StopReason) -> float:
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
        """The socket said Done. When it carried the whole prompt (its terminal frame seen, no
        gap in the connection) that is the outcome, as for a direct client; otherwise /history
        fills in what the socket may have missed."""
        if self.tracker.terminal and not self.ws_gap and self.number is not None:
            return self._from_result()
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
        return self._from_result()

    async def _finish_from_history(self, hist: HistoryResult) -> PromptOutcome:
        self._reachable()
        if self.number is None:
            self.number = hist.number
        await self._deliver(self.tracker.finish_from_history(hist))
        return self._from_result()

    def _from_result(self) -> PromptOutcome:
        return self._logged(ending(self.tracker, self.stop, self.number))

    def _stop_outcome(self, reason: str) -> PromptOutcome:
        assert self.stop is not None
        return self._logged(self._outcome(self.stop, reason=reason))

    def _lost(self, reason: str) -> PromptOutcome:
        return self._logged(self._outcome("lost", reason=reason))

    def _outcome(self, status: OutcomeStatus, **details: Any) -> PromptOutcome:
        return snapshot(self.tracker, status, self.number, **details)

    def _logged(self, outcome: PromptOutcome) -> PromptOutcome:
        """Log how the prompt ended (a rejection logs where it is caught)."""
        error = outcome.error
        if outcome.status == "succeeded":
            self.log.info("comfyui.succeeded", outputs=len(outcome.outputs))
        elif outcome.status == "failed" and outcome.interrupted is not None:
            node_id = outcome.interrupted.node_id
            self.log.warning("comfyui.interrupted_by_someone_else", node_id=node_id)
        elif outcome.status == "failed" and error is not None:
            self.log.info(
                "comfyui.failed",
                node_id=error.node_id,
                node_type=error.node_type,
                exception_type=error.exception_type,
                retryable=error.retryable,
            )
        elif outcome.status in ("cancelled", "timeout"):
            self.log.info("comfyui.stopped", why=outcome.status, reason=outcome.reason)
        elif outcome.status == "lost":
            self.log.warning("comfyui.lost", reason=outcome.reason)
        return outcome

    # -- helpers ------------------------------------------------------------------------------

    async def _http(self, answer: Awaitable[_T]) -> _T:
        return await within(self.http_timeout_s, answer)

    async def _deliver(self, updates: Sequence[Update | Frame]) -> None:
        for update in updates:
            try:
                result = self.on_update(update)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.log.exception("comfyui.on_update_failed", update=type(update).__name__)

    async def _watch_cancel(self) -> None:
        await self.cancel.wait()
        self.items.put_nowait((CANCEL, None))
