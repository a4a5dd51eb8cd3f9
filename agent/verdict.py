"""What an attempt's end means for its job (pure): the outcome the agent reports, with the error
and whether a retry is spent."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import msgspec

from comfyfleet.agent.comfyui.outcome import PromptOutcome
from comfyfleet.agent.rejections import host_specific
from comfyfleet.shared import protocol as p


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # completed | failed | cancelled | requeue (p.Finish.outcome)
    error: p.ErrorInfo | None = None
    spend_retry: bool = True


def verdict_of(
    outcome: PromptOutcome, stop_reason: str | None, caught: Verdict | None = None
) -> Verdict:
    """`stop_reason` is why the agent stopped the prompt, if it did (cancel, drain, drop);
    `caught` how to report it if a restart of its ComfyUI caught it (agent/supervise/caught.py):
    that wins over anything but a success or the user's cancel."""
    if outcome.status == "succeeded":
        return Verdict("completed")
    if caught is not None and stop_reason != "cancel":
        return caught
    if outcome.status in ("cancelled", "timeout") and stop_reason == "drain":
        return Verdict(
            "requeue", p.ErrorInfo(code="drain", message="agent draining"), spend_retry=False
        )
    if outcome.status == "cancelled" and stop_reason == "cancel":
        return Verdict("cancelled")
    if outcome.status in ("failed", "rejected") and not outcome.retryable:
        err = error_of(outcome)  # a model or node class missing here: try elsewhere
        return Verdict("requeue" if err.retryable else "failed", err)
    return Verdict("requeue", error_of(outcome))


def error_of(outcome: PromptOutcome) -> p.ErrorInfo:
    if outcome.status == "rejected":
        lacking = host_specific(outcome.rejection, outcome.node_errors)
        if lacking is not None:
            return lacking
        err = outcome.rejection or {}
        first = next(iter(outcome.node_errors.items()), None)
        node_id = first[0] if first else None
        node_type = first[1].get("class_type") if first and isinstance(first[1], dict) else None
        message = err.get("message", "ComfyUI refused the prompt")
        details = first[1].get("errors", []) if first and isinstance(first[1], dict) else []
        if details and isinstance(details[0], dict):
            message = f"{message}: {details[0].get('message', '')} {details[0].get('details', '')}"
        return p.ErrorInfo(
            code=err.get("type") or "invalid_prompt",
            message=message.strip(),
            node_id=node_id,
            node_type=node_type,
            details={"node_errors": outcome.node_errors},
        )
    if outcome.status == "failed" and outcome.error is not None:
        e = outcome.error
        return p.ErrorInfo(
            code="out_of_memory" if e.retryable else "execution_error",
            message=f"{e.exception_type}: {e.exception_message}".strip(": "),
            node_id=e.node_id,
            node_type=e.node_type,
            retryable=e.retryable,
        )
    if outcome.status == "timeout":
        return p.ErrorInfo(code="timeout", message=outcome.reason or "timed out", retryable=True)
    return p.ErrorInfo(
        code=f"comfyui_{outcome.status}", message=outcome.reason or outcome.status, retryable=True
    )


# -- a ComfyUI facade prompt (forwarding frames): ComfyUI's own end frame goes with the error ----


def with_comfy_frames(
    verdict: Verdict, outcome: PromptOutcome, comfy_end: dict[str, Any] | None
) -> Verdict:
    """Forwarding frames: ComfyUI's own error or interrupt frame goes with the error."""
    if verdict.outcome == "cancelled":
        return dataclasses.replace(verdict, error=_interrupted_at(outcome, comfy_end))
    if outcome.status in ("failed", "rejected") and not outcome.retryable and verdict.error:
        return dataclasses.replace(verdict, error=_with_comfy_end(verdict.error, comfy_end))
    return verdict


def _interrupted_at(outcome: PromptOutcome, comfy_end: dict[str, Any] | None) -> p.ErrorInfo | None:
    """Where ComfyUI stopped a cancelled prompt, with its own frame."""
    if comfy_end is None or comfy_end.get("type") != "execution_interrupted":
        return None
    where = outcome.interrupted
    return _with_comfy_end(
        p.ErrorInfo(
            code="interrupted",
            message=outcome.reason or "interrupted",
            node_id=where.node_id if where else None,
            node_type=where.node_type if where else None,
        ),
        comfy_end,
    )


def _with_comfy_end(err: p.ErrorInfo, comfy_end: dict[str, Any] | None) -> p.ErrorInfo:
    """ComfyUI's own error frame, kept with the error (the facade's /history)."""
    if comfy_end is None:
        return err
    return msgspec.structs.replace(err, details={**err.details, "comfy": comfy_end})
