"""PromptStream and the history entries: recorded ComfyUI streams replayed through the facade's
pure core, and properties over random streams with retries and every ending."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator.comfy.history import history_entry, in_history, queue_lists
from comfyfleet.coordinator.comfy.prompts import COMFY
from comfyfleet.coordinator.comfy.stream import STATUS, Binary, PromptStream, Status, Text
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.protocol import JobEvent
from comfyfleet.shared.status import JobStatus
from comfyfleet.sim.recording import normalise, shape

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"
AGENT_PID = "cf-job-1-0a0b0c0d"
JOB = "comfy-" + "a" * 32


def load(name: str) -> Any:
    return json.loads((TRACES / name).read_text())


def facade_job(
    status: JobStatus,
    prompt: dict[str, Any],
    prompt_id: str,
    outputs: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> JobRecord:
    meta = {
        "prompt_id": prompt_id,
        "client_id": "probe-c4cb5ea7",
        "number": 2,
        "extra_data": {"client_id": "probe-c4cb5ea7"},
        "outputs": ["3"],
    }
    timestamps = {"SUBMITTED": 10.0, "QUEUED": 10.0, "RUNNING": 11.0, status.value: 12.0}
    return JobRecord(
        id=JOB,
        spec=JobSpec(workflow=prompt, metadata={COMFY: meta}),
        workflow_hash="h",
        created_at=10.0,
        status=status,
        attempt=1,
        timestamps=kw.pop("timestamps", timestamps),
        outputs=outputs or [],
        **kw,
    )


def agent_events(frames: list[dict[str, Any]], pid: str) -> list[JobEvent]:
    """What an agent forwards for a recorded stream: every text frame but `status` (the
    coordinator makes those), its prompt id the agent's own; binary frames as previews."""
    out = []
    for f in frames:
        if f["kind"] == "binary":
            out.append(
                JobEvent(kind="preview", t=0.0, node=None, image=b"\x89PNG", mime="image/png")
            )
            continue
        msg = json.loads(json.dumps(f["msg"]).replace(pid, AGENT_PID))
        if msg["type"] != "status":
            out.append(JobEvent(kind="comfy", t=0.0, data=msg))
    return out


def frame_types(outs: list[Any]) -> list[str]:
    types = []
    for o in outs:
        if isinstance(o, Status):
            types.append("status")
        elif isinstance(o, Binary):
            types.append("binary:1")
        else:
            types.append(o.type)
    return types


def undo_job_subfolder(msg: Any) -> Any:
    text = json.dumps(msg).replace(f'"subfolder": "{JOB}/', '"subfolder": "')
    return json.loads(text.replace(f'"subfolder": "{JOB}"', '"subfolder": ""'))


STREAMS = ["01_normal.json", "03_scale.json", "04_preview.json", "05_ws_binary_legacy.json",
           "07_execution_error.json", "22_text_frame.json"]  # fmt: skip


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_stream_replays_in_comfyuis_order(name: str) -> None:
    trace = load(name)
    pid = trace["post"]["json"]["prompt_id"]
    prompt = trace["post"]["request_json"]["prompt"]
    ws = [f for f in trace["ws"] if not (f["kind"] == "text" and f["msg"]["type"] == "status")]
    errored = any(f["kind"] == "text" and f["msg"]["type"] == "execution_error" for f in ws)
    stream = PromptStream(JOB, pid)
    outs: list[Any] = []
    for event in agent_events(ws, pid):
        outs.extend(stream.feed(1, event))
    job = facade_job(JobStatus.FAILED if errored else JobStatus.COMPLETED, prompt, pid)
    outs.extend(stream.end(job))
    recorded = [f for f in trace["ws"][2:]]  # the two `status` frames of enqueue and start
    types = [t.replace("binary:3", "binary:1") for t in frame_types(outs)]
    rec_types = ["binary:1" if f["kind"] == "binary" else f["msg"]["type"] for f in recorded]
    assert types == rec_types
    texts = [o.msg for o in outs if isinstance(o, Text)]
    rec_texts = [f["msg"] for f in recorded if f["kind"] == "text" and f["msg"]["type"] != "status"]
    for got, rec in zip(texts, rec_texts, strict=True):
        assert shape(got) == shape(rec)
        assert normalise(undo_job_subfolder(got), {pid: "P"}) == normalise(rec, {pid: "P"})


