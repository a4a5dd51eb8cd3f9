"""One prompt's WebSocket stream, replayed from what the agents forward (pure, no I/O).

The agent forwards ComfyUI's own event payloads for a facade job (JobEvent kind `comfy`, its
`data` the text frame as ComfyUI sent it) plus preview images and text frames. `PromptStream`
turns them into the frames the prompt's client gets, rewriting only what must change: the agent's
prompt_id becomes the client's, file references name the job (files.job_file_ref).

Two things only the coordinator knows decide the end of a prompt, so the end is held back:

* the files an `executed` frame names exist on the coordinator only once the job COMPLETED
  (outputs stored and verified), and
* an attempt that failed may be retried elsewhere (out of memory, agent lost): its
  `execution_error` must not reach the client, which sees one run.

So from the first `executed` frame that names files, or the first terminal frame (success, error,
interrupted, `executing` with `node: null`), everything of that attempt is held; `end(job)` emits
the held frames with the ending the job really had, and frames ComfyUI would have sent that never
arrived (events are best effort) are made from the job record. A new attempt drops what the old
one held and does not start the prompt again (no second `execution_start`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from comfyfleet.coordinator.comfy.files import FileRef, job_file_ref
from comfyfleet.coordinator.comfy.history import (
    comfy_refs,
    error_data,
    interrupted_data,
    stamp,
)
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.protocol import JobEvent
from comfyfleet.shared.status import JobStatus

__all__ = [
    "STATUS",
    "Binary",
    "LegacyOrder",
    "Out",
    "PromptStream",
    "Status",
    "Text",
    "rewrite",
]

_TERMINAL_TYPES = ("execution_success", "execution_error", "execution_interrupted")


@dataclass(frozen=True, slots=True)
class Text:
    """A text frame: `{"type": ..., "data": {...}}`."""

    msg: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.msg.get("type"))


@dataclass(frozen=True, slots=True)
class Binary:
    """A binary frame: a preview image (type 1, or 4 with metadata) or a node's text (type 3)."""

    kind: Literal["preview", "text"]
    node: str | None
    payload: bytes = field(repr=False)
    mime: str = "image/jpeg"


@dataclass(frozen=True, slots=True)
class Status:
    """Here ComfyUI sends `status`: the hub fills in the caller's queue_remaining."""


STATUS = Status()
Out = Text | Binary | Status


def rewrite(msg: Mapping[str, Any], prompt_id: str, job_id: str) -> dict[str, Any]:
    """A frame as the client sees it: prompt ids are the client's, files name the job."""
    data = msg.get("data")
    if not isinstance(data, Mapping):
        return dict(msg)
    new = dict(data)
    if "prompt_id" in new:
        new["prompt_id"] = prompt_id
    nodes = new.get("nodes")
    if isinstance(nodes, Mapping):
        new["nodes"] = {
            k: ({**v, "prompt_id": prompt_id} if isinstance(v, Mapping) and "prompt_id" in v else v)
            for k, v in nodes.items()
        }
    output = new.get("output")
    if msg.get("type") == "executed" and isinstance(output, Mapping):
        new["output"] = {key: _rename_files(value, job_id) for key, value in output.items()}
    return {**msg, "data": new}


def _rename_files(value: Any, job_id: str) -> Any:
    if not isinstance(value, list):
        return value
    out = []
    for item in value:
        if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
            ref = FileRef(
                item["filename"], str(item.get("subfolder") or ""), str(item.get("type") or "")
            )
            out.append({**item, **job_file_ref(job_id, ref).as_dict()})
        else:
            out.append(item)
    return out


def _names_files(msg: Mapping[str, Any]) -> bool:
    data = msg.get("data")
    output = data.get("output") if isinstance(data, Mapping) else None
    if not isinstance(output, Mapping):
        return False
    return any(
        isinstance(v, list) and any(isinstance(i, Mapping) and "filename" in i for i in v)
        for v in output.values()
    )


def _is_end(msg: Mapping[str, Any]) -> bool:
    data = msg.get("data")
    return msg.get("type") == "executing" and isinstance(data, Mapping) and data.get("node") is None


