"""Replays the recorded ComfyUI 0.3.64 sessions against the simulator and compares.

For every recording: the same requests, then the same HTTP statuses and bodies, the same
WebSocket event types in the same order, the same key sets (recursively) and the same values once
ids, timestamps, temp-file suffixes and host paths are normalised (sim/recording.py).
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from comfyfleet.sim.config import SimConfig
from comfyfleet.sim.recording import (
    collapse_node_runs,
    event_types,
    normalise,
    shape,
    text_types,
)
from comfyfleet.sim.server import create_app
from comfyfleet.sim.testing import SimSocket
from tests.helpers.replay import (
    assert_same_stream,
    compare_history,
    history_view,
    labels,
    load,
    post,
    reconnect_prompt,
    run_recorded,
)

CLIENT = "probe-c4cb5ea7"
CLIENT2 = "probe2-01e5c542"


@pytest.fixture
def config(tmp_path: Path) -> SimConfig:
    return SimConfig.for_data_dir(tmp_path, step_ms=2, node_ms=0.5, load_ms_per_gb=5, seed=1)


@pytest.fixture
async def client(aiohttp_client: Any, config: SimConfig) -> Any:
    exits: list[int] = []
    return await aiohttp_client(create_app(config, exit_fn=exits.append))


# --- 00, 01, 02: connect, normal run, fully cached rerun -----------------------------------


async def test_ws_connect_greeting(client: Any) -> None:
    sock = await SimSocket.connect(client, CLIENT)
    frame = await sock.read()
    assert frame is not None
    assert [frame["msg"]] == [f["msg"] for f in load("00_ws_connect.json")]


async def test_normal_then_cached_rerun(client: Any, config: SimConfig) -> None:
    normal, cached = load("01_normal.json"), load("02_cached_rerun.json")
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    pid, frames = await run_recorded(client, sock, normal)
    assert_same_stream(normal["ws"], frames, labels((normal["post"]["json"]["prompt_id"], pid)))
    first = await compare_history(client, normal, pid)

    view = await client.get(normal["view"]["path"])
    assert view.status == 200
    assert view.content_type == normal["view"]["content_type"]
    data = await view.read()
    assert data[:16].hex() == normal["view"]["head_hex"]
    assert Image.open(io.BytesIO(data)).size == (512, 512)

    pid2, frames2 = await run_recorded(client, sock, cached)
    assert_same_stream(cached["ws"], frames2, labels((cached["post"]["json"]["prompt_id"], pid2)))
    second = await compare_history(client, cached, pid2)
    assert second["outputs"] == first["outputs"]  # same filenames, no new file
    assert sorted(p.name for p in config.output_dir.iterdir()) == ["probe_invert_00001_.png"]


# --- 03 scale, 04 preview, 05 binary frames ------------------------------------------------


async def test_scale_writes_real_pngs(client: Any, config: SimConfig) -> None:
    trace = load("03_scale.json")
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    pid, frames = await run_recorded(client, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    await compare_history(client, trace, pid)
    view = await client.get(trace["view"]["path"])
    assert view.status == 200 and view.content_type == "image/png"
    for name in ("scale_00001_.png", "scale_00002_.png"):
        with Image.open(config.output_dir / "probe" / name) as img:
            assert img.format == "PNG" and img.size == (640, 320)


async def test_preview_temp_files_and_view(client: Any) -> None:
    trace = load("04_preview.json")
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    pid, frames = await run_recorded(client, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    entry = await compare_history(client, trace, pid)
    image = entry["outputs"]["2"]["images"][0]
    assert image["type"] == "temp"

    view = await client.get(f"/view?filename={image['filename']}&subfolder=&type=temp")
    assert view.status == 200 and view.content_type == "image/png"
    missing = await client.get(trace["view_missing"]["path"])
    assert missing.status == 404 and await missing.read() == b""
    webp = await client.get(f"/view?filename={image['filename']}&type=temp&preview=webp;50")
    assert webp.status == 200
    assert webp.content_type == trace["view_preview_webp"]["content_type"]
    body = await webp.read()
    assert body[:4] == b"RIFF" and body[8:12] == b"WEBP"


async def test_binary_previews_legacy_type_1(client: Any) -> None:
    trace = load("05_ws_binary_legacy.json")
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    pid, frames = await run_recorded(client, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    binaries = [f["msg"] for f in frames if f["kind"] == "binary"]
    assert [b["binary_event"] for b in binaries] == [1, 1]
    assert all(b["image_type"] == 2 and b["image_magic"] == "89504e470d0a1a0a" for b in binaries)


async def test_binary_previews_with_feature_flags_type_4(client: Any) -> None:
    trace = load("05b_ws_binary_featureflags.json")
    client_id = trace["post"]["request_json"]["client_id"]
    sock = await SimSocket.connect(client, client_id)
    await sock.ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    await sock.read()
    await sock.read()
    pid, _ = await run_recorded(client, sock, trace)
    assert_same_stream(trace["ws"], sock.frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    meta = [f["msg"]["metadata"] for f in sock.frames if f["kind"] == "binary"]
    assert len(meta) == 2 and all(m["image_type"] == "image/png" for m in meta)


# --- 06, 21 validation errors: same 400 bodies, no WebSocket event -------------------------

VALIDATION_CASES = [
    "unknown_class",
    "missing_input",
    "value_out_of_range",
    "bad_combo_value",
    "link_to_missing_node",
    "no_output_node",
    "no_prompt_key",
    "missing_class_type",
    "bad_output_index",
    "loadimage_missing_file",
]


@pytest.mark.parametrize("case", VALIDATION_CASES)
async def test_validation_error_bodies(client: Any, case: str) -> None:
    trace = load("06_validation_errors.json")[case]
    status, body = await post(client, trace["request_json"])
    assert status == trace["status"] == 400
    assert shape(body) == shape(trace["json"])
    assert normalise(body) == normalise(trace["json"])


async def test_validation_error_sends_no_ws_event(client: Any) -> None:
    trace = load("21_validation_ws_silence.json")
    sock = await SimSocket.connect(client, trace["post"]["request_json"]["client_id"])
    await sock.read()
    status, body = await post(client, trace["post"]["request_json"])
    assert (status, body) == (trace["post"]["status"], trace["post"]["json"])
    assert await sock.silent_for(0.3)
    assert sock.frames[1:] == trace["ws"]
    queue = await (await client.get("/queue")).json()
    assert queue == {"queue_running": [], "queue_pending": []}


# --- 07 execution error --------------------------------------------------------------------


async def test_execution_error(client: Any) -> None:
    trace = load("07_execution_error.json")
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    pid, frames = await run_recorded(client, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))
    error = next(f["msg"]["data"] for f in frames if f["msg"].get("type") == "execution_error")
    rec_error = next(
        f["msg"]["data"] for f in trace["ws"] if f["msg"].get("type") == "execution_error"
    )
    assert (
        error["exception_message"].splitlines()[0]
        == (rec_error["exception_message"].splitlines()[0])
    )
    assert set(error["current_inputs"]) == set(rec_error["current_inputs"])
    entry = await compare_history(client, trace, pid)
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}


# --- 08, 09 interrupts and the queue -------------------------------------------------------


async def test_global_interrupt(client: Any) -> None:
    trace = load("08_interrupt_global.json")
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    status, body = await post(client, trace["post"]["request_json"])
    assert status == 200
    pid = body["prompt_id"]
    await sock.wait_executing("10")
    queue = await (await client.get("/queue")).json()
    rec_queue = trace["queue_while_running"]["json"]
    ids = labels((trace["post"]["json"]["prompt_id"], pid))
    queue["queue_running"][0][0] = rec_queue["queue_running"][0][0]
    assert normalise(queue, ids[1]) == normalise(rec_queue, ids[0])

    resp = await client.post("/interrupt")
    assert resp.status == trace["interrupt"]["status"] and await resp.read() == b""
    await sock.wait_done(pid)
    frames = sock.frames[1:]
    assert collapse_node_runs(event_types(frames)) == collapse_node_runs(event_types(trace["ws"]))
    rec_keys: dict[str, list[set[str]]] = {}
    for f in trace["ws"]:
        rec_keys.setdefault(f["msg"]["type"], []).append(set(f["msg"]["data"]))
    for frame in frames:
        assert set(frame["msg"]["data"]) in rec_keys[frame["msg"]["type"]]
    interrupted = frames[-3]["msg"]["data"]
    assert interrupted["node_type"] == "ImageBlur" and interrupted["node_id"] in {"11", "12", "13"}
    assert "1" in interrupted["executed"] and interrupted["node_id"] not in interrupted["executed"]

    history = (await (await client.get(f"/history/{pid}")).json())[pid]
    rec_history = trace["history"]["json"][trace["post"]["json"]["prompt_id"]]
    assert shape(history) == shape(rec_history)
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False
    assert [m[0] for m in history["status"]["messages"]] == [
        m[0] for m in rec_history["status"]["messages"]
    ]
    assert history["outputs"] == {} and history["meta"] == {}


async def test_queue_delete_and_targeted_interrupt(client: Any) -> None:
    trace = load("09_queue_and_targeted_interrupt.json")
    rec_ids = [p["json"]["prompt_id"] for p in trace["posts"]]
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    pids = []
    for i, rec_post in enumerate(trace["posts"]):
        status, body = await post(client, rec_post["request_json"])
        assert status == 200
        pids.append(body["prompt_id"])
        if i == 0:
            await sock.wait_executing("1")
    ids = labels(*zip(rec_ids, pids, strict=True))

    def same(got: Any, rec: Any) -> None:
        for q in ("queue_running", "queue_pending"):
            for got_item, rec_item in zip(got.get(q, []), rec.get(q, []), strict=True):
                got_item[0] = rec_item[0]
        assert normalise(got, ids[1]) == normalise(rec, ids[0])

    same(await (await client.get("/queue")).json(), trace["queue_running"]["json"])
    assert await (await client.get("/prompt")).json() == trace["get_prompt"]["json"]
    resp = await client.post("/queue", json={"delete": [pids[2]]})
    assert resp.status == 200 and await resp.read() == b""
    same(await (await client.get("/queue")).json(), trace["queue_after_delete"]["json"])

    resp = await client.post("/interrupt", json={"prompt_id": pids[1]})  # not running: no effect
    assert resp.status == 200
    resp = await client.post("/interrupt", json={"prompt_id": pids[0]})
    assert resp.status == 200
    await sock.wait_done(pids[1])

    frames = sock.frames[1:]
    assert collapse_node_runs(text_types(f for f in frames if f["msg"]["type"] != "status")) == (
        collapse_node_runs(text_types(f for f in trace["ws"] if f["msg"]["type"] != "status"))
    )
    remaining = [f["msg"]["data"]["status"]["exec_info"]["queue_remaining"] for f in frames
                 if f["msg"]["type"] == "status"]  # fmt: skip
    rec_remaining = [f["msg"]["data"]["status"]["exec_info"]["queue_remaining"]
                     for f in trace["ws"] if f["msg"]["type"] == "status"]  # fmt: skip
    assert remaining == rec_remaining

    hist_a = (await (await client.get(f"/history/{pids[0]}")).json())[pids[0]]
    rec_a = trace["history_A_interrupted"]["json"][rec_ids[0]]
    assert shape(hist_a) == shape(rec_a)
    assert [m[0] for m in hist_a["status"]["messages"]] == [
        m[0] for m in rec_a["status"]["messages"]
    ]
    assert hist_a["status"]["status_str"] == "error"
    hist_b = await (await client.get(f"/history/{pids[1]}")).json()
    assert history_view(hist_b, ids[1]) == history_view(trace["history_B"]["json"], ids[0])
    assert await (await client.get(f"/history/{pids[2]}")).json() == {}
    assert await (await client.get("/queue")).json() == trace["queue_end"]["json"]


# --- 10 miscellaneous HTTP ----------------------------------------------------------------


async def test_system_stats_features_object_info(client: Any, tmp_path: Path) -> None:
    misc = load("10_misc.json")
    stats = await (await client.get("/system_stats")).json()
    rec_stats = misc["system_stats"]["json"]
    assert stats["system"].keys() == rec_stats["system"].keys()
    assert stats["devices"][0].keys() == rec_stats["devices"][0].keys()
    assert stats["devices"][0]["type"] == "cuda"
    assert await (await client.get("/features")).json() == misc["features"]["json"]
    info = await (await client.get("/object_info")).json()
    for name in ("EmptyImage", "SaveImage"):
        assert info[name] == misc["object_info_summary"][name]
        one = await (await client.get(f"/api/object_info/{name}")).json()
        assert one == {name: misc["object_info_summary"][name]}


async def test_cpu_device_reports_like_recorded(aiohttp_client: Any, tmp_path: Path) -> None:
    rec = load("10_misc.json")["system_stats"]["json"]
    config = SimConfig.for_data_dir(tmp_path, device="cpu")
    client = await aiohttp_client(create_app(config, exit_fn=lambda code: None))
    stats = await (await client.get("/api/system_stats")).json()
    assert shape(stats) == shape(rec)
    device = stats["devices"][0]
    assert (device["name"], device["type"], device["index"]) == ("cpu", "cpu", None)


async def test_misc_queue_history_interrupt_idle(client: Any) -> None:
    misc = load("10_misc.json")
    unknown = await client.get("/history/not-a-real-id")
    assert unknown.status == 200 and await unknown.json() == misc["history_unknown"]["json"]
    resp = await client.post("/interrupt", json={})
    assert resp.status == misc["interrupt_empty_json"]["status"] and await resp.read() == b""
    assert await (await client.get("/queue")).json() == misc["queue_get_idle"]["json"]


async def test_upload_and_load_image(client: Any, config: SimConfig) -> None:
    misc = load("10_misc.json")
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png, format="PNG")

    def named(data: bytes) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("image", data, filename="probe_upload.png", content_type="image/png")
        return form

    async def send(form: Any) -> tuple[int, Any]:
        resp = await client.post("/upload/image", data=form)
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
        200,
        {"name": "probe_upload (1).png", "subfolder": "", "type": "input"},
    )
    no_image = await client.post("/upload/image", data={"type": "input"})
    assert no_image.status == misc["upload_no_image"]["status"]

    view = await client.get(misc["view_uploaded_input"]["path"])
    assert view.status == 200 and view.content_type == "image/png"

    run = misc["loadimage_run"]
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    status, body = await post(client, run["post"]["request_json"])
    assert status == 200
    frames = await sock.wait_done(body["prompt_id"])
    assert_same_stream(
        run["ws"], frames, labels((run["post"]["json"]["prompt_id"], body["prompt_id"]))
    )
    with Image.open(config.output_dir / "probe_loaded_00001_.png") as img:
        assert img.size == (8, 8)


async def test_client_prompt_id_no_client_and_history_delete(client: Any) -> None:
    misc = load("10_misc.json")
    own = misc["client_supplied_prompt_id"]
    sock = await SimSocket.connect(client, CLIENT)
    other = await SimSocket.connect(client, "someone-else")
    await sock.read()
    await other.read()
    status, body = await post(client, own["post"]["request_json"])
    assert status == 200 and body["prompt_id"] == own["post"]["request_json"]["prompt_id"]
    frames = await sock.wait_done(body["prompt_id"])
    assert event_types(frames) == own["ws_types"]

    def idle(frame: dict[str, Any]) -> bool:
        msg = frame["msg"]
        return msg.get("type") == "status" and msg["data"]["status"]["exec_info"] == {
            "queue_remaining": 0
        }

    await other.read_until(idle)  # the other client saw only the status frames of that run
    assert event_types(other.frames) == ["status"] * 4
    other.frames.clear()
    no_client = misc["no_client_id_prompt"]
    status, body = await post(client, no_client["post"]["request_json"])
    assert status == 200
    await other.read_until(idle)
    assert event_types(other.frames) == event_types(no_client["ws_seen_by_other_client"])
    for got, rec in zip(other.frames, no_client["ws_seen_by_other_client"], strict=True):
        assert shape(got["msg"]) == shape(rec["msg"])

    resp = await client.post("/history", json={"delete": [body["prompt_id"]]})
    assert resp.status == misc["history_delete"]["status"] and await resp.read() == b""
    assert await (await client.get(f"/history/{body['prompt_id']}")).json() == {}


# --- 22 text frame, 23 partial cache, 24 reconnect ----------------------------------------


async def test_text_frame(client: Any) -> None:
    trace = load("22_text_frame.json")
    sock = await SimSocket.connect(client, CLIENT2)
    await sock.read()
    pid, frames = await run_recorded(client, sock, trace)
    assert_same_stream(trace["ws"], frames, labels((trace["post"]["json"]["prompt_id"], pid)))


async def test_partial_cache(client: Any) -> None:
    trace = load("23_partial_cache.json")
    second = trace["second_post"]["request_json"]
    first = json.loads(json.dumps(second))
    first["prompt"]["3"]["inputs"]["filename_prefix"] = "probe_pc_a"
    rec_first_pid = trace["first"][2]["msg"]["data"]["prompt_id"]
    sock = await SimSocket.connect(client, CLIENT2)
    await sock.read()
    _, body = await post(client, first)
    frames = await sock.wait_done(body["prompt_id"])
    assert_same_stream(trace["first"], frames, labels((rec_first_pid, body["prompt_id"])))
    _, body2 = await post(client, second)
    frames2 = await sock.wait_done(body2["prompt_id"])
    ids = labels((trace["second_post"]["json"]["prompt_id"], body2["prompt_id"]))
    assert_same_stream(trace["second"], frames2, ids)


async def test_reconnect_same_client_id(client: Any) -> None:
    trace = load("24_reconnect_same_clientid.json")
    rec_pid = trace["before_disconnect"][2]["msg"]["data"]["prompt_id"]
    prompt = reconnect_prompt(7)
    first = await SimSocket.connect(client, CLIENT2)
    await first.read()
    _, body = await post(client, {"prompt": prompt, "client_id": CLIENT2})
    pid = body["prompt_id"]
    await first.wait_executing("10")
    ids = labels((rec_pid, pid))
    assert_same_stream(trace["before_disconnect"], first.frames[1:], ids)
    await first.close()

    again = await SimSocket.connect(client, CLIENT2)
    await again.wait_done(pid)
    assert_same_stream(trace["after_reconnect"], again.frames, ids)


async def test_warm_job_is_fast(aiohttp_client: Any, tmp_path: Path) -> None:
    """11_timing_512: a warm 512x512 EmptyImage -> SaveImage job took 13-21 ms in ComfyUI."""
    timing = load("11_timing_512.json")
    client = await aiohttp_client(create_app(SimConfig.for_data_dir(tmp_path)))
    sock = await SimSocket.connect(client, CLIENT)
    await sock.read()
    normal = load("01_normal.json")["post"]["request_json"]
    loop = asyncio.get_running_loop()
    for color in (1, 2):
        body = json.loads(json.dumps(normal))
        body["prompt"]["1"]["inputs"]["color"] = color
        start = loop.time()
        _, answer = await post(client, body)
        await sock.wait_done(answer["prompt_id"])
        elapsed = loop.time() - start
    assert elapsed < 0.5 and max(t["ws_done_s"] for t in timing) < 0.5
