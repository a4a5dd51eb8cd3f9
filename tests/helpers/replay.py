"""Replaying the recorded ComfyUI sessions (tests/fixtures/comfyui-traces) against a server that
speaks ComfyUI (the simulator, the coordinator's ComfyUI facade) and comparing what it answers:
the same event order, key sets and normalised values (comfyfleet.sim.recording).

`view` turns the server's frames into what is compared (the facade's file names carry the job:
it takes that off again); the simulator's frames are compared as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfyfleet.sim.recording import event_types, normalise, shape
from comfyfleet.sim.testing import SimSocket

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"
View = Callable[[Any], Any]


def same(value: Any) -> Any:
    return value


def load(name: str) -> Any:
    return json.loads((TRACES / name).read_text())


def labels(*pairs: tuple[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """({recorded id: label}, {the server's id: label})."""
    rec = {r: f"<P{i}>" for i, (r, _) in enumerate(pairs)}
    got = {s: f"<P{i}>" for i, (_, s) in enumerate(pairs)}
    return rec, got


def assert_same_stream(
    recorded: list[dict[str, Any]],
    got: list[dict[str, Any]],
    ids: tuple[dict[str, str], dict[str, str]],
    view: View = same,
) -> None:
    assert event_types(got) == event_types(recorded)
    for rec, frame in zip(recorded, got, strict=True):
        assert shape(frame["msg"]) == shape(rec["msg"]), rec["msg"]
        assert normalise(view(frame["msg"]), ids[1]) == normalise(rec["msg"], ids[0])


def history_view(body: dict[str, Any], ids: dict[str, str], view: View = same) -> Any:
    """A /history answer normalised; the prompt number depends on the session, so it is 0."""
    out = normalise(view(body), ids)
    for entry in out.values():
        entry["prompt"][0] = 0
    return out


async def post(client: Any, body: Any) -> tuple[int, Any]:
    resp = await client.post("/prompt", json=body)
    return resp.status, await resp.json()


async def run_recorded(
    client: Any, sock: SimSocket, trace: dict[str, Any], wait_s: float = 10.0
) -> tuple[str, list[dict[str, Any]]]:
    status, body = await post(client, trace["post"]["request_json"])
    assert status == trace["post"]["status"] == 200, body
    assert shape(body) == shape(trace["post"]["json"])
    return body["prompt_id"], await sock.wait_done(body["prompt_id"], wait_s)


async def compare_history(
    client: Any, trace: dict[str, Any], pid: str, view: View = same
) -> dict[str, Any]:
    resp = await client.get(f"/history/{pid}")
    assert resp.status == 200
    got = await resp.json()
    rec_pid = trace["post"]["json"]["prompt_id"]
    ids = labels((rec_pid, pid))
    assert shape(got[pid]) == shape(trace["history"]["json"][rec_pid])
    assert history_view(got, ids[1], view) == history_view(trace["history"]["json"], ids[0])
    entry: dict[str, Any] = got[pid]
    return entry


def reconnect_prompt(color: int) -> dict[str, Any]:
    """24_reconnect_same_clientid's graph: slow enough (2048² blurs) to reconnect mid-run."""
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 2048, "height": 2048, "batch_size": 1, "color": color}},
        "10": {"class_type": "ImageBlur",
               "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0}},
        "11": {"class_type": "ImageBlur",
               "inputs": {"image": ["10", 0], "blur_radius": 31, "sigma": 10.0}},
        "99": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }  # fmt: skip