class PromptStream:
    """The frames of one facade job for its client, across attempts."""

    def __init__(self, job_id: str, prompt_id: str, started: bool = False) -> None:
        self.job_id = job_id
        self.prompt_id = prompt_id
        self.started = started  # execution_start went out (or went out before a restart)
        self.cached_sent = started
        self.attempt = 0
        self.holding = False
        self.held: list[Out] = []
        self.done = False
        self.node: str | None = None  # the node running now (for a reconnecting client)

    # -- live frames ----------------------------------------------------------------------

    def feed(self, attempt: int, event: JobEvent) -> list[Out]:
        if self.done or attempt < self.attempt:
            return []
        if attempt > self.attempt:
            if self.attempt:  # a retry: what the old attempt held never happened for the client
                self.held.clear()
                self.holding = False
            self.attempt = attempt
        out = self._frame(event)
        if out is None:
            return []
        if isinstance(out, Binary):
            return [] if self.holding else [out]  # previews are transient: none while holding
        kind = out.type
        if kind == "execution_start":
            if self.started:
                return []
            self.started = True
        elif kind == "execution_cached":
            if self.cached_sent:
                return []
            self.cached_sent = True
            self.started = True
        elif kind == "executing":
            node = out.msg["data"].get("node")
            self.node = None if node is None else str(node)
        if not self.started and kind != "execution_start":
            self.started = True  # joined mid-run (after a coordinator restart)
        if self.holding or kind in _TERMINAL_TYPES or _is_end(out.msg) or _names_files(out.msg):
            self.holding = True
            self._hold(out)
            return []
        return [out]

    def _hold(self, out: Text) -> None:
        """Held frames stay few: a `progress` is dropped (the next state says more) and a
        `progress_state` (cumulative) replaces the one held before it."""
        if out.type == "progress":
            return
        if out.type == "progress_state":
            self.held = [f for f in self.held if not (isinstance(f, Text) and f.type == out.type)]
        self.held.append(out)

    def _frame(self, event: JobEvent) -> Text | Binary | None:
        if event.kind == "comfy":
            msg = event.data
            if not isinstance(msg, Mapping) or not isinstance(msg.get("type"), str):
                return None
            return Text(rewrite(msg, self.prompt_id, self.job_id))
        if event.kind == "preview" and event.image is not None:
            return Binary("preview", event.node, event.image, event.mime or "image/jpeg")
        if event.kind == "text" and event.text is not None and event.node is not None:
            return Binary("text", event.node, event.text.encode(), "text/plain")
        return None

    # -- the end --------------------------------------------------------------------------

    def end(self, job: JobRecord) -> list[Out]:
        """The rest of the stream once the job reached its terminal status."""
        if self.done:
            return []
        self.done = True
        status = job.status
        ran = self.started or JobStatus.RUNNING.value in job.timestamps
        if status == JobStatus.CANCELLED and not ran:
            return [STATUS]  # removed while it waited: ComfyUI only updates the queue count
        out: list[Out] = []
        pid = self.prompt_id
        if not self.started:
            t = stamp(job.timestamps.get(JobStatus.RUNNING.value, job.updated_at))
            out.append(_text("execution_start", {"prompt_id": pid, "timestamp": t}))
            out.append(_text("execution_cached", {"nodes": [], "prompt_id": pid, "timestamp": t}))
        held = [f for f in self.held if isinstance(f, Text)]
        body = [f for f in held if f.type not in _TERMINAL_TYPES and not _is_end(f.msg)]
        ending = next((f for f in held if f.type in _TERMINAL_TYPES), None)
        end_frame = next((f for f in held if _is_end(f.msg)), None)
        if status == JobStatus.COMPLETED:
            out.extend(body)
            out.extend(self._missing_executed(job, body))
            if ending is None or ending.type != "execution_success":
                t = stamp(job.timestamps.get(JobStatus.COMPLETED.value, job.updated_at))
                ending = _text("execution_success", {"prompt_id": pid, "timestamp": t})
        else:
            out.extend(f for f in body if not _names_files(f.msg))
            want = "execution_error" if status == JobStatus.FAILED else "execution_interrupted"
            if ending is None or ending.type != want:
                node_type = _node_type(job, self.node)
                data = (
                    error_data(job, pid)
                    if want == "execution_error"
                    else interrupted_data(job, pid, self.node, node_type)
                )
                ending = _text(want, data)
        out.append(ending)
        out.append(STATUS)
        out.append(end_frame or _text("executing", {"node": None, "prompt_id": pid}))
        self.held.clear()
        self.node = None
        return out

    def _missing_executed(self, job: JobRecord, sent: list[Text]) -> list[Out]:
        """`executed` for output nodes whose frame never arrived (made from the stored files)."""
        covered = {
            str(f.msg["data"].get("node")) for f in sent if f.type == "executed" and "data" in f.msg
        }
        by_node: dict[str, dict[str, list[dict[str, str]]]] = {}
        for node, key, ref, _ in comfy_refs(job):
            if node and node not in covered:
                files = by_node.setdefault(node, {}).setdefault(key, [])
                files.append(job_file_ref(job.id, ref).as_dict())
        return [
            _text(
                "executed",
                {"node": node, "display_node": node, "output": output, "prompt_id": self.prompt_id},
            )
            for node, output in by_node.items()
        ]


class LegacyOrder:
    """ComfyUI sends a node's image before its `progress` frame to clients that asked for
    preview metadata (type 4, sent at once) and after it to the others (type 1, queued). The
    agent always asks for metadata, so for a legacy client a preview waits for the next frame
    and goes out after it when that frame is its `progress`."""

    def __init__(self) -> None:
        self.held: Binary | None = None

    def push(self, out: Out) -> list[Out]:
        if isinstance(out, Binary) and out.kind == "preview":
            earlier, self.held = self.held, out
            return [earlier] if earlier is not None else []
        held, self.held = self.held, None
        if held is None:
            return [out]
        if isinstance(out, Text) and out.type == "progress":
            return [out, held]
        return [held, out]

    def flush(self) -> list[Out]:
        held, self.held = self.held, None
        return [held] if held is not None else []


def _text(kind: str, data: dict[str, Any]) -> Text:
    return Text({"type": kind, "data": data})


def _node_type(job: JobRecord, node: str | None) -> str | None:
    entry = job.spec.workflow.get(node) if node is not None else None
    return entry.get("class_type") if isinstance(entry, Mapping) else None
