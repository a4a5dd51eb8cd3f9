"""A server that speaks ComfyUI as the replay cases (tests/helpers/replay.py) see it, and the
comparisons they make with the recorded sessions (tests/fixtures/comfyui-traces): the same event
order, key sets and normalised values (comfyfleet.sim.recording).

`Target.view` turns the target's answers into ComfyUI's (the facade's file names carry the job: it
takes that off again); the simulator's are compared as they are.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from PIL import Image

from comfyfleet.sim.recording import event_types, normalise, shape
from comfyfleet.sim.testing import SimSocket

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"
View = Callable[[Any], Any]


def same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Target:
    """A server that speaks ComfyUI, as the cases see it.

    `copies_outputs`: each job serves its own copy of its outputs (the facade), where ComfyUI
    hands a cached rerun the same file. `dedupes_prompt_ids`: a second POST /prompt with a
    prompt_id it knows answers that prompt again instead of queueing a run. `output_dir`: the
    folder the target saves outputs in, where the test can see it (the simulator's).
    """

    name: str
    http: Any  # an aiohttp ClientSession or TestClient on the target's address
    wait_s: float
    view: View = same
    copies_outputs: bool = False
    dedupes_prompt_ids: bool = False
    output_dir: Path | None = None


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


async def get_json(t: Target, path: str) -> Any:
    return await (await t.http.get(path)).json()


async def connect(t: Target, client_id: str) -> SimSocket:
    sock = await SimSocket.connect(t.http, client_id)
    await sock.read()  # status with sid
    return sock


async def run_recorded(
    t: Target, sock: SimSocket, trace: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    status, body = await post(t.http, trace["post"]["request_json"])
    assert status == trace["post"]["status"] == 200, body
    assert shape(body) == shape(trace["post"]["json"])
    return body["prompt_id"], await sock.wait_done(body["prompt_id"], t.wait_s)


async def replay_stream(
    t: Target, sock: SimSocket, trace: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    """Post the recorded prompt and compare its stream with the recording's `ws`."""
    pid, frames = await run_recorded(t, sock, trace)
    ids = labels((trace["post"]["json"]["prompt_id"], pid))
    assert_same_stream(trace["ws"], frames, ids, t.view)
    return pid, frames


async def compare_history(t: Target, trace: dict[str, Any], pid: str) -> dict[str, Any]:
    got = await get_json(t, f"/history/{pid}")
    rec_pid = trace["post"]["json"]["prompt_id"]
    ids = labels((rec_pid, pid))
    assert shape(got[pid]) == shape(trace["history"]["json"][rec_pid])
    assert history_view(got, ids[1], t.view) == history_view(trace["history"]["json"], ids[0])
    entry: dict[str, Any] = got[pid]
    return entry


def recorded_ref(path: str) -> dict[str, str]:
    """A recorded `/view?…` path as the file reference ComfyUI's history gives."""
    return dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))


async def view_image(
    t: Target, ref: dict[str, str], recorded: dict[str, Any] | None = None
) -> Image.Image:
    """The image /view serves for `ref`: a PNG, or as `recorded` (status, type, first bytes)."""
    resp = await t.http.get("/view", params=ref)
    data = await resp.read()
    assert resp.status == 200 and resp.content_type == "image/png", (resp.status, ref)
    if recorded is not None:
        assert resp.content_type == recorded["content_type"]
        assert data[:16].hex() == recorded["head_hex"]
    return Image.open(io.BytesIO(data))


def saved_files(t: Target) -> list[str]:
    assert t.output_dir is not None
    return sorted(p.name for p in t.output_dir.iterdir())
