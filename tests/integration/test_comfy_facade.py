"""The recorded ComfyUI sessions replayed against the fleet's ComfyUI facade.

A coordinator with `--comfy-listen`, one simulated ComfyUI and its agent, as real processes. For
every recording: the same requests to the facade, then the same HTTP statuses and bodies, the
same WebSocket event types in the same order, the same key sets and the same values once ids,
timestamps and host paths are normalised (as tests/integration/test_sim_fidelity.py compares the
simulator) -- and, beyond the recordings, the file names the facade gives (the job leads the
subfolder) are served by its /view.
"""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from PIL import Image

from comfyfleet.sim.recording import collapse_node_runs, event_types, normalise, shape, text_types
from comfyfleet.sim.testing import SimSocket
from tests.helpers import procs, replay
from tests.helpers.fleet import Fleet, running_fleet
from tests.helpers.replay import labels, load, post, reconnect_prompt

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CLIENT = "probe-c4cb5ea7"
CLIENT2 = "probe2-01e5c542"
_JOB_SUB = re.compile(r'"subfolder": "comfy-[0-9a-f]{32}/?')


@dataclass
class Facade:
    fleet: Fleet
    url: str


@pytest.fixture(scope="module")
def facade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facade]:
    tmp = tmp_path_factory.mktemp("facade")
    port = procs.free_port()
    args = ["--heartbeat-interval", "0.5", "--restart-grace", "3", "--comfy-listen",
            f"127.0.0.1:{port}"]  # fmt: skip
    with running_fleet(tmp, args) as fleet:
        fleet.add_sim("s1", 24576, "--step-ms", "5")
        fleet.add_agent("s1", "s1")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # the agent has described its ComfyUI
            with urllib.request.urlopen(f"{url}/object_info/SaveImage", timeout=5) as resp:
                if json.loads(resp.read()):
                    break
            assert time.monotonic() < deadline, fleet.logs()
            time.sleep(0.1)
        yield Facade(fleet, url)


@pytest.fixture
async def http(facade: Facade) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=facade.url) as session:
        yield session


def unjob(value: Any) -> Any:
    """The facade's file names as ComfyUI's (the job id taken off the subfolder)."""
    return json.loads(_JOB_SUB.sub('"subfolder": "', json.dumps(value)))


def assert_same_stream(
    recorded: list[dict[str, Any]], got: list[dict[str, Any]], ids: tuple[dict[str, str], ...]
) -> None:
    replay.assert_same_stream(recorded, got, (ids[0], ids[1]), unjob)


def history_view(body: dict[str, Any], ids: dict[str, str]) -> Any:
    return replay.history_view(body, ids, unjob)


async def connect(http: aiohttp.ClientSession, client_id: str) -> SimSocket:
    sock = await SimSocket.connect(http, client_id)
    await sock.read()  # status with sid
    return sock


