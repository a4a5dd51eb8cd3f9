"""The fleet's /object_info union, model folders and /system_stats (pure)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.coordinator.comfy.catalog import (
    FleetGpu,
    merge_object_info,
    model_folders,
    system_stats,
)
from comfyfleet.sim.recording import shape

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"


def loader(choices: list[str]) -> dict[str, Any]:
    return {
        "input": {"required": {"ckpt_name": [choices, {}], "strength": ["FLOAT", {"max": 2}]}},
        "output": ["MODEL"],
        "output_node": False,
        "name": "Loader",
    }


def test_union_lists_every_class_and_every_choice() -> None:
    a = {"Loader": loader(["a.safetensors"]), "OnlyA": {"input": {}, "output": []}}
    b = {"Loader": loader(["b.safetensors", "a.safetensors"]), "OnlyB": {"output": []}}
    merged = merge_object_info([a, b])
    assert set(merged) == {"Loader", "OnlyA", "OnlyB"}
    spec = merged["Loader"]["input"]["required"]["ckpt_name"]
    assert spec == [["a.safetensors", "b.safetensors"], {}]
    assert a["Loader"]["input"]["required"]["ckpt_name"] == [["a.safetensors"], {}]  # untouched


def test_v3_combo_options_are_united() -> None:
    def combo(options: list[str]) -> dict[str, Any]:
        return {"X": {"input": {"required": {"m": ["COMBO", {"options": options}]}}}}

    merged = merge_object_info([combo(["a"]), combo(["b", "a"])])
    assert merged["X"]["input"]["required"]["m"] == ["COMBO", {"options": ["a", "b"]}]


choices = st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=4)


@given(st.lists(choices, min_size=1, max_size=5))
def test_union_properties(lists: list[list[str]]) -> None:
    docs = [{"Loader": loader(c)} for c in lists]
    merged = merge_object_info(docs)
    got = merged["Loader"]["input"]["required"]["ckpt_name"][0]
    assert set(got) == {x for c in lists for x in c}
    assert len(got) == len(set(got))
    assert got[: len(lists[0])] == lists[0]  # the first definition's order is kept
    assert merge_object_info([merged, *docs]) == merged  # idempotent


def test_garbage_entries_are_skipped() -> None:
    assert merge_object_info([{"A": None, "B": {"input": 3}}, {"B": {"input": {"x": 1}}}]) == {
        "B": {"input": 3}
    }


def test_model_folders_union() -> None:
    got = model_folders([{"checkpoints": ["b", "a"]}, {"checkpoints": ["a", "c"], "loras": []}])
    assert got == {"checkpoints": ["a", "b", "c"], "loras": []}


def test_system_stats_has_comfyuis_keys_and_one_device_per_gpu() -> None:
    rec = json.loads((TRACES / "10_misc.json").read_text())["system_stats"]["json"]
    gpus = [FleetGpu("a1", 0, "RTX 4090", 24576, 20000), FleetGpu("a2", 0, "L4", 8192, 8000)]
    stats = system_stats(gpus, 1 << 34, 1 << 33, ["comfyfleet", "coordinator"])
    assert stats["system"].keys() == rec["system"].keys()
    assert [d.keys() for d in stats["devices"]] == [rec["devices"][0].keys()] * 2
    assert [d["index"] for d in stats["devices"]] == [0, 1]
    assert stats["devices"][1]["vram_total"] == 8192 << 20
    assert shape(stats["system"]) == shape(rec["system"])
