"""Agent-side pieces of placement: host-specific refusals, node profile, inputs, inventory."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from comfyfleet.agent.inputs import rename_inputs
from comfyfleet.agent.inventory import Inventory, common
from comfyfleet.agent.profile import VramWatch, profile_of
from comfyfleet.agent.rejections import host_specific

TRACES = Path(__file__).parent.parent / "fixtures" / "comfyui-traces"


def refusal(case: str) -> dict:  # type: ignore[type-arg]
    trace = json.loads((TRACES / "06_validation_errors.json").read_text())
    return trace[case]["json"]  # type: ignore[no-any-return]


def test_unknown_node_class_is_host_specific() -> None:
    body = refusal("unknown_class")
    err = host_specific(body["error"], body["node_errors"])
    assert err is not None and err.code == "missing_node_class" and err.retryable
    assert err.node_type == "NoSuchNode"


def test_a_bad_widget_value_is_the_workflows_fault() -> None:
    body = refusal("bad_combo_value")  # upscale_method 'magic': wrong everywhere
    assert host_specific(body["error"], body["node_errors"]) is None
    body = refusal("missing_input")
    assert host_specific(body["error"], body["node_errors"]) is None


def test_a_missing_checkpoint_is_host_specific() -> None:
    node_errors = {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": "ckpt_name: 'x.safetensors' not in [...]",
                    "extra_info": {"input_name": "ckpt_name", "received_value": "x.safetensors"},
                }
            ],
        }
    }
    err = host_specific({"type": "prompt_outputs_failed_validation"}, node_errors)
    assert err is not None and err.code == "missing_model" and err.retryable
    assert err.details == {"missing": ["x.safetensors"]} and err.node_id == "4"


def test_profile_lists_cached_then_timed_nodes_with_types() -> None:
    graph = {"1": {"class_type": "EmptyImage"}, "2": {"class_type": "SaveImage"}}
    prof = profile_of({"2": 0.0125, "1": 0.5}, ["1"], graph)
    assert [(n.node, n.node_type, n.cached, n.ms) for n in prof] == [
        ("1", "EmptyImage", True, 0.0),
        ("2", "SaveImage", False, 12.5),
    ]


async def test_vram_watch_keeps_each_windows_peak_and_ignores_failed_readings() -> None:
    values = iter([100, None, 900, 300])
    calls = 0
    hold = asyncio.Event()  # after the values: a reading that never returns

    async def read() -> int | None:
        nonlocal calls
        calls += 1
        v = next(values, 0)
        if v is None:
            raise OSError("ComfyUI did not answer")
        if v == 0:
            await hold.wait()
        return v

    watch = VramWatch(read, 0.001)
    watch.open("a")
    for _ in range(200):
        if calls == 5:
            break
        await asyncio.sleep(0.002)
    assert watch.last_mb == 300 and watch.readings == 3
    watch.open("b")  # a job that starts now has the reading in force
    assert watch.close("a") == 900
    assert watch.close("b") == 300
    assert watch.close("never opened") is None


async def test_vram_watch_reads_once_per_interval_whatever_the_number_of_jobs() -> None:
    calls = 0

    async def read() -> int | None:
        nonlocal calls
        calls += 1
        return 10 * calls

    watch = VramWatch(read, 0.05)
    for job in range(20):  # 20 short jobs back to back, two at a time
        watch.open(job)
        await asyncio.sleep(0.005)
        if job:
            assert watch.close(job - 1) is not None
    watch.close(19)
    assert calls <= 3  # ~0.1 s of jobs at one reading per 0.05 s (the old sampler: 40+)


async def test_vram_watch_of_a_cpu_instance_asks_nothing() -> None:
    calls = 0

    async def read() -> int | None:
        nonlocal calls
        calls += 1
        return None  # no CUDA device: nothing to read

    watch = VramWatch(read, 0.001)
    watch.open("job")
    await asyncio.sleep(0.01)
    assert watch.close("job") is None
    assert calls == 1 and watch.readings == 0


def test_rename_inputs_rewrites_only_matching_strings() -> None:
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png", "upload": "image"}},
        "2": {"class_type": "X", "inputs": {"other": ["1", 0], "text": "in.png!"}},
    }
    out = rename_inputs(graph, {"in.png": "in (1).png"})
    assert out["1"]["inputs"]["image"] == "in (1).png"
    assert out["2"]["inputs"] == graph["2"]["inputs"]
    assert graph["1"]["inputs"]["image"] == "in.png"  # not changed in place


def test_inventory_of_several_instances_is_what_all_have() -> None:
    a = Inventory(frozenset({"m1", "m2"}), frozenset({"A", "B"}))
    b = Inventory(frozenset({"m2"}), frozenset({"B", "C"}))
    assert common([a, b]) == Inventory(frozenset({"m2"}), frozenset({"B"}))
    assert common([]) is None
