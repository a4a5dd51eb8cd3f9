"""Pure pieces of the ComfyUI simulator: graph, cache keys, events, frames, naming, VRAM, queue."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.sim import events
from comfyfleet.sim.config import FaultSettings
from comfyfleet.sim.faults import FaultError, Faults
from comfyfleet.sim.graph import cache_keys, execution_order
from comfyfleet.sim.naming import UnsafePath, save_image_path
from comfyfleet.sim.nodes import CATALOGUE, CatalogueContext, object_info
from comfyfleet.sim.prompt_queue import PromptQueue, QueueItem
from comfyfleet.sim.recording import collapse_node_runs, normalise, shape
from comfyfleet.sim.vram import OutOfVram, Vram
from comfyfleet.sim.ws import decode_binary, encode_preview, encode_preview_meta, encode_text


def graph(color: int = 0, prefix: str = "x") -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }  # fmt: skip


def no_change(node_id: str, node: Any) -> None:
    return None


# --- graph ---------------------------------------------------------------------------------


def test_cache_keys_follow_inputs_and_upstream() -> None:
    a = cache_keys(graph(), CATALOGUE, no_change)
    assert a == cache_keys(graph(), CATALOGUE, no_change)
    b = cache_keys(graph(prefix="y"), CATALOGUE, no_change)
    assert (a["1"], a["2"]) == (b["1"], b["2"]) and a["3"] != b["3"]
    c = cache_keys(graph(color=5), CATALOGUE, no_change)
    assert all(a[n] != c[n] for n in a)  # an upstream change invalidates everything downstream


def test_cache_keys_do_not_depend_on_node_ids_except_unique_id_nodes() -> None:
    renamed = {"a": graph()["1"], "b": {"class_type": "ImageInvert", "inputs": {"image": ["a", 0]}}}
    assert (
        cache_keys(renamed, CATALOGUE, no_change)["b"]
        == cache_keys(graph(), CATALOGUE, no_change)["2"]
    )
    sized = {"1": graph()["1"], "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}}}
    other = {"1": graph()["1"], "7": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}}}
    assert (
        cache_keys(sized, CATALOGUE, no_change)["2"] != cache_keys(other, CATALOGUE, no_change)["7"]
    )


def test_is_changed_enters_the_key() -> None:
    load = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}
    k1 = cache_keys(load, CATALOGUE, lambda n, node: "v1")
    k2 = cache_keys(load, CATALOGUE, lambda n, node: "v2")
    assert k1["1"] != k2["1"]


def test_execution_order_skips_cached_upstream_but_not_outputs() -> None:
    g = graph()
    assert execution_order(g, ["3"], lambda n: False) == ["1", "2", "3"]
    assert execution_order(g, ["3"], lambda n: n in {"1", "2"}) == ["3"]
    assert execution_order(g, ["3"], lambda n: True) == ["3"]
    assert execution_order(g, ["3"], lambda n: n == "1") == ["2", "3"]


# --- events --------------------------------------------------------------------------------


def test_progress_tracker_is_cumulative_like_comfyui() -> None:
    tracker = events.ProgressTracker("p")
    first = tracker.start("1")
    assert first["nodes"]["1"]["state"] == "running" and first["nodes"]["1"]["value"] == 0.0
    tracker.finish("1")
    tracker.start("2")
    mid = tracker.update("2", 3, 10)
    assert list(mid["nodes"]) == ["1", "2"]
    assert (mid["nodes"]["2"]["value"], mid["nodes"]["2"]["max"]) == (3, 10)
    done = tracker.finish("2")
    assert (done["nodes"]["2"]["value"], done["nodes"]["2"]["state"]) == (10, "finished")
    cached = events.ProgressTracker("q").finish("9")["nodes"]["9"]
    assert (cached["value"], cached["max"]) == (1, 1) and isinstance(cached["value"], int)


def test_event_builders() -> None:
    assert events.status(2) == {"status": {"exec_info": {"queue_remaining": 2}}}
    assert events.status(0, "c")["sid"] == "c"
    assert events.executing_done("p") == {"node": None, "prompt_id": "p"}
    assert events.executing_reconnect("10") == {"node": "10"}
    assert events.format_value(3) == 3 and events.format_value(None) is None
    assert events.format_value({"a": 1}) == "{'a': 1}"


# --- frames --------------------------------------------------------------------------------


def test_binary_frames_roundtrip() -> None:
    legacy = encode_preview("JPEG", b"\xff\xd8jpeg")
    assert struct.unpack(">II", legacy[:8]) == (1, 1)
    assert decode_binary(legacy)["image_len"] == 6
    meta = {"node_id": "3", "prompt_id": "p", "display_node_id": "3", "parent_node_id": None,
            "real_node_id": "3"}  # fmt: skip
    frame = decode_binary(encode_preview_meta("PNG", b"\x89PNG", meta))
    assert frame["binary_event"] == 4 and frame["metadata"] == {**meta, "image_type": "image/png"}
    text = decode_binary(encode_text("2", "width: 320, height: 200\n batch size: 3"))
    assert (text["binary_event"], text["total_len"], text["node_id"]) == (3, 47, "2")


def test_recorded_type_4_metadata_length_matches() -> None:
    meta = {"node_id": "2", "prompt_id": "5bc753bf-fdf5-447b-af82-905ca17b4788",
            "display_node_id": "2", "parent_node_id": None, "real_node_id": "2"}  # fmt: skip
    assert decode_binary(encode_preview_meta("PNG", b"", meta))["metadata_len"] == 165


def test_collapse_and_normalise() -> None:
    seq = ["status", "progress_state", "executing", "progress_state"] * 1 + [
        "progress_state", "executing", "progress_state", "progress_state", "executing", "x",
    ]  # fmt: skip
    assert collapse_node_runs(seq) == ["status", "NODE+", "progress_state", "executing", "x"]
    msg = {"prompt_id": "abc", "timestamp": 5, "executed": ["2", "1"], "total_len": 9,
           "filename": "ComfyUI_temp_abcde_00001_.png"}  # fmt: skip
    assert normalise(msg, {"abc": "<P>"}) == {
        "prompt_id": "<P>", "timestamp": 0, "executed": ["1", "2"],
        "filename": "ComfyUI_temp_XXXXX_00001_.png",
    }  # fmt: skip
    assert shape({"a": [1, "x"], "b": None}) == {"a": ["list", ['"number"', '"str"']], "b": "null"}


# --- naming --------------------------------------------------------------------------------


def test_save_path_counter_and_subfolder(tmp_path: Path) -> None:
    first = save_image_path("probe/scale", str(tmp_path))
    assert (first.subfolder, first.filename, first.counter) == ("probe", "scale", 1)
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "scale_00007_.png").write_bytes(b"")
    (tmp_path / "probe" / "scalex_00009_.png").write_bytes(b"")
    assert save_image_path("probe/scale", str(tmp_path)).counter == 8
    sized = save_image_path("img_%width%x%height%", str(tmp_path), 64, 32)
    assert sized.filename == "img_64x32"


def test_save_path_refuses_to_leave_output(tmp_path: Path) -> None:
    with pytest.raises(UnsafePath, match="Saving image outside the output folder"):
        save_image_path("../../escape", str(tmp_path / "out"))


# --- catalogue -----------------------------------------------------------------------------


def test_object_info_entries_have_recorded_keys() -> None:
    info = object_info(CatalogueContext(checkpoints=("m.safetensors",)))
    assert set(info) == set(CATALOGUE)
    for entry in info.values():
        assert {"input", "input_order", "output", "output_is_list", "output_name", "name",
                "display_name", "description", "python_module", "category",
                "output_node"} <= set(entry)  # fmt: skip
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["m.safetensors"]
    assert object_info(CatalogueContext(), "Nope") == {}
    json.dumps(info)  # serialisable


# --- vram ----------------------------------------------------------------------------------


def test_vram_keeps_models_and_evicts_least_recently_used() -> None:
    vram = Vram(8000)
    assert vram.load_model("a", 3000) and vram.load_model("b", 3000)
    assert not vram.load_model("a", 3000)  # resident: nothing to do, now most recent
    vram.load_model("c", 3000)  # evicts b
    assert vram.loaded_models == ["a", "c"]
    vram.allocate("n1", 1500, keep=("a", "c"))
    assert vram.used_mb == 7500
    with pytest.raises(OutOfVram, match="Allocation on device"):
        vram.allocate("n2", 1000, keep=("a", "c"))
    vram.release("n1")
    assert vram.used_mb == 6000 and vram.peak_mb == 7500
    with pytest.raises(OutOfVram):
        vram.load_model("huge", 9000)
    vram.unload_all()
    assert vram.used_mb == 0


# --- faults --------------------------------------------------------------------------------


def test_faults_update_and_validation() -> None:
    faults = Faults.from_settings(FaultSettings(hang=True))
    assert faults.hang is True
    faults.update({"oom_probability": 0.5, "fail_class_type": "KSampler", "crash_on_prompt": 3})
    assert (faults.oom_probability, faults.fail_class_type, faults.crash_on_prompt) == (
        0.5, "KSampler", 3,
    )  # fmt: skip
    faults.update({"reset": True, "drop_ws_after_s": 1})
    assert faults.hang is False and faults.fail_class_type is None
    assert faults.drop_ws_after_s == 1.0
    for bad in ({"nope": 1}, {"hang": "yes"}, {"oom_probability": 2}, {"crash_on_prompt": 0}, []):
        with pytest.raises(FaultError):
            faults.update(bad)


# --- queue ---------------------------------------------------------------------------------


async def test_queue_order_front_delete_and_history() -> None:
    changes: list[int] = []
    queue = PromptQueue(lambda: changes.append(queue.remaining))

    def item(number: int, pid: str) -> QueueItem:
        return QueueItem(number, pid, {}, {"client_id": "c"}, ["3"])

    queue.put(item(1, "a"))
    queue.put(item(2, "b"))
    queue.put(item(-3, "front"))
    assert [i.prompt_id for i in queue.pending()] == ["front", "a", "b"]
    assert queue.delete(["b", 7]) == 1
    got = await asyncio.wait_for(queue.get(), 1)
    assert got.prompt_id == "front" and queue.is_running("front")
    assert queue.remaining == 2
    queue.task_done(got, {"outputs": {}})
    assert queue.history_of("front") == {"front": {"outputs": {}}}
    assert queue.history_of("a") == {}
    assert changes == [1, 2, 3, 2, 2, 1]
    for pid in ("x", "y", "z"):
        queue.task_done(item(0, pid), {"n": pid})
    assert list(queue.history(max_items=2)) == ["y", "z"]
    assert list(queue.history(max_items=1, offset=1)) == ["x"]
    queue.delete_history(["y"])
    assert list(queue.history()) == ["front", "x", "z"]
    queue.clear_history()
    assert queue.history() == {}
