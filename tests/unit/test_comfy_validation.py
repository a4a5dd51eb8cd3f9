"""The facade's prompt validation: ComfyUI's recorded 400 bodies, from /object_info documents.

Two checks: every recorded validation case gives the recorded body (after the simulator
fidelity test's normalisation), and on random prompts the facade agrees with the simulator's
validator (a second implementation of ComfyUI's rules, over its own node catalogue).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyfleet.shared.comfy_validation import no_prompt, types_match, validate
from comfyfleet.sim.nodes import CATALOGUE, CatalogueContext, object_info
from comfyfleet.sim.recording import normalise, shape
from comfyfleet.sim.validation import ValidationContext, validate_prompt

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"
FILES = ("probe_upload.png",)
CTX = CatalogueContext(checkpoints=("sd_xl_base_1.0.safetensors",), list_input_files=lambda: [])
DEFS: dict[str, Any] = json.loads(json.dumps(object_info(CTX)))


def recorded(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TRACES / "06_validation_errors.json").read_text())[case]
    return data


# every recorded case that posts a prompt (`no_prompt_key` has none: see test_no_prompt_body)
CASES = sorted(
    case
    for case, trace in json.loads((TRACES / "06_validation_errors.json").read_text()).items()
    if isinstance(trace, dict) and "prompt" in trace.get("request_json", {})
)


@pytest.mark.parametrize("case", CASES)
def test_recorded_validation_bodies(case: str) -> None:
    trace = recorded(case)
    verdict = validate(trace["request_json"]["prompt"], DEFS, lambda name: name in FILES)
    assert not verdict.ok
    assert shape(verdict.body()) == shape(trace["json"])
    assert normalise(verdict.body()) == normalise(trace["json"])


def test_no_prompt_body() -> None:
    assert no_prompt() == recorded("no_prompt_key")["json"]


def test_valid_prompt_converts_values_and_names_outputs() -> None:
    prompt = json.loads((TRACES / "01_normal.json").read_text())["post"]["request_json"]["prompt"]
    prompt["1"]["inputs"]["width"] = "640"  # ComfyUI converts INT inputs before queueing
    verdict = validate(prompt, DEFS)
    assert verdict.ok and verdict.outputs == ["3"] and verdict.node_errors == {}
    assert verdict.prompt["1"]["inputs"]["width"] == 640
    assert prompt["1"]["inputs"]["width"] == "640"  # the caller's prompt is left alone


def test_uploaded_file_passes_custom_validation() -> None:
    prompt = recorded("loadimage_missing_file")["request_json"]["prompt"]
    prompt["1"]["inputs"]["image"] = "probe_upload.png"
    assert validate(prompt, DEFS, lambda name: name in FILES).ok


def test_combo_options_in_v3_shape() -> None:
    defs = {
        "Pick": {
            "input": {"required": {"mode": ["COMBO", {"options": ["a", "b"]}]}},
            "output": [],
            "output_node": True,
        }
    }
    assert validate({"1": {"class_type": "Pick", "inputs": {"mode": "a"}}}, defs).ok
    bad = validate({"1": {"class_type": "Pick", "inputs": {"mode": "z"}}}, defs)
    assert bad.node_errors["1"]["errors"][0]["type"] == "value_not_in_list"


def test_return_type_mismatch_and_wildcards() -> None:
    assert types_match("IMAGE", "IMAGE") and types_match("IMAGE,MASK", "MASK")
    assert types_match("*", "LATENT") and not types_match("IMAGE", "LATENT")
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
                                                          "batch_size": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }  # fmt: skip
    verdict = validate(prompt, DEFS)
    assert verdict.node_errors["2"]["errors"][0]["type"] == "return_type_mismatch"


def test_garbage_never_raises() -> None:
    for prompt in (None, [], "x", {"1": None}, {"1": {"class_type": 5}}, {"1": "class_type"}):
        assert not validate(prompt, DEFS).ok
    cyclic = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "c"}},
    }
    assert not validate(cyclic, DEFS).ok
    no_inputs = {"3": {"class_type": "SaveImage"}}
    verdict = validate(no_inputs, DEFS)
    assert verdict.node_errors["3"]["errors"][0]["type"] == "exception_during_validation"


# --- differential: the facade and the simulator agree on random prompts -------------------

CLASSES = sorted(CATALOGUE)
OUTPUT_CLASSES = sorted(c for c in CATALOGUE if DEFS[c]["output_node"])
SCALARS = st.one_of(
    st.integers(-5, 20000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["nearest-exact", "disabled", "euler", "x", "probe_upload.png", "12"]),
    st.booleans(),
)


@st.composite
def prompts(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(st.sampled_from("12345"), min_size=1, max_size=5, unique=True))
    prompt: dict[str, Any] = {}
    for i, node_id in enumerate(ids):
        cls = draw(st.sampled_from(OUTPUT_CLASSES if i == 0 else CLASSES))
        entry = DEFS[cls]["input"]
        names = [*entry.get("required", {}), *entry.get("optional", {})]
        inputs: dict[str, Any] = {}
        for name in names:
            choice = draw(st.integers(0, 5))
            if choice == 0:
                continue  # missing
            if choice == 1:
                inputs[name] = [draw(st.sampled_from([*ids, "9"])), draw(st.integers(0, 2))]
            else:
                inputs[name] = draw(SCALARS)
        prompt[node_id] = {"class_type": cls, "inputs": inputs}
    return prompt


def comparable(body: Any) -> Any:
    return normalise(json.loads(json.dumps(body, default=str)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompts())
def test_agrees_with_the_simulator(prompt: dict[str, Any]) -> None:
    sim = validate_prompt(
        json.loads(json.dumps(prompt)),
        ValidationContext(CATALOGUE, CTX, image_exists=lambda name: name in FILES),
    )
    ours = validate(prompt, DEFS, lambda name: name in FILES)
    assert ours.ok == sim.ok
    assert comparable(ours.error) == comparable(sim.error)
    assert comparable(ours.node_errors) == comparable(sim.node_errors)
    if ours.ok:
        assert ours.outputs == sim.outputs
