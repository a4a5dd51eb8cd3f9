"""Which refusals of ComfyUI say "this host lacks something" rather than "the workflow is wrong".

A model file missing from this ComfyUI (`value_not_in_list` on a model input) or a node class it
does not have (`invalid_prompt`: "node X does not exist") may well run on another host: the agent
reports them as retryable `missing_model` / `missing_node_class`, and the coordinator blocks the
(agent, workflow) pair and places the job elsewhere. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from comfyfleet.shared import protocol as p
from comfyfleet.shared.workflow_shape import MODEL_INPUTS

_NO_CLASS = re.compile(r"node (?P<cls>\S+) does not exist")


def host_specific(
    rejection: Mapping[str, Any] | None, node_errors: Mapping[str, Any]
) -> p.ErrorInfo | None:
    err = rejection or {}
    match = _NO_CLASS.search(str(err.get("message", "")))
    if err.get("type") == "invalid_prompt" and match:
        cls = match.group("cls").rstrip(".")
        return p.ErrorInfo(
            code="missing_node_class",
            retryable=True,
            message=f"node class {cls} is not installed on this ComfyUI",
            node_type=cls,
            details={"missing": [cls]},
        )
    missing: list[str] = []
    where: tuple[str, str | None] | None = None
    for node_id, entry in node_errors.items():
        if not isinstance(entry, Mapping):
            continue
        for e in entry.get("errors") or ():
            info = e.get("extra_info") if isinstance(e, Mapping) else None
            if not isinstance(info, Mapping) or e.get("type") != "value_not_in_list":
                continue
            if info.get("input_name") in MODEL_INPUTS:
                missing.append(str(info.get("received_value")))
                where = where or (str(node_id), entry.get("class_type"))
    if not missing or where is None:
        return None
    return p.ErrorInfo(
        code="missing_model",
        retryable=True,
        message=f"model file(s) not on this ComfyUI: {', '.join(missing)}",
        node_id=where[0],
        node_type=where[1],
        details={"missing": missing},
    )
