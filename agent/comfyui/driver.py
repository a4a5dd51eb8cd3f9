"""Run (or re-attach to) one prompt on one ComfyUI and report how it ended (DESIGN.md §5).

The I/O shell around the pure ``tracker.PromptTracker`` (the loop itself is ``prompt_run.py``,
the WebSocket ``relay.py``, the outcome rule ``outcome.py``):

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
from collections.abc import Mapping
from typing import Any

from comfyfleet.agent.comfyui.client import ComfyUIClient
from comfyfleet.agent.comfyui.outcome import OutcomeStatus, PromptOutcome
from comfyfleet.agent.comfyui.prompt_run import PromptRun, UpdateCallback

__all__ = ["OutcomeStatus", "PromptOutcome", "UpdateCallback", "attach_prompt", "run_prompt"]


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
    forward_frames: bool = False,
) -> PromptOutcome:
    """Submit ``graph`` as ``prompt_id`` and follow it to its end. Never raises ComfyUI errors.

    ``ws_url_or_base`` is ComfyUI's http(s) base or its ws(s) URL (None: the client's base).
    ``timeout_s`` counts from the call (queue wait included), extended by ``queue_wait_s`` (the
    most the prompts ahead of it in ComfyUI's queue may take); once the prompt starts it has
    ``timeout_s`` from its ``execution_start``.
    """
    return await PromptRun(
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
        forward_frames=forward_frames,
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
    forward_frames: bool = False,
) -> PromptOutcome:
    """Follow a prompt submitted before an agent restart (same outcome contract as run_prompt).

    Reconnects the WebSocket with ``client_id``, then asks /history (already finished?) and
    /queue (running or waiting?); unknown to both -> ``lost``. Without ``graph`` the graph is
    taken from ComfyUI's queue entry (for node types and the progress fraction).
    """
    return await PromptRun(
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
        forward_frames=forward_frames,
    ).run(submit=False, extra_data=None)
