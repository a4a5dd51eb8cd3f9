"""PromptTracker, interpret_history and apply_seeds against recorded ComfyUI 0.3.64 traffic."""

from __future__ import annotations

import copy
import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfyfleet.agent.comfyui.events import (
    Cached,
    Done,
    Executed,
    Executing,
    Failed,
    Interrupted,
    OutputRef,
    Preview,
    Progress,
    Started,
    Succeeded,
    Text,
    Update,
    is_oom,
)
from comfyfleet.agent.comfyui.history import interpret_history
from comfyfleet.agent.comfyui.seeds import SEED_MAX, apply_seeds
from comfyfleet.agent.comfyui.tracker import PromptTracker

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"


def load(name: str) -> dict[str, Any]:
    return json.loads((TRACES / name).read_text())


def _image(m: dict[str, Any]) -> bytes:
    img = bytes.fromhex(m["image_magic"])
    return img + b"\0" * (m["image_len"] - len(img))


def binary_frame(m: dict[str, Any]) -> bytes:
    """Rebuild a binary frame from its recorded summary (the header format of COMFYUI.md)."""
    t = m["binary_event"]
    if t == 1:
        return struct.pack(">II", 1, m["image_type"]) + _image(m)
    if t == 4:
        meta = json.dumps(m["metadata"]).encode()
        return struct.pack(">II", 4, len(meta)) + meta + _image(m)
    if t == 3:
        node = m["node_id"].encode()
        return struct.pack(">II", 3, len(node)) + node + m["text"].encode()
    raise AssertionError(t)


def feed_all(tracker: PromptTracker, frames: list[dict[str, Any]]) -> list[Update]:
    out: list[Update] = []
    for f in frames:
        if f["kind"] == "text":
            out += tracker.feed(f["msg"], now=f["t"])
        else:
            out += tracker.feed_binary(binary_frame(f["msg"]), now=f["t"])
    return out


def brief(updates: list[Update]) -> list[str]:
    out = []
    for u in updates:
        match u:
            case Started():
                out.append("Started")
            case Cached(nodes=nodes):
                out.append("Cached:" + ",".join(nodes))
            case Executing(node=node):
                out.append(f"Executing:{node}")
            case Progress(node=node, value=v, max=m):
                out.append(f"Progress:{node}:{v:g}/{m:g}")
            case Executed(node=node):
                out.append(f"Executed:{node}")
            case Preview(node=node, mime=mime):
                out.append(f"Preview:{node}:{mime}")
            case Text(node=node):
                out.append(f"Text:{node}")
            case Succeeded():
                out.append("Succeeded")
            case Failed(node_id=node):
                out.append(f"Failed:{node}")
            case Interrupted(node_id=node):
                out.append(f"Interrupted:{node}")
            case Done():
                out.append("Done")
    return out


def tracker_for(post: dict[str, Any]) -> PromptTracker:
    return PromptTracker(post["json"]["prompt_id"], post["request_json"]["prompt"])


NORMAL_3 = [
    "Started",
    "Cached:",
    "Executing:1",
    "Progress:1:1/1",
    "Executing:2",
    "Progress:2:1/1",
    "Executing:3",
    "Executed:3",
    "Progress:3:1/1",
    "Succeeded",
    "Done",
]


# ------------------------------------------------------------------------------------------------
# Recorded streams


def test_normal_run() -> None:
    d = load("01_normal.json")
    tr = tracker_for(d["post"])
    ups = feed_all(tr, d["ws"])
    assert brief(ups) == NORMAL_3
    assert tr.outputs == [OutputRef("probe_invert_00001_.png", "", "output", "3")]
    assert ups[2] == Executing("1", "EmptyImage")
    assert tr.fraction == 1.0
    assert tr.done and isinstance(tr.result, Succeeded)
    assert set(tr.timings) == {"1", "2", "3"}
    assert all(v >= 0 for v in tr.timings.values())
    # nothing after Done
    assert tr.feed(d["ws"][-1]["msg"]) == []


