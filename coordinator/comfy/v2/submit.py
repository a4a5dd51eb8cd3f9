"""`POST /api/v2/jobs`: reading the body, and its `core/ASSET` references (pure).

The body is `{"workflow": <API-format graph>, "extra_data"?, "metadata"?, "priority"?}`.
`extra_data` is closed: only `api_key_comfy_org` (a string; never stored: the fleet keeps every
job on disk, so partner-node keys are not carried to the agents). `metadata` is the SDK's map of
string labels or the proxy's opaque string label; `priority` is an integer, used by the fleet's
scheduler clamped to its own range. `webhook_url` and `inputs` are reserved and refused.

An asset reference `{"__type": "core/ASSET", "info": {"id", "hash"?, "file_path"?}}` anywhere
in the graph is replaced by the file name the resolver gives (`id` wins; `hash` is a fallback
lookup); one that does not resolve fails the submission with 422 `missing_asset`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from comfyfleet.coordinator.comfy.v2.errors import V2Error, invalid

__all__ = [
    "MAX_PRIORITY",
    "Submission",
    "fleet_priority",
    "parse_submission",
    "resolve_assets",
]

MAX_PRIORITY = 1_000_000
MAX_LABEL_BYTES = 1024
MAX_LABELS = 16
_LABEL_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_LABEL_VALUE = 256
FLEET_PRIORITY = 1000  # JobSpec's bound

Resolver = Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True, slots=True)
class Submission:
    workflow: dict[str, Any]
    metadata: dict[str, str] | str | None
    priority: int | None


def _workflow_error(code: str, message: str) -> V2Error:
    return V2Error(422, code, message)


def is_ui_format(workflow: Mapping[str, Any]) -> bool:
    """A UI export (`nodes` list and `links`), not the API format."""
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def parse_submission(body: Any) -> Submission:
    if not isinstance(body, dict):
        raise invalid("body", "must be a JSON object")
    if body.get("webhook_url") is not None or body.get("inputs") is not None:
        raise _workflow_error(
            "invalid_workflow", "'webhook_url' and 'inputs' are reserved and not accepted."
        )
    workflow = body.get("workflow")
    if not isinstance(workflow, dict):
        raise _workflow_error("invalid_workflow", "Missing 'workflow' (API-format graph).")
    if is_ui_format(workflow):
        raise _workflow_error(
            "workflow_format_ui",
            "This is a UI-export graph. Export the workflow in API format instead.",
        )
    _check_extra_data(body.get("extra_data"))
    return Submission(workflow, _labels(body.get("metadata")), _priority(body.get("priority")))


def _check_extra_data(extra: Any) -> None:
    if extra is None:
        return
    if not isinstance(extra, dict) or set(extra) - {"api_key_comfy_org"}:
        raise invalid("extra_data", "accepts only the 'api_key_comfy_org' field.")
    if "api_key_comfy_org" in extra and not isinstance(extra["api_key_comfy_org"], str):
        raise invalid("extra_data.api_key_comfy_org", "must be a string.")


def _labels(raw: Any) -> dict[str, str] | str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        if len(raw.encode()) > MAX_LABEL_BYTES:
            raise V2Error(422, "invalid_request", f"'metadata' exceeds {MAX_LABEL_BYTES} bytes.")
        return raw
    if not isinstance(raw, dict):
        raise V2Error(422, "metadata_invalid", "'metadata' must be a map of string labels.")
    if len(raw) > MAX_LABELS:
        raise V2Error(
            422, "metadata_invalid", f"'metadata' has {len(raw)} pairs; at most {MAX_LABELS}."
        )
    for key, value in raw.items():
        if not _LABEL_KEY.match(key):
            raise V2Error(
                422,
                "metadata_invalid",
                f"metadata key {key[:80]!r} must be 1-64 of A-Z a-z 0-9 _ . : -",
                {"key": key[:80]},
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            raise V2Error(
                422,
                "metadata_invalid",
                f"metadata[{key}] must be a string of at most {MAX_LABEL_VALUE} characters",
                {"key": key},
            )
    return dict(raw)


def _priority(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise V2Error(422, "invalid_request", "'priority' must be an integer.")
    if not -MAX_PRIORITY <= raw <= MAX_PRIORITY:
        raise V2Error(
            422,
            "invalid_request",
            f"'priority' must be between {-MAX_PRIORITY} and {MAX_PRIORITY}.",
        )
    return raw


def fleet_priority(priority: int | None) -> int:
    """v2's priority as the fleet's scheduler takes it (its range is ±1000)."""
    return max(-FLEET_PRIORITY, min(FLEET_PRIORITY, priority or 0))


def _is_asset_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("__type") == "core/ASSET"


def resolve_assets(node: Any, resolve: Resolver) -> tuple[Any, list[str]]:
    """The graph with every asset reference replaced by what `resolve` names, and the ids of
    those that did not resolve (a reference with no `info` object among them)."""
    missing: list[str] = []

    def walk(value: Any, depth: int) -> Any:
        if depth > 64:
            raise invalid("workflow", "is nested too deeply")
        if _is_asset_ref(value):
            info = value.get("info")
            name = resolve(info) if isinstance(info, Mapping) else None
            if name is None:
                ident = info.get("id") if isinstance(info, Mapping) else None
                missing.append(str(ident) if ident is not None else "<malformed core/ASSET>")
                return value
            return name
        if isinstance(value, dict):
            return {k: walk(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, depth + 1) for v in value]
        return value

    return walk(node, 0), missing
