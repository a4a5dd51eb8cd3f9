"""The recorded ComfyUI sessions (tests/fixtures/comfyui-traces) replayed against a server that
speaks ComfyUI: for every recording, the same requests, then the same HTTP statuses and bodies,
the same WebSocket event types in the same order, the same key sets (recursively) and the same
values once ids, timestamps, temp-file suffixes and host paths are normalised (sim/recording.py).

Each case is written once, here, and run against every `Target` (tests/integration/
test_comfy_replay.py): the simulator alone, and the coordinator's ComfyUI facade with an agent and
a simulator behind it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from PIL import Image

from comfyfleet.sim.recording import collapse_node_runs, event_types, normalise, shape, text_types
from comfyfleet.sim.testing import SimSocket
from tests.helpers.replay_target import (
    Target,
    assert_same_stream,
    compare_history,
    connect,
    get_json,
    history_view,
    labels,
    load,
    post,
    recorded_ref,
    replay_stream,
    run_recorded,
    saved_files,
    view_image,
)

CLIENT = "probe-c4cb5ea7"
CLIENT2 = "probe2-01e5c542"

Case = Callable[[Target], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


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


# --- 00, 01, 02, 03: connect, normal run, fully cached rerun, two images in a subfolder -----


@case
async def ws_connect_greeting(t: Target) -> None:
    sock = await SimSocket.connect(t.http, CLIENT)
    frame = await sock.read()
    assert frame is not None and [frame["msg"]] == [f["msg"] for f in load("00_ws_connect.json")]


@case
async def normal_then_cached_rerun(t: Target) -> None:
    normal, cached = load("01_normal.json"), load("02_cached_rerun.json")
    sock = await connect(t, CLIENT)
    pid, _ = await replay_stream(t, sock, normal)
    first = await compare_history(t, normal, pid)
    ref = first["outputs"]["3"]["images"][0]
    assert t.view(ref) == recorded_ref(normal["view"]["path"])
    assert (await view_image(t, ref, normal["view"])).size == (512, 512)

    pid2, _ = await replay_stream(t, sock, cached)
    second = await compare_history(t, cached, pid2)
    assert t.view(second["outputs"]) == t.view(first["outputs"])  # ComfyUI's names, kept
    # ComfyUI (and the simulator) reuse the cached file; the facade serves each job its own copy
    assert (second["outputs"] != first["outputs"]) is t.copies_outputs
    if t.output_dir is not None:  # no new file
        assert saved_files(t) == ["probe_invert_00001_.png"]


@case
async def scale_writes_real_pngs_in_a_subfolder(t: Target) -> None:
    trace = load("03_scale.json")
    sock = await connect(t, CLIENT)
    pid, _ = await replay_stream(t, sock, trace)
    images = (await compare_history(t, trace, pid))["outputs"]["3"]["images"]
    assert [t.view(i) for i in images] == [
        {"filename": f"scale_0000{n}_.png", "subfolder": "probe", "type": "output"} for n in (1, 2)
    ]
    assert t.view(images[1]) == recorded_ref(trace["view"]["path"])
    for ref in images:
        img = await view_image(t, ref, trace["view"])
        assert img.format == "PNG" and img.size == (640, 320)
    if t.output_dir is not None:
        for name in ("scale_00001_.png", "scale_00002_.png"):
            with Image.open(t.output_dir / "probe" / name) as img:
                assert img.format == "PNG" and img.size == (640, 320)


# --- 04, 05, 05b, 22: previews, temp files, binary frames, a text frame --------------------


@case
async def preview_temp_files_and_view(t: Target) -> None:
    trace = load("04_preview.json")
    sock = await connect(t, CLIENT)
    pid, _ = await replay_stream(t, sock, trace)
    image = (await compare_history(t, trace, pid))["outputs"]["2"]["images"][0]
    assert image["type"] == "temp"
    await view_image(t, image)
    missing = await t.http.get(trace["view_missing"]["path"])
    assert missing.status == 404 and await missing.read() == b""
    webp = await t.http.get("/view", params={**image, "preview": "webp;50"})
    assert webp.status == 200
    assert webp.content_type == trace["view_preview_webp"]["content_type"]
    body = await webp.read()
    assert body[:4] == b"RIFF" and body[8:12] == b"WEBP"


@case
async def binary_previews_legacy_type_1(t: Target) -> None:
    trace = load("05_ws_binary_legacy.json")
    sock = await connect(t, CLIENT)
    _, frames = await replay_stream(t, sock, trace)
    binaries = [f["msg"] for f in frames if f["kind"] == "binary"]
    assert [b["binary_event"] for b in binaries] == [1, 1]
    assert all(b["image_type"] == 2 and b["image_magic"] == "89504e470d0a1a0a" for b in binaries)


@case
async def binary_previews_with_feature_flags_type_4(t: Target) -> None:
    trace = load("05b_ws_binary_featureflags.json")
    sock = await SimSocket.connect(t.http, trace["post"]["request_json"]["client_id"])
    await sock.ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
    await sock.read()
    await sock.read()
    pid, _ = await run_recorded(t, sock, trace)
    ids = labels((trace["post"]["json"]["prompt_id"], pid))
    assert_same_stream(trace["ws"], sock.frames, ids, t.view)
    meta = [f["msg"]["metadata"] for f in sock.frames if f["kind"] == "binary"]
    assert len(meta) == 2 and all(m["image_type"] == "image/png" for m in meta)
    assert all(m["prompt_id"] == pid for m in meta)


@case
async def text_frame(t: Target) -> None:
    await replay_stream(t, await connect(t, CLIENT2), load("22_text_frame.json"))


# --- 06, 21: validation errors: the same 400 bodies, no WebSocket event ----------------------

VALIDATION_CASES = sorted(
    k for k in load("06_validation_errors.json") if k != "ws_during_validation_errors"
)


async def validation_error_body(t: Target, name: str) -> None:
    trace = load("06_validation_errors.json")[name]
    status, body = await post(t.http, trace["request_json"])
    assert status == trace["status"] == 400
    assert shape(body) == shape(trace["json"])
    assert normalise(body) == normalise(trace["json"])


@case
async def validation_error_sends_no_ws_event(t: Target) -> None:
    trace = load("21_validation_ws_silence.json")
    sock = await connect(t, trace["post"]["request_json"]["client_id"])
    status, body = await post(t.http, trace["post"]["request_json"])
    assert (status, body) == (trace["post"]["status"], trace["post"]["json"])
    assert await sock.silent_for(0.5)
    assert sock.frames[1:] == trace["ws"]
    assert await get_json(t, "/queue") == {"queue_running": [], "queue_pending": []}


# --- 07, 23: execution error, partial cache ------------------------------------------------


@case
async def execution_error(t: Target) -> None:
    trace = load("07_execution_error.json")
    sock = await connect(t, CLIENT)
    pid, frames = await replay_stream(t, sock, trace)

    def error_of(stream: list[dict[str, Any]]) -> dict[str, Any]:
        return next(f["msg"]["data"] for f in stream if f["msg"].get("type") == "execution_error")

    error, rec_error = error_of(frames), error_of(trace["ws"])
    line = error["exception_message"].splitlines()[0]
    assert line == rec_error["exception_message"].splitlines()[0]
    assert set(error["current_inputs"]) == set(rec_error["current_inputs"])
    entry = await compare_history(t, trace, pid)
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
    error = entry["status"]["messages"][-1][1]
    assert error["node_type"] == "SaveImage"
    assert "outside the output folder" in error["exception_message"]


@case
async def partial_cache(t: Target) -> None:
    trace = load("23_partial_cache.json")
    second = json.loads(json.dumps(trace["second_post"]["request_json"]))
    second["prompt"]["1"]["inputs"]["color"] += 7  # nothing cached from the target's other runs
    first = json.loads(json.dumps(second))
    first["prompt"]["3"]["inputs"]["filename_prefix"] = "probe_pc_a"
    rec_first_pid = trace["first"][2]["msg"]["data"]["prompt_id"]
    sock = await connect(t, CLIENT2)
    _, body = await post(t.http, first)
    frames = await sock.wait_done(body["prompt_id"], t.wait_s)
    assert_same_stream(trace["first"], frames, labels((rec_first_pid, body["prompt_id"])), t.view)
    _, body2 = await post(t.http, second)
    frames2 = await sock.wait_done(body2["prompt_id"], t.wait_s)
    ids = labels((trace["second_post"]["json"]["prompt_id"], body2["prompt_id"]))
    assert_same_stream(trace["second"], frames2, ids, t.view)


# --- 08, 09: interrupts and the queue ------------------------------------------------------


def assert_interrupted(history: dict[str, Any], recorded: dict[str, Any]) -> None:
    assert shape(history) == shape(recorded)
    assert history["status"]["status_str"] == "error" and history["status"]["completed"] is False
    assert [m[0] for m in history["status"]["messages"]] == [
        m[0] for m in recorded["status"]["messages"]
    ]


@case
async def global_interrupt(t: Target) -> None:
    trace = load("08_interrupt_global.json")
    sock = await connect(t, CLIENT)
    status, body = await post(t.http, trace["post"]["request_json"])
    assert status == 200
    pid = body["prompt_id"]
    await sock.wait_executing("10", t.wait_s)
    queue = await get_json(t, "/queue")
    rec_queue = trace["queue_while_running"]["json"]
    ids = labels((trace["post"]["json"]["prompt_id"], pid))
    queue["queue_running"][0][0] = rec_queue["queue_running"][0][0]
    assert normalise(queue, ids[1]) == normalise(rec_queue, ids[0])

    resp = await t.http.post("/interrupt")
    assert resp.status == trace["interrupt"]["status"] and await resp.read() == b""
    await sock.wait_done(pid, t.wait_s)
    frames = sock.frames[1:]
    assert collapse_node_runs(event_types(frames)) == collapse_node_runs(event_types(trace["ws"]))
    rec_keys: dict[str, list[set[str]]] = {}
    for f in trace["ws"]:
        rec_keys.setdefault(f["msg"]["type"], []).append(set(f["msg"]["data"]))
    for frame in frames:
        assert set(frame["msg"]["data"]) in rec_keys[frame["msg"]["type"]]
    # a chain 1 -> 10 -> 11 -> 12 -> 13 -> 99: the interrupt stops one of the blurs, and the
    # nodes before it (only those) have run
    interrupted = frames[-3]["msg"]["data"]
    chain = ["1", "10", "11", "12", "13"]
    assert interrupted["node_type"] == "ImageBlur" and interrupted["node_id"] in chain[1:]
    assert sorted(interrupted["executed"]) == chain[: chain.index(interrupted["node_id"])]

    history = (await get_json(t, f"/history/{pid}"))[pid]
    assert_interrupted(history, trace["history"]["json"][trace["post"]["json"]["prompt_id"]])
    assert history["outputs"] == {} and history["meta"] == {}


@case
async def queue_delete_and_targeted_interrupt(t: Target) -> None:
    trace = load("09_queue_and_targeted_interrupt.json")
    rec_ids = [p["json"]["prompt_id"] for p in trace["posts"]]
    sock = await connect(t, CLIENT)
    pids = []
    for i, rec_post in enumerate(trace["posts"]):
        status, body = await post(t.http, rec_post["request_json"])
        assert status == 200
        pids.append(body["prompt_id"])
        if i == 0:
            await sock.wait_executing("1", t.wait_s)
    ids = labels(*zip(rec_ids, pids, strict=True))

    async def queue_is(rec: Any) -> None:
        got = await get_json(t, "/queue")
        for q in ("queue_running", "queue_pending"):
            for got_item, rec_item in zip(got.get(q, []), rec.get(q, []), strict=True):
                got_item[0] = rec_item[0]
        assert normalise(got, ids[1]) == normalise(rec, ids[0])

    await queue_is(trace["queue_running"]["json"])
    assert await get_json(t, "/prompt") == trace["get_prompt"]["json"]
    resp = await t.http.post("/queue", json={"delete": [pids[2]]})
    assert resp.status == 200 and await resp.read() == b""
    await queue_is(trace["queue_after_delete"]["json"])
    resp = await t.http.post("/interrupt", json={"prompt_id": pids[1]})  # not running: no effect
    assert resp.status == 200
    assert (await t.http.post("/interrupt", json={"prompt_id": pids[0]})).status == 200
    await sock.wait_done(pids[1], t.wait_s)

    frames = sock.frames[1:]
    assert collapse_node_runs(text_types(f for f in frames if f["msg"]["type"] != "status")) == (
        collapse_node_runs(text_types(f for f in trace["ws"] if f["msg"]["type"] != "status"))
    )

    def remaining(stream: list[dict[str, Any]]) -> list[int]:
        return [f["msg"]["data"]["status"]["exec_info"]["queue_remaining"] for f in stream
                if f["msg"]["type"] == "status"]  # fmt: skip

    assert remaining(frames) == remaining(trace["ws"])
    hist_a = (await get_json(t, f"/history/{pids[0]}"))[pids[0]]
    assert_interrupted(hist_a, trace["history_A_interrupted"]["json"][rec_ids[0]])
    hist_b = await get_json(t, f"/history/{pids[1]}")
    assert history_view(hist_b, ids[1], t.view) == history_view(trace["history_B"]["json"], ids[0])
    assert await get_json(t, f"/history/{pids[2]}") == {}
    assert await get_json(t, "/queue") == trace["queue_end"]["json"]


# --- 10 miscellaneous HTTP, 24 reconnect -----------------------------------------------------


@case
async def system_stats_features_object_info(t: Target) -> None:
    misc = load("10_misc.json")
    stats = await get_json(t, "/system_stats")
    rec = misc["system_stats"]["json"]
    assert stats["system"].keys() == rec["system"].keys()
    assert stats["devices"][0].keys() == rec["devices"][0].keys()
    assert len(stats["devices"]) == 1 and stats["devices"][0]["type"] == "cuda"
    assert await get_json(t, "/features") == misc["features"]["json"]
    for path in ("/object_info", "/api/object_info"):
        info = await get_json(t, path)
        for name in ("EmptyImage", "SaveImage"):
            assert info[name] == misc["object_info_summary"][name]
            one = await get_json(t, f"{path}/{name}")
            assert one == {name: misc["object_info_summary"][name]}
    assert await get_json(t, "/object_info/NoSuchNode") == {}
    assert "checkpoints" in await get_json(t, "/models")
    assert (await t.http.get("/models/nope")).status == 404


@case
async def misc_queue_history_interrupt_idle(t: Target) -> None:
    misc = load("10_misc.json")
    unknown = await t.http.get("/history/not-a-real-id")
    assert unknown.status == 200 and await unknown.json() == misc["history_unknown"]["json"]
    resp = await t.http.post("/interrupt", json={})
    assert resp.status == misc["interrupt_empty_json"]["status"] and await resp.read() == b""
    assert await get_json(t, "/queue") == misc["queue_get_idle"]["json"]


def png_bytes(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, format="PNG")
    return out.getvalue()


@case
async def upload_and_load_image(t: Target) -> None:
    misc = load("10_misc.json")

    def named(data: bytes) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("image", data, filename="probe_upload.png", content_type="image/png")
        return form

    async def send(form: Any) -> tuple[int, Any]:
        resp = await t.http.post("/upload/image", data=form)
        return resp.status, (await resp.json() if resp.status == 200 else None)

    png = png_bytes((10, 20, 30))
    assert await send(named(png)) == (200, misc["upload_image"]["json"])
    assert await send(named(png)) == (200, misc["upload_image_again_no_overwrite"]["json"])
    form = named(png)
    form.add_field("subfolder", "probe_sub")
    assert await send(form) == (200, misc["upload_image_subfolder"]["json"])
    assert await send(named(png_bytes((1, 2, 3)))) == (
        200, {"name": "probe_upload (1).png", "subfolder": "", "type": "input"})  # fmt: skip
    no_image = await t.http.post("/upload/image", data={"type": "input"})
    assert no_image.status == misc["upload_no_image"]["status"]
    view = await t.http.get(misc["view_uploaded_input"]["path"])
    assert view.status == 200 and view.content_type == "image/png"

    run = misc["loadimage_run"]
    sock = await connect(t, CLIENT)
    status, body = await post(t.http, run["post"]["request_json"])
    assert status == 200, body
    frames = await sock.wait_done(body["prompt_id"], t.wait_s)
    ids = labels((run["post"]["json"]["prompt_id"], body["prompt_id"]))
    assert_same_stream(run["ws"], frames, ids, t.view)
    entry = (await get_json(t, f"/history/{body['prompt_id']}"))[body["prompt_id"]]
    ref = next(iter(entry["outputs"].values()))["images"][0]
    assert t.view(ref) == {"filename": "probe_loaded_00001_.png", "subfolder": "", "type": "output"}
    assert (await view_image(t, ref)).size == (8, 8)
    if t.output_dir is not None:
        with Image.open(t.output_dir / "probe_loaded_00001_.png") as img:
            assert img.size == (8, 8)
    # an upload in a subfolder is found too (through the facade: travels to the agent)
    sub = json.loads(json.dumps(run["post"]["request_json"]))
    load_node = next(n for n in sub["prompt"].values() if n["class_type"] == "LoadImage")
    load_node["inputs"]["image"] = "probe_sub/probe_upload.png"
    status, body = await post(t.http, sub)
    assert status == 200, body
    await sock.wait_done(body["prompt_id"], t.wait_s)
    entry = (await get_json(t, f"/history/{body['prompt_id']}"))[body["prompt_id"]]
    assert entry["status"]["status_str"] == "success"


@case
async def client_prompt_id_no_client_and_history_delete(t: Target) -> None:
    misc = load("10_misc.json")
    own = misc["client_supplied_prompt_id"]
    sock = await connect(t, CLIENT)
    other = await connect(t, "someone-else")
    status, body = await post(t.http, own["post"]["request_json"])
    assert status == 200 and body["prompt_id"] == own["post"]["request_json"]["prompt_id"]
    frames = await sock.wait_done(body["prompt_id"], t.wait_s)
    assert event_types(frames) == own["ws_types"]
    if t.dedupes_prompt_ids:
        again = await post(t.http, own["post"]["request_json"])  # the same id: the same prompt
        assert again == (200, {**body, "node_errors": {}})

    def idle(frame: dict[str, Any]) -> bool:
        msg = frame["msg"]
        return msg.get("type") == "status" and msg["data"]["status"]["exec_info"] == {
            "queue_remaining": 0
        }

    await other.read_until(idle, t.wait_s)  # the other client saw only the run's status frames
    assert event_types(other.frames) == ["status"] * 4
    other.frames.clear()
    no_client = misc["no_client_id_prompt"]
    status, body = await post(t.http, no_client["post"]["request_json"])
    assert status == 200
    await other.read_until(idle, t.wait_s)
    assert event_types(other.frames) == event_types(no_client["ws_seen_by_other_client"])
    for got, rec in zip(other.frames, no_client["ws_seen_by_other_client"], strict=True):
        assert shape(got["msg"]) == shape(rec["msg"])

    resp = await t.http.post("/history", json={"delete": [body["prompt_id"]]})
    assert resp.status == misc["history_delete"]["status"] and await resp.read() == b""
    assert await get_json(t, f"/history/{body['prompt_id']}") == {}


@case
async def reconnect_same_client_id(t: Target) -> None:
    trace = load("24_reconnect_same_clientid.json")
    rec_pid = trace["before_disconnect"][2]["msg"]["data"]["prompt_id"]
    first = await connect(t, CLIENT2)
    _, body = await post(t.http, {"prompt": reconnect_prompt(77), "client_id": CLIENT2})
    pid = body["prompt_id"]
    await first.wait_executing("10", t.wait_s)
    ids = labels((rec_pid, pid))
    assert_same_stream(trace["before_disconnect"], first.frames[1:], ids, t.view)
    await first.close()
    again = await SimSocket.connect(t.http, CLIENT2)
    await again.wait_done(pid, t.wait_s)
    assert_same_stream(trace["after_reconnect"], again.frames, ids, t.view)


@case
async def extra_data_reaches_comfyui(t: Target) -> None:
    """The web UI's extra_pnginfo (its workflow) ends up in the PNG, as on one ComfyUI."""
    body = json.loads(json.dumps(load("01_normal.json")["post"]["request_json"]))
    body["prompt"]["1"]["inputs"]["color"] = 4242
    body["extra_data"] = {"extra_pnginfo": {"workflow": {"nodes": [], "version": 0.4}}}
    sock = await connect(t, CLIENT)
    status, answer = await post(t.http, body)
    assert status == 200
    await sock.wait_done(answer["prompt_id"], t.wait_s)
    entry = (await get_json(t, f"/history/{answer['prompt_id']}"))[answer["prompt_id"]]
    assert entry["prompt"][3]["extra_pnginfo"] == body["extra_data"]["extra_pnginfo"]
    img = await view_image(t, entry["outputs"]["3"]["images"][0])
    assert json.loads(img.info["workflow"]) == {"nodes": [], "version": 0.4}