def test_scale_run_two_outputs_in_subfolder() -> None:
    d = load("03_scale.json")
    tr = tracker_for(d["post"])
    assert brief(feed_all(tr, d["ws"])) == NORMAL_3
    assert [(o.subfolder, o.filename) for o in tr.outputs] == [
        ("probe", "scale_00001_.png"),
        ("probe", "scale_00002_.png"),
    ]


def test_fully_cached_rerun_completes_without_executing() -> None:
    d = load("02_cached_rerun.json")
    tr = tracker_for(d["post"])
    ups = feed_all(tr, d["ws"])
    assert brief(ups) == ["Started", "Cached:1,2,3", "Executed:3", "Succeeded", "Done"]
    assert tr.outputs == [OutputRef("probe_invert_00001_.png", "", "output", "3")]
    assert tr.cached == ["1", "2", "3"]
    assert tr.fraction == 1.0


def test_partial_cache() -> None:
    d = load("23_partial_cache.json")
    tr = tracker_for(d["second_post"])
    # The first prompt's frames (other prompt_id) precede on the same socket and are ignored.
    ups = feed_all(tr, d["first"] + d["second"])
    assert brief(ups) == [
        "Started",
        "Cached:1,2",
        "Executing:3",
        "Executed:3",
        "Progress:3:1/1",
        "Succeeded",
        "Done",
    ]
    fractions = [u.fraction for u in ups if isinstance(u, Progress)]
    assert fractions == [1.0]
    assert tr.outputs == [OutputRef("probe_pc_b_00001_.png", "", "output", "3")]


def test_preview_image_is_temp_output() -> None:
    d = load("04_preview.json")
    tr = tracker_for(d["post"])
    feed_all(tr, d["ws"])
    assert tr.outputs == [OutputRef("ComfyUI_temp_gdqzu_00001_.png", "", "temp", "2")]


def test_binary_preview_legacy_type1() -> None:
    d = load("05_ws_binary_legacy.json")
    tr = tracker_for(d["post"])
    ups = feed_all(tr, d["ws"])
    assert brief(ups) == [
        "Started",
        "Cached:",
        "Executing:1",
        "Progress:1:1/1",
        "Executing:2",
        "Progress:2:0/2",
        "Preview:2:image/png",
        "Progress:2:1/2",
        "Preview:2:image/png",
        "Progress:2:2/2",
        "Succeeded",
        "Done",
    ]
    previews = [u for u in ups if isinstance(u, Preview)]
    assert all(p.image.startswith(b"\x89PNG") and len(p.image) == 195 for p in previews)


def test_binary_preview_type4_with_metadata() -> None:
    d = load("05b_ws_binary_featureflags.json")
    recorded = [f["msg"] for f in d["ws"] if f["kind"] == "binary"]
    assert [len(binary_frame(m)) for m in recorded] == [m["total_len"] for m in recorded]
    tr = tracker_for(d["post"])
    ups = feed_all(tr, d["ws"])
    assert brief(ups)[5:8] == ["Preview:2:image/png", "Progress:2:0/2", "Preview:2:image/png"]
    assert brief(ups)[-2:] == ["Succeeded", "Done"]
    # a type 4 preview for another prompt is ignored even while ours runs
    other = copy.deepcopy(d["ws"][12]["msg"])
    assert other["binary_event"] == 4
    other["metadata"]["prompt_id"] = "someone-else"
    fresh = tracker_for(d["post"])
    fresh.set_running(True)
    assert fresh.feed_binary(binary_frame(other)) == []


def test_main_client_sees_type1_previews_of_its_own_prompt_only() -> None:
    # 05b's main_client_saw: another prompt's frames, then a prompt without client_id.
    d = load("05b_ws_binary_featureflags.json")
    tr = PromptTracker(d["post"]["json"]["prompt_id"], d["post"]["request_json"]["prompt"])
    assert feed_all(tr, d["main_client_saw"]) == []


def test_text_frame() -> None:
    d = load("22_text_frame.json")
    tr = tracker_for(d["post"])
    ups = feed_all(tr, d["ws"])
    assert "Text:2" in brief(ups)
    (text,) = [u for u in ups if isinstance(u, Text)]
    assert text.text == "width: 320, height: 200\n batch size: 3"
    (executed,) = [u for u in ups if isinstance(u, Executed)]
    assert executed.ui == {"text": ["320"]}
    (result,) = executed.outputs  # PreviewAny's text is a result (stored as a text file)
    assert (result.type, result.node_id, result.text) == ("text", "3", "320")
    assert brief(ups)[-2:] == ["Succeeded", "Done"]