def test_executed_names_the_job_and_is_held_until_completed() -> None:
    trace = load("01_normal.json")
    pid = trace["post"]["json"]["prompt_id"]
    stream = PromptStream(JOB, pid)
    live = []
    for event in agent_events(trace["ws"], pid):
        live.extend(stream.feed(1, event))
    assert "executed" not in frame_types(live) and "execution_success" not in frame_types(live)
    tail = stream.end(facade_job(JobStatus.COMPLETED, trace["post"]["request_json"]["prompt"], pid))
    executed = next(o.msg for o in tail if isinstance(o, Text) and o.type == "executed")
    image = executed["data"]["output"]["images"][0]
    assert image == {"filename": "probe_invert_00001_.png", "subfolder": JOB, "type": "output"}
    assert executed["data"]["prompt_id"] == pid
    assert stream.end(facade_job(JobStatus.COMPLETED, {}, pid)) == []  # only once


def test_retry_hides_the_failed_attempt() -> None:
    trace = load("07_execution_error.json")
    pid = trace["post"]["json"]["prompt_id"]
    first = agent_events(trace["ws"], pid)
    normal = agent_events(
        load("01_normal.json")["ws"], load("01_normal.json")["post"]["json"]["prompt_id"]
    )
    stream = PromptStream(JOB, pid)
    outs = [o for e in first for o in stream.feed(1, e)]
    outs += [o for e in normal for o in stream.feed(2, e)]
    outs += [o for e in first for o in stream.feed(1, e)]  # late frames of the old attempt
    outs += stream.end(facade_job(JobStatus.COMPLETED, {}, pid))
    types = frame_types(outs)
    assert types.count("execution_start") == 1 and types.count("execution_cached") == 1
    assert "execution_error" not in types
    assert types[-3:] == ["execution_success", "status", "executing"]


def test_ending_made_from_the_record_when_frames_were_lost() -> None:
    prompt = load("01_normal.json")["post"]["request_json"]["prompt"]
    outputs = [{"name": "x.png", "node_id": "3", "kind": "output", "attempt": 1,
                "comfy_ref": {"filename": "ComfyUI_00001_.png", "subfolder": "a",
                              "type": "output", "key": "images"}}]  # fmt: skip
    stream = PromptStream(JOB, "P1")
    tail = stream.end(facade_job(JobStatus.COMPLETED, prompt, "P1", outputs))
    assert frame_types(tail) == ["execution_start", "execution_cached", "executed",
                                 "execution_success", "status", "executing"]  # fmt: skip
    executed = tail[2]
    assert isinstance(executed, Text)
    assert executed.msg["data"]["output"]["images"][0]["subfolder"] == f"{JOB}/a"

    failed = PromptStream(JOB, "P2", started=True)
    err = {"code": "execution_error", "message": "boom", "node_id": "2", "node_type": "X"}
    tail = failed.end(facade_job(JobStatus.FAILED, prompt, "P2", error=err))
    assert frame_types(tail) == ["execution_error", "status", "executing"]
    assert isinstance(tail[0], Text) and tail[0].msg["data"]["node_id"] == "2"

    waiting = PromptStream(JOB, "P3")
    cancelled = facade_job(JobStatus.CANCELLED, prompt, "P3", timestamps={"CANCELLED": 3.0})
    assert waiting.end(cancelled) == [STATUS]


# --- properties -------------------------------------------------------------------------

FRAME_TYPES = ["execution_start", "execution_cached", "executing", "progress", "progress_state",
               "executed_files", "executed_text", "execution_success", "execution_error",
               "execution_interrupted", "end", "preview"]  # fmt: skip


def make_event(kind: str, pid: str) -> JobEvent:
    if kind == "preview":
        return JobEvent(kind="preview", t=0.0, image=b"x", mime="image/jpeg")
    data: dict[str, Any] = {"prompt_id": pid}
    msg_type = kind
    if kind == "executed_files":
        msg_type = "executed"
        data.update(node="3", output={"images": [{"filename": "a.png", "subfolder": "",
                                                  "type": "output"}]})  # fmt: skip
    elif kind == "executed_text":
        msg_type = "executed"
        data.update(node="4", output={"text": ["hi"]})
    elif kind == "end":
        msg_type = "executing"
        data["node"] = None
    elif kind == "executing":
        data["node"] = "2"
    elif kind == "progress_state":
        data["nodes"] = {"2": {"prompt_id": pid, "state": "running"}}
    return JobEvent(kind="comfy", t=0.0, data={"type": msg_type, "data": data})