async def run_recorded(
    http: aiohttp.ClientSession, sock: SimSocket, trace: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    return await replay.run_recorded(http, sock, trace, 30)


async def compare_history(
    http: aiohttp.ClientSession, trace: dict[str, Any], pid: str
) -> dict[str, Any]:
    return await replay.compare_history(http, trace, pid, unjob)


async def image_at(http: aiohttp.ClientSession, ref: dict[str, str]) -> Image.Image:
    resp = await http.get("/view", params=ref)
    assert resp.status == 200 and resp.content_type == "image/png"
    return Image.open(io.BytesIO(await resp.read()))


# --- 00, 01, 02, 03 ---------------------------------------------------------------------


async def test_ws_connect_greeting(http: aiohttp.ClientSession) -> None:
    sock = await SimSocket.connect(http, CLIENT)
    frame = await sock.read()
    assert frame is not None and [frame["msg"]] == [f["msg"] for f in load("00_ws_connect.json")]


async def test_normal_then_cached_rerun(http: aiohttp.ClientSession) -> None:
    normal, cached = load("01_normal.json"), load("02_cached_rerun.json")
    sock = await connect(http, CLIENT)
    pid, frames = await run_recorded(http, sock, normal)
    assert_same_stream(normal["ws"], frames, labels((normal["post"]["json"]["prompt_id"], pid)))
    first = await compare_history(http, normal, pid)
    img = await image_at(http, first["outputs"]["3"]["images"][0])
    assert img.size == (512, 512)

    pid2, frames2 = await run_recorded(http, sock, cached)
    assert_same_stream(cached["ws"], frames2, labels((cached["post"]["json"]["prompt_id"], pid2)))
    second = await compare_history(http, cached, pid2)
    assert unjob(second["outputs"]) == unjob(first["outputs"])  # ComfyUI's names, kept
    assert second["outputs"] != first["outputs"]  # each job serves its own copy


async def test_scale_writes_real_pngs_in_a_subfolder(http: aiohttp.ClientSession) -> None:
    trace = load("03_scale.json")
    sock = await connect(http, CLIENT)
    pid, frames = await run_recorded(http, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    entry = await compare_history(http, trace, pid)
    images = entry["outputs"]["3"]["images"]
    assert [i["filename"] for i in images] == ["scale_00001_.png", "scale_00002_.png"]
    assert all(i["subfolder"].endswith("/probe") for i in images)
    for ref in images:
        assert (await image_at(http, ref)).size == (640, 320)


# --- 04, 05, 05b, 22: previews, temp files, binary frames --------------------------------


async def test_preview_temp_files_and_view(http: aiohttp.ClientSession) -> None:
    trace = load("04_preview.json")
    sock = await connect(http, CLIENT)
    pid, frames = await run_recorded(http, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    entry = await compare_history(http, trace, pid)
    image = entry["outputs"]["2"]["images"][0]
    assert image["type"] == "temp"
    assert (await http.get("/view", params=image)).status == 200
    missing = await http.get(trace["view_missing"]["path"])
    assert missing.status == 404 and await missing.read() == b""
    webp = await http.get("/view", params={**image, "preview": "webp;50"})
    assert webp.status == 200 and webp.content_type == "image/webp"
    body = await webp.read()
    assert body[:4] == b"RIFF" and body[8:12] == b"WEBP"


async def test_binary_previews_legacy_type_1(http: aiohttp.ClientSession) -> None:
    trace = load("05_ws_binary_legacy.json")
    sock = await connect(http, CLIENT)
    pid, frames = await run_recorded(http, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    binaries = [f["msg"] for f in frames if f["kind"] == "binary"]
    assert [b["binary_event"] for b in binaries] == [1, 1]
    assert all(b["image_type"] == 2 and b["image_magic"] == "89504e470d0a1a0a" for b in binaries)


async def test_binary_previews_with_feature_flags_type_4(http: aiohttp.ClientSession) -> None:
    trace = load("05b_ws_binary_featureflags.json")
    client_id = trace["post"]["request_json"]["client_id"]
    sock = await SimSocket.connect(http, client_id)
    await sock.ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    await sock.read()
    await sock.read()
    pid, _ = await run_recorded(http, sock, trace)
    assert_same_stream(trace["ws"], sock.frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    meta = [f["msg"]["metadata"] for f in sock.frames if f["kind"] == "binary"]
    assert len(meta) == 2 and all(m["image_type"] == "image/png" for m in meta)
    assert all(m["prompt_id"] == pid for m in meta)


async def test_text_frame(http: aiohttp.ClientSession) -> None:
    trace = load("22_text_frame.json")
    sock = await connect(http, CLIENT2)
    pid, frames = await run_recorded(http, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))


# --- 06, 21: validation errors, no WebSocket event -----------------------------------------

VALIDATION_CASES = sorted(
    k for k in load("06_validation_errors.json") if k != "ws_during_validation_errors"
)


@pytest.mark.parametrize("case", VALIDATION_CASES)
async def test_validation_error_bodies(http: aiohttp.ClientSession, case: str) -> None:
    trace = load("06_validation_errors.json")[case]
    status, body = await post(http, trace["request_json"])
    assert status == trace["status"] == 400
    assert shape(body) == shape(trace["json"])
    assert normalise(body) == normalise(trace["json"])


async def test_validation_error_sends_no_ws_event(http: aiohttp.ClientSession) -> None:
    trace = load("21_validation_ws_silence.json")
    sock = await connect(http, trace["post"]["request_json"]["client_id"])
    status, body = await post(http, trace["post"]["request_json"])
    assert (status, body) == (trace["post"]["status"], trace["post"]["json"])
    assert await sock.silent_for(0.5)
    assert sock.frames[1:] == trace["ws"]
    queue = await (await http.get("/queue")).json()
    assert queue == {"queue_running": [], "queue_pending": []}


# --- 07, 23: execution error, partial cache ----------------------------------------------


async def test_execution_error(http: aiohttp.ClientSession) -> None:
    trace = load("07_execution_error.json")
    sock = await connect(http, CLIENT)
    pid, frames = await run_recorded(http, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    entry = await compare_history(http, trace, pid)
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
    error = entry["status"]["messages"][-1][1]
    assert (
        error["node_type"] == "SaveImage"
        and "outside the output folder" in (error["exception_message"])
    )


async def test_partial_cache(http: aiohttp.ClientSession) -> None:
    trace = load("23_partial_cache.json")
    second = trace["second_post"]["request_json"]
    first = json.loads(json.dumps(second))
    first["prompt"]["3"]["inputs"]["filename_prefix"] = "probe_pc_a"
    first["prompt"]["1"]["inputs"]["color"] += 7  # nothing cached from earlier tests
    second["prompt"]["1"]["inputs"]["color"] += 7
    rec_first_pid = trace["first"][2]["msg"]["data"]["prompt_id"]
    sock = await connect(http, CLIENT2)
    _, body = await post(http, first)
    frames = await sock.wait_done(body["prompt_id"], 30)
    assert_same_stream(trace["first"], frames, labels((rec_first_pid, body["prompt_id"])))
    _, body2 = await post(http, second)
    frames2 = await sock.wait_done(body2["prompt_id"], 30)
    ids = labels((trace["second_post"]["json"]["prompt_id"], body2["prompt_id"]))
    assert_same_stream(trace["second"], frames2, ids)


# --- 08, 09: interrupts and the queue ----------------------------------------------------


async def test_global_interrupt(http: aiohttp.ClientSession) -> None:
    trace = load("08_interrupt_global.json")
    sock = await connect(http, CLIENT)
    status, body = await post(http, trace["post"]["request_json"])
    assert status == 200
    pid = body["prompt_id"]
    await sock.wait_executing("10", 30)
    queue = await (await http.get("/queue")).json()
    rec_queue = trace["queue_while_running"]["json"]
    ids = labels((trace["post"]["json"]["prompt_id"], pid))
    queue["queue_running"][0][0] = rec_queue["queue_running"][0][0]
    assert normalise(queue, ids[1]) == normalise(rec_queue, ids[0])

    resp = await http.post("/interrupt")
    assert resp.status == trace["interrupt"]["status"] and await resp.read() == b""
    await sock.wait_done(pid, 30)
    frames = sock.frames[1:]
    assert collapse_node_runs(event_types(frames)) == collapse_node_runs(event_types(trace["ws"]))
    interrupted = frames[-3]["msg"]["data"]
    assert interrupted["node_type"] == "ImageBlur" and interrupted["node_id"] in {"10", "11", "12"}
    history = (await (await http.get(f"/history/{pid}")).json())[pid]
    rec_history = trace["history"]["json"][trace["post"]["json"]["prompt_id"]]
    assert shape(history) == shape(rec_history)
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False
    assert [m[0] for m in history["status"]["messages"]] == [
        m[0] for m in rec_history["status"]["messages"]
    ]
    assert history["outputs"] == {} and history["meta"] == {}


async def test_queue_delete_and_targeted_interrupt(http: aiohttp.ClientSession) -> None:
    trace = load("09_queue_and_targeted_interrupt.json")
    rec_ids = [p["json"]["prompt_id"] for p in trace["posts"]]
    sock = await connect(http, CLIENT)
    pids = []
    for i, rec_post in enumerate(trace["posts"]):
        status, body = await post(http, rec_post["request_json"])
        assert status == 200
        pids.append(body["prompt_id"])
        if i == 0:
            await sock.wait_executing("1", 30)
    ids = labels(*zip(rec_ids, pids, strict=True))

    def same(got: Any, rec: Any) -> None:
        for q in ("queue_running", "queue_pending"):
            for got_item, rec_item in zip(got.get(q, []), rec.get(q, []), strict=True):
                got_item[0] = rec_item[0]
        assert normalise(got, ids[1]) == normalise(rec, ids[0])

    same(await (await http.get("/queue")).json(), trace["queue_running"]["json"])
    assert await (await http.get("/prompt")).json() == trace["get_prompt"]["json"]
    resp = await http.post("/queue", json={"delete": [pids[2]]})
    assert resp.status == 200 and await resp.read() == b""
    same(await (await http.get("/queue")).json(), trace["queue_after_delete"]["json"])
    assert (await http.post("/interrupt", json={"prompt_id": pids[1]})).status == 200  # waits
    assert (await http.post("/interrupt", json={"prompt_id": pids[0]})).status == 200
    await sock.wait_done(pids[1], 30)
    frames = sock.frames[1:]
    assert collapse_node_runs(text_types(f for f in frames if f["msg"]["type"] != "status")) == (
        collapse_node_runs(text_types(f for f in trace["ws"] if f["msg"]["type"] != "status"))
    )
    hist_a = (await (await http.get(f"/history/{pids[0]}")).json())[pids[0]]
    rec_a = trace["history_A_interrupted"]["json"][rec_ids[0]]
    assert shape(hist_a) == shape(rec_a)
    assert [m[0] for m in hist_a["status"]["messages"]] == [
        m[0] for m in rec_a["status"]["messages"]
    ]
    hist_b = await (await http.get(f"/history/{pids[1]}")).json()
    assert history_view(hist_b, ids[1]) == history_view(trace["history_B"]["json"], ids[0])
    assert await (await http.get(f"/history/{pids[2]}")).json() == {}
    assert await (await http.get("/queue")).json() == trace["queue_end"]["json"]


# --- 10 miscellaneous HTTP, 24 reconnect --------------------------------------------------


async def test_system_stats_features_object_info(http: aiohttp.ClientSession) -> None:
    misc = load("10_misc.json")
    stats = await (await http.get("/system_stats")).json()
    rec = misc["system_stats"]["json"]
    assert stats["system"].keys() == rec["system"].keys()
    assert stats["devices"][0].keys() == rec["devices"][0].keys()
    assert len(stats["devices"]) == 1 and stats["devices"][0]["type"] == "cuda"
    assert await (await http.get("/features")).json() == misc["features"]["json"]
    info = await (await http.get("/api/object_info")).json()
    for name in ("EmptyImage", "SaveImage"):
        assert info[name] == misc["object_info_summary"][name]
        one = await (await http.get(f"/api/object_info/{name}")).json()
        assert one == {name: misc["object_info_summary"][name]}
    assert await (await http.get("/object_info/NoSuchNode")).json() == {}
    assert "checkpoints" in await (await http.get("/models")).json()
    assert (await http.get("/models/nope")).status == 404


async def test_misc_queue_history_interrupt_idle(http: aiohttp.ClientSession) -> None:
    misc = load("10_misc.json")
    unknown = await http.get("/history/not-a-real-id")
    assert unknown.status == 200 and await unknown.json() == misc["history_unknown"]["json"]
    resp = await http.post("/interrupt", json={})
    assert resp.status == misc["interrupt_empty_json"]["status"] and await resp.read() == b""


async def test_upload_and_load_image(http: aiohttp.ClientSession) -> None:
    misc = load("10_misc.json")
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png, format="PNG")

    def named(data: bytes) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("image", data, filename="probe_upload.png", content_type="image/png")
        return form

    async def send(form: Any) -> tuple[int, Any]:
        resp = await http.post("/upload/image", data=form)
        return resp.status, (await resp.json() if resp.status == 200 else None)

    assert await send(named(png.getvalue())) == (200, misc["upload_image"]["json"])
    assert await send(named(png.getvalue())) == (
        200,
        misc["upload_image_again_no_overwrite"]["json"],
    )
    form = named(png.getvalue())
    form.add_field("subfolder", "probe_sub")
    assert await send(form) == (200, misc["upload_image_subfolder"]["json"])
    other = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(other, format="PNG")
    assert await send(named(other.getvalue())) == (
        200, {"name": "probe_upload (1).png", "subfolder": "", "type": "input"})  # fmt: skip
    no_image = await http.post("/upload/image", data={"type": "input"})
    assert no_image.status == misc["upload_no_image"]["status"]
    view = await http.get(misc["view_uploaded_input"]["path"])
    assert view.status == 200 and view.content_type == "image/png"

    run = misc["loadimage_run"]
    sock = await connect(http, CLIENT)
    status, body = await post(http, run["post"]["request_json"])
    assert status == 200, body
    frames = await sock.wait_done(body["prompt_id"], 30)
    assert_same_stream(run["ws"], frames, labels((run["post"]["json"]["prompt_id"],
                                                  body["prompt_id"])))  # fmt: skip
    entry = (await (await http.get(f"/history/{body['prompt_id']}")).json())[body["prompt_id"]]
    ref = next(iter(entry["outputs"].values()))["images"][0]
    assert (await image_at(http, ref)).size == (8, 8)
    # an upload in a subfolder travels to the agent too
    sub = json.loads(json.dumps(run["post"]["request_json"]))
    load_node = next(n for n in sub["prompt"].values() if n["class_type"] == "LoadImage")
    load_node["inputs"]["image"] = "probe_sub/probe_upload.png"
    status, body = await post(http, sub)
    assert status == 200, body
    await sock.wait_done(body["prompt_id"], 30)
    entry = (await (await http.get(f"/history/{body['prompt_id']}")).json())[body["prompt_id"]]
    assert entry["status"]["status_str"] == "success"


async def test_client_prompt_id_no_client_and_history_delete(http: aiohttp.ClientSession) -> None:
    misc = load("10_misc.json")
    own = misc["client_supplied_prompt_id"]
    sock = await connect(http, CLIENT)
    other = await connect(http, "someone-else")
    status, body = await post(http, own["post"]["request_json"])
    assert status == 200 and body["prompt_id"] == own["post"]["request_json"]["prompt_id"]
    frames = await sock.wait_done(body["prompt_id"], 30)
    assert event_types(frames) == own["ws_types"]
    again = await post(http, own["post"]["request_json"])  # the same id: the same prompt
    assert again == (200, {**body, "node_errors": {}})

    def idle(frame: dict[str, Any]) -> bool:
        msg = frame["msg"]
        return msg.get("type") == "status" and msg["data"]["status"]["exec_info"] == {
            "queue_remaining": 0
        }

    await other.read_until(idle)
    assert set(event_types(other.frames[1:])) == {"status"}
    other.frames.clear()
    no_client = misc["no_client_id_prompt"]
    status, body = await post(http, no_client["post"]["request_json"])
    assert status == 200
    await other.read_until(idle, 30)
    assert set(event_types(other.frames)) == set(event_types(no_client["ws_seen_by_other_client"]))
    resp = await http.post("/history", json={"delete": [body["prompt_id"]]})
    assert resp.status == misc["history_delete"]["status"] and await resp.read() == b""
    assert await (await http.get(f"/history/{body['prompt_id']}")).json() == {}


async def test_reconnect_same_client_id(http: aiohttp.ClientSession) -> None:
    trace = load("24_reconnect_same_clientid.json")
    rec_pid = trace["before_disconnect"][2]["msg"]["data"]["prompt_id"]
    prompt = reconnect_prompt(77)
    first = await connect(http, CLIENT2)
    _, body = await post(http, {"prompt": prompt, "client_id": CLIENT2})
    pid = body["prompt_id"]
    await first.wait_executing("10", 30)
    ids = labels((rec_pid, pid))
    assert_same_stream(trace["before_disconnect"], first.frames[1:], ids)
    await first.close()
    again = await SimSocket.connect(http, CLIENT2)
    await again.wait_done(pid, 30)
    assert_same_stream(trace["after_reconnect"], again.frames, ids)


async def test_extra_data_reaches_comfyui(http: aiohttp.ClientSession) -> None:
    """The web UI's extra_pnginfo (its workflow) ends up in the PNG, as on one ComfyUI."""
    body = json.loads(json.dumps(load("01_normal.json")["post"]["request_json"]))
    body["prompt"]["1"]["inputs"]["color"] = 4242
    body["extra_data"] = {"extra_pnginfo": {"workflow": {"nodes": [], "version": 0.4}}}
    sock = await connect(http, CLIENT)
    status, answer = await post(http, body)
    assert status == 200
    await sock.wait_done(answer["prompt_id"], 30)
    entry = (await (await http.get(f"/history/{answer['prompt_id']}")).json())[answer["prompt_id"]]
    assert entry["prompt"][3]["extra_pnginfo"] == body["extra_data"]["extra_pnginfo"]
    img = await image_at(http, entry["outputs"]["3"]["images"][0])
    assert json.loads(img.info["workflow"]) == {"nodes": [], "version": 0.4}