def test_execution_error() -> None:
    d = load("07_execution_error.json")
    tr = tracker_for(d["post"])
    ups = feed_all(tr, d["ws"])
    assert brief(ups) == NORMAL_3[:7] + ["Failed:3", "Done"]
    failed = ups[-2]
    assert isinstance(failed, Failed)
    assert failed.node_type == "SaveImage"
    assert failed.exception_type == "Exception"
    assert "outside the output folder" in failed.exception_message
    assert len(failed.traceback) == 6
    assert not failed.retryable
    assert tr.fraction < 1.0


def test_interrupt_global() -> None:
    d = load("08_interrupt_global.json")
    tr = tracker_for(d["post"])
    ups = feed_all(tr, d["ws"])
    assert brief(ups)[-3:] == ["Executing:12", "Interrupted:12", "Done"]
    assert ups[-2] == Interrupted("12", "ImageBlur")
    assert "Succeeded" not in brief(ups)


def test_queue_and_targeted_interrupt_isolation() -> None:
    d = load("09_queue_and_targeted_interrupt.json")
    a, b, c = d["posts"]
    tr_a, tr_b, tr_c = tracker_for(a), tracker_for(b), tracker_for(c)
    ups_a, ups_b, ups_c = (feed_all(t, d["ws"]) for t in (tr_a, tr_b, tr_c))
    assert brief(ups_a)[-3:] == ["Executing:11", "Interrupted:11", "Done"]
    assert brief(ups_b) == NORMAL_3
    assert tr_b.outputs == [OutputRef("probe_b_00001_.png", "", "output", "3")]
    assert tr_a.outputs == []
    assert ups_c == []  # deleted from the queue: never a single event
    assert not tr_c.started


def test_reconnect_same_client_id_continuous_tracker() -> None:
    d = load("24_reconnect_same_clientid.json")
    pid = "f2e5aa47-ce86-4398-9df3-64f873f90d2c"
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {}},
        "10": {"class_type": "ImageBlur", "inputs": {}},
        "11": {"class_type": "ImageBlur", "inputs": {}},
        "99": {"class_type": "PreviewImage", "inputs": {}},
    }
    tr = PromptTracker(pid, graph)
    before = feed_all(tr, d["before_disconnect"])
    assert brief(before)[-1] == "Executing:10"
    after = feed_all(tr, d["after_reconnect"])
    # the id-less executing(10) repeats the running node: no duplicate Executing
    assert brief(after) == [
        "Progress:10:1/1",
        "Executing:11",
        "Progress:11:1/1",
        "Executing:99",
        "Executed:99",
        "Progress:99:1/1",
        "Succeeded",
        "Done",
    ]


def test_reconnect_id_less_executing_attributed_only_when_running() -> None:
    d = load("24_reconnect_same_clientid.json")
    pid = "f2e5aa47-ce86-4398-9df3-64f873f90d2c"
    graph = {"10": {"class_type": "ImageBlur", "inputs": {}}}
    id_less = d["after_reconnect"][1]["msg"]
    assert "prompt_id" not in id_less["data"]
    # A fresh tracker (e.g. after an agent restart) that /queue says is running takes it.
    tr = PromptTracker(pid, graph)
    tr.set_running(True)
    assert tr.feed(id_less) == [Executing("10", "ImageBlur")]
    # One that is not known to run (pending behind another prompt) must not.
    tr2 = PromptTracker(pid, graph)
    assert tr2.feed(id_less) == []
    tr3 = PromptTracker(pid, graph)
    tr3.set_running(False)
    assert tr3.feed(id_less) == []
    # Legacy previews and text frames carry no prompt_id either.
    assert tr3.feed_binary(struct.pack(">II", 1, 2) + b"\x89PNG") == []
    assert tr3.feed_binary(struct.pack(">II", 3, 1) + b"2hello") == []
    assert tr.feed_binary(struct.pack(">II", 3, 1) + b"2hello") == [Text("2", "hello")]