endings = st.sampled_from([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
runs = st.lists(st.tuples(st.integers(1, 3), st.sampled_from(FRAME_TYPES)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(runs, endings, st.booleans())
def test_stream_properties(run: list[tuple[int, str]], status: JobStatus, started: bool) -> None:
    stream = PromptStream(JOB, "client-pid", started=started)
    outs: list[Any] = []
    for attempt, kind in sorted(run, key=lambda x: x[0]):
        outs.extend(stream.feed(attempt, make_event(kind, "agent-pid")))
    live = list(outs)
    stamps = {"RUNNING": 1.0, status.value: 2.0}
    outs.extend(stream.end(facade_job(status, {}, "client-pid", timestamps=stamps)))
    texts = [o.msg for o in outs if isinstance(o, Text)]
    types = frame_types(outs)
    assert types.count("execution_start") <= 1
    assert all(m["data"].get("prompt_id", "client-pid") == "client-pid" for m in texts)
    # nothing final goes out live: the end is the coordinator's to decide
    assert not any(t in ("execution_success", "execution_error", "execution_interrupted")
                   for t in frame_types(live))  # fmt: skip
    want = {JobStatus.COMPLETED: "execution_success", JobStatus.FAILED: "execution_error",
            JobStatus.CANCELLED: "execution_interrupted"}[status]  # fmt: skip
    assert types[-3:] == [want, "status", "executing"]
    assert texts[-1]["data"]["node"] is None
    assert sum(1 for t in texts if t["type"] == "executing" and t["data"]["node"] is None) == 1
    if status != JobStatus.COMPLETED:
        assert not any(t["type"] == "executed" and "images" in t["data"].get("output", {})
                       for t in texts)  # fmt: skip
    assert stream.feed(9, make_event("executing", "x")) == []


# --- history and queue ------------------------------------------------------------------


def test_history_entry_matches_the_recording() -> None:
    trace = load("01_normal.json")
    pid = trace["post"]["json"]["prompt_id"]
    prompt = trace["post"]["request_json"]["prompt"]
    outputs = [{"name": "probe_invert_00001_.png", "node_id": "3", "kind": "output",
                "comfy_ref": {"filename": "probe_invert_00001_.png", "subfolder": "",
                              "type": "output", "key": "images"}}]  # fmt: skip
    entry = history_entry(facade_job(JobStatus.COMPLETED, prompt, pid, outputs))
    assert entry is not None
    rec = trace["history"]["json"]
    assert shape(entry) == shape(rec)
    got = undo_job_subfolder(entry)
    got[pid]["prompt"][0] = rec[pid]["prompt"][0]
    assert normalise(got, {pid: "P"}) == normalise(rec, {pid: "P"})


def test_history_only_for_prompts_that_ran_to_an_end() -> None:
    prompt = {"1": {"class_type": "X", "inputs": {}}}
    assert history_entry(facade_job(JobStatus.RUNNING, prompt, "p")) is None
    waiting = facade_job(JobStatus.CANCELLED, prompt, "p", timestamps={"CANCELLED": 1.0})
    assert not in_history(waiting) and history_entry(waiting) is None
    interrupted = history_entry(facade_job(JobStatus.CANCELLED, prompt, "p"))
    assert interrupted is not None
    status = interrupted["p"]["status"]
    assert (status["status_str"], status["completed"]) == ("error", False)
    assert [m[0] for m in status["messages"]][-1] == "execution_interrupted"
    plain = JobRecord(id="j", spec=JobSpec(workflow=prompt), workflow_hash="h", created_at=1.0,
                      status=JobStatus.COMPLETED)  # fmt: skip
    assert history_entry(plain) is None  # a /v1 job is not a prompt


def test_queue_lists_running_and_pending_by_number() -> None:
    trace = load("09_queue_and_targeted_interrupt.json")
    jobs = []
    for i, (post, status) in enumerate(
        zip(trace["posts"], [JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.ASSIGNED], strict=True)
    ):
        job = facade_job(status, post["request_json"]["prompt"], post["json"]["prompt_id"])
        job.spec.metadata[COMFY]["number"] = (
            trace["queue_running"]["json"]["queue_running"][0][0] + i
        )
        job.spec.metadata[COMFY]["outputs"] = ["99"] if i == 0 else ["3"]
        jobs.append(job)
    assert queue_lists(reversed(jobs)) == trace["queue_running"]["json"]


def test_held_frames_stay_few() -> None:
    stream = PromptStream(JOB, "p", started=True)
    stream.feed(1, make_event("executed_files", "a"))  # holding from here
    for _ in range(1000):
        stream.feed(1, make_event("progress", "a"))
        stream.feed(1, make_event("progress_state", "a"))
    assert len(stream.held) == 2