def test_malformed_frames_are_ignored() -> None:
    tr = PromptTracker("p", {})
    tr.set_running(True)
    assert tr.feed({}) == []
    assert tr.feed({"type": "executing"}) == []
    assert tr.feed({"type": "nonsense", "data": {"prompt_id": "p"}}) == []
    assert tr.feed_binary(b"") == []
    assert tr.feed_binary(b"\x00\x00\x00\x04\x00\x00\xff\xff{}") == []  # meta longer than frame
    assert tr.feed_binary(struct.pack(">II", 4, 3) + b"xx}" + b"img") == []  # bad JSON
    assert tr.feed_binary(struct.pack(">II", 9, 0)) == []
    assert tr.feed({"type": "progress", "data": {"prompt_id": "p", "value": "x", "max": 1}}) == []


def test_oom_is_retryable() -> None:
    tr = PromptTracker("p", {"5": {"class_type": "KSampler", "inputs": {}}})
    ups = tr.feed(
        {
            "type": "execution_error",
            "data": {
                "prompt_id": "p",
                "node_id": "5",
                "node_type": "KSampler",
                "exception_type": "torch.OutOfMemoryError",
                "exception_message": "Allocation on device ",
                "traceback": [],
            },
        }
    )
    assert ups == [
        Failed("5", "KSampler", "torch.OutOfMemoryError", "Allocation on device ", (), True)
    ]
    assert is_oom("RuntimeError", "CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_oom("torch.cuda.OutOfMemoryError", "")
    assert not is_oom("Exception", "Saving image outside the output folder is not allowed.")


def test_sampler_progress_weighted_fraction() -> None:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
        "2": {"class_type": "KSampler", "inputs": {}},
        "3": {"class_type": "SaveImage", "inputs": {}},
    }
    tr = PromptTracker("p", graph)
    tr.feed({"type": "execution_start", "data": {"prompt_id": "p"}})
    tr.feed({"type": "executing", "data": {"node": "1", "prompt_id": "p"}})
    ups = tr.feed({"type": "executing", "data": {"node": "2", "prompt_id": "p"}})
    assert ups[0] == Progress("1", 1.0, 1.0, pytest.approx(1 / 10))
    ups = tr.feed(
        {"type": "progress", "data": {"prompt_id": "p", "node": "2", "value": 10, "max": 20}}
    )
    assert ups == [Progress("2", 10.0, 20.0, pytest.approx((1 + 4) / 10))]


# ------------------------------------------------------------------------------------------------
# /history


def test_history_success() -> None:
    d = load("01_normal.json")
    pid = d["post"]["json"]["prompt_id"]
    res = interpret_history(pid, d["history"]["json"])
    assert res.state == "success" and res.completed and res.finished
    assert res.outputs == (OutputRef("probe_invert_00001_.png", "", "output", "3"),)
    assert res.number == 2


def test_history_cached_rerun() -> None:
    d = load("02_cached_rerun.json")
    res = interpret_history(d["post"]["json"]["prompt_id"], d["history"]["json"])
    assert res.state == "success" and res.cached == ("1", "2", "3")
    assert len(res.outputs) == 1


def test_history_error() -> None:
    d = load("07_execution_error.json")
    res = interpret_history(d["post"]["json"]["prompt_id"], d["history"]["json"])
    assert res.state == "error" and not res.completed
    assert res.error is not None
    assert (res.error.node_id, res.error.node_type) == ("3", "SaveImage")
    assert res.outputs == ()


def test_history_interrupted() -> None:
    d = load("08_interrupt_global.json")
    res = interpret_history(d["post"]["json"]["prompt_id"], d["history"]["json"])
    assert res.state == "interrupted"
    assert res.interrupted == Interrupted("12", "ImageBlur")
    d9 = load("09_queue_and_targeted_interrupt.json")
    pid_a = d9["posts"][0]["json"]["prompt_id"]
    assert interpret_history(pid_a, d9["history_A_interrupted"]["json"]).state == "interrupted"


def test_history_unknown_pending_deleted() -> None:
    d9 = load("09_queue_and_targeted_interrupt.json")
    pid_c = d9["posts"][2]["json"]["prompt_id"]
    assert interpret_history(pid_c, d9["history_C_deleted"]["json"]).state == "unknown"
    misc = load("10_misc.json")
    assert interpret_history("not-a-real-id", misc["history_unknown"]["json"]).state == "unknown"
    # another prompt's entry is not ours
    d = load("01_normal.json")
    assert interpret_history("other", d["history"]["json"]).state == "unknown"
    assert interpret_history("x", None).state == "unknown"


def test_finish_from_history_fills_what_the_socket_missed() -> None:
    d = load("01_normal.json")
    tr = tracker_for(d["post"])
    feed_all(tr, d["ws"][:6])  # socket dropped while node 2 ran
    res = interpret_history(tr.prompt_id, d["history"]["json"])
    ups = tr.finish_from_history(res)
    assert brief(ups) == ["Executed:3", "Succeeded", "Done"]
    assert tr.outputs == list(res.outputs)
    assert tr.finish_from_history(res) == []  # idempotent


# ------------------------------------------------------------------------------------------------
# Seeds


def test_apply_seeds_replaces_minus_one_only() -> None:
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": -1, "steps": 20}},
        "4": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 42}},
        "5": {"class_type": "RandomNoise", "inputs": {"noise_seed": -1}},
        "6": {"class_type": "X", "inputs": {"seed": ["3", 0]}},
    }
    before = copy.deepcopy(graph)
    new, seeds = apply_seeds(graph, random.Random(7))
    assert graph == before
    assert set(seeds) == {"3", "5"}
    assert new["3"]["inputs"]["seed"] == seeds["3"]
    assert new["5"]["inputs"]["noise_seed"] == seeds["5"]
    assert new["4"]["inputs"]["noise_seed"] == 42
    assert new["6"]["inputs"]["seed"] == ["3", 0]
    assert all(0 <= s <= SEED_MAX for s in seeds.values())
    assert SEED_MAX == 0xFFFFFFFFFFFFFFFF


# ------------------------------------------------------------------------------------------------
# Properties

NODE_IDS = ["1", "2", "3", "4", "5"]
GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {}},
    "2": {"class_type": "KSampler", "inputs": {}},
    "3": {"class_type": "ImageInvert", "inputs": {}},
    "4": {"class_type": "SaveImage", "inputs": {}},
    "5": {"class_type": "PreviewImage", "inputs": {}},
}
PIDS = ["ours", "theirs"]
pid_st = st.sampled_from(PIDS + [None])
node_st = st.sampled_from(NODE_IDS + ["77"])


def _with_pid(data: dict[str, Any], pid: str | None) -> dict[str, Any]:
    if pid is not None:
        data["prompt_id"] = pid
    return data


frame_st = st.one_of(
    st.builds(lambda p: {"type": "execution_start", "data": _with_pid({}, p)}, pid_st),
    st.builds(
        lambda p, ns: {"type": "execution_cached", "data": _with_pid({"nodes": ns}, p)},
        pid_st,
        st.lists(node_st, max_size=5),
    ),
    st.builds(
        lambda p, n: {"type": "executing", "data": _with_pid({"node": n}, p)},
        pid_st,
        st.one_of(node_st, st.none()),
    ),
    st.builds(
        lambda p, n, v, m: {
            "type": "progress",
            "data": _with_pid({"node": n, "value": v, "max": m}, p),
        },
        pid_st,
        node_st,
        st.integers(-5, 30),
        st.integers(-1, 20),
    ),
    st.builds(
        lambda p, ns, s: {
            "type": "progress_state",
            "data": _with_pid(
                {"nodes": {n: {"node_id": n, "state": s, "value": 1, "max": 1} for n in ns}}, p
            ),
        },
        pid_st,
        st.lists(node_st, max_size=5),
        st.sampled_from(["running", "finished"]),
    ),
    st.builds(
        lambda p, n: {
            "type": "executed",
            "data": _with_pid(
                {"node": n, "output": {"images": [{"filename": f"{p}_{n}.png", "type": "output"}]}},
                p,
            ),
        },
        pid_st,
        node_st,
    ),
    st.builds(lambda p: {"type": "execution_success", "data": _with_pid({}, p)}, pid_st),
    st.builds(
        lambda p: {
            "type": "execution_error",
            "data": _with_pid({"node_id": "2", "exception_type": "E"}, p),
        },
        pid_st,
    ),
    st.builds(lambda p: {"type": "execution_interrupted", "data": _with_pid({}, p)}, pid_st),
    st.builds(lambda: {"type": "status", "data": {"status": {"exec_info": {}}}}),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_st, max_size=40))
def test_fraction_monotonic_and_bounded(frames: list[dict[str, Any]]) -> None:
    tr = PromptTracker("ours", GRAPH)
    last = 0.0
    for f in frames:
        for u in tr.feed(f):
            if isinstance(u, Progress):
                assert 0.0 <= u.fraction <= 1.0
                assert u.fraction >= last
                last = u.fraction
        assert 0.0 <= tr.fraction <= 1.0
        assert tr.fraction >= last
        last = tr.fraction


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_st, max_size=40))
def test_other_prompts_never_leak(frames: list[dict[str, Any]]) -> None:
    # Frames explicitly for another prompt never produce updates, whatever surrounds them.
    tr = PromptTracker("ours", GRAPH)
    for f in frames:
        ups = tr.feed(f)
        if f["data"].get("prompt_id") == "theirs":
            assert ups == []
    assert all(not o.filename.startswith("theirs") for o in tr.outputs)
    # A tracker that never sees a frame of its own produces nothing at all.
    only_theirs = PromptTracker("ours", GRAPH)
    for f in frames:
        if f["data"].get("prompt_id") == "theirs":
            assert only_theirs.feed(f) == []


json_leaf = st.one_of(st.integers(-3, 3), st.booleans(), st.text(max_size=3), st.none())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=3),
        st.fixed_dictionaries(
            {
                "class_type": st.text(max_size=5),
                "inputs": st.dictionaries(
                    st.sampled_from(["seed", "noise_seed", "steps", "cfg"]), json_leaf
                ),
            }
        ),
        max_size=6,
    ),
    st.integers(0, 2**32),
)
def test_apply_seeds_properties(graph: dict[str, Any], seed: int) -> None:
    before = copy.deepcopy(graph)
    new, seeds = apply_seeds(graph, random.Random(seed))
    assert graph == before  # input untouched
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            replaced = (
                name in ("seed", "noise_seed")
                and isinstance(value, int)
                and not isinstance(value, bool)
                and value == -1
            )
            got = new[node_id]["inputs"][name]
            if replaced:
                assert isinstance(got, int) and 0 <= got <= SEED_MAX
                assert node_id in seeds
            else:
                assert got == value and type(got) is type(value)
    assert set(seeds) <= set(graph)


def test_every_file_kind_an_executed_event_names_is_an_output() -> None:
    """images, VideoHelperSuite's gifs, audio, 3D: any list of {filename, subfolder, type};
    each string of text (PreviewAny) a text result."""
    from comfyfleet.agent.comfyui.events import output_refs

    ui = {
        "images": [{"filename": "a.png", "subfolder": "", "type": "output"}],
        "gifs": [
            {"filename": "c.mp4", "subfolder": "v", "type": "output", "format": "video/h264-mp4"}
        ],
        "audio": [{"filename": "s.flac", "subfolder": "audio", "type": "output"}],
        "3d": [{"filename": "m.glb", "subfolder": "mesh", "type": "output"}],
        "text": ["width: 320"],
        "animated": [True],
    }
    refs = output_refs("9", ui)
    assert [(r.filename, r.subfolder, r.type, r.node_id) for r in refs] == [
        ("a.png", "", "output", "9"),
        ("c.mp4", "v", "output", "9"),
        ("s.flac", "audio", "output", "9"),
        ("m.glb", "mesh", "output", "9"),
        ("text_9_0.txt", "", "text", "9"),
    ]
    assert [r.text for r in refs] == [None, None, None, None, "width: 320"]
