"""Prompt validation of the ComfyUI simulator (pure; bodies as recorded from ComfyUI 0.3.64)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.sim.nodes import CATALOGUE, SAMPLERS, CatalogueContext
from comfyfleet.sim.recording import normalise
from comfyfleet.sim.validation import ValidationContext, validate_prompt

TRACES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui-traces"
CTX = ValidationContext(
    catalogue=CATALOGUE,
    nodes=CatalogueContext(checkpoints=("model.safetensors",)),
    image_exists=lambda name: name == "there.png",
)


def invert_graph(**first_inputs: Any) -> dict[str, Any]:
    inputs = {"width": 64, "height": 64, "batch_size": 1, "color": 0, **first_inputs}
    return {
        "1": {"class_type": "EmptyImage", "inputs": inputs},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }


def txt2img(**sampler: Any) -> dict[str, Any]:
    ks = {
        "seed": 1, "steps": 4, "cfg": 7, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0],
        "latent_image": ["5", 0], **sampler,
    }  # fmt: skip
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "cat", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": ks},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "t"}},
    }  # fmt: skip


def node_error(result: Any, node_id: str) -> dict[str, Any]:
    errors = result.node_errors[node_id]["errors"]
    assert len(errors) == 1
    return errors[0]


RECORDED = json.loads((TRACES / "06_validation_errors.json").read_text())


@pytest.mark.parametrize(
    "case",
    [k for k in RECORDED if k not in ("no_prompt_key", "ws_during_validation_errors")],
)
def test_recorded_cases_give_recorded_bodies(case: str) -> None:
    trace = RECORDED[case]
    result = validate_prompt(trace["request_json"]["prompt"], CTX)
    assert not result.ok
    body = {"error": result.error, "node_errors": result.node_errors}
    assert normalise(body) == normalise(trace["json"])


def test_valid_prompt_converts_values_and_lists_outputs() -> None:
    result = validate_prompt(txt2img(cfg=7, steps="4"), CTX)
    assert result.ok and result.error is None and result.node_errors == {}
    assert result.outputs == ["9"]
    assert result.prompt["3"]["inputs"]["cfg"] == 7.0
    assert isinstance(result.prompt["3"]["inputs"]["cfg"], float)
    assert result.prompt["3"]["inputs"]["steps"] == 4


def test_value_smaller_than_min() -> None:
    result = validate_prompt(txt2img(seed=-1), CTX)
    error = node_error(result, "3")
    assert error["type"] == "value_smaller_than_min"
    assert error["message"] == "Value -1 smaller than min of 0"
    assert error["details"] == "seed"
    assert result.node_errors["3"]["dependent_outputs"] == ["9"]


def test_seed_range_upper_bound() -> None:
    assert validate_prompt(txt2img(seed=2**64 - 1), CTX).ok
    error = node_error(validate_prompt(txt2img(seed=2**64), CTX), "3")
    assert error["type"] == "value_bigger_than_max"


def test_long_combo_lists_are_summarised() -> None:
    error = node_error(validate_prompt(txt2img(sampler_name="magic"), CTX), "3")
    assert error["type"] == "value_not_in_list"
    assert error["details"] == f"sampler_name: 'magic' not in (list of length {len(SAMPLERS)})"
    assert error["extra_info"]["input_config"] is None


def test_unknown_checkpoint_is_not_in_list() -> None:
    graph = txt2img()
    graph["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    error = node_error(validate_prompt(graph, CTX), "4")
    assert error["type"] == "value_not_in_list"
    assert "['model.safetensors']" in error["details"]


def test_invalid_input_type() -> None:
    error = node_error(validate_prompt(invert_graph(width="wide"), CTX), "1")
    assert error["type"] == "invalid_input_type"
    assert error["message"] == "Failed to convert an input value to a INT value"


def test_return_type_mismatch() -> None:
    graph = txt2img()
    graph["8"]["inputs"]["samples"] = ["4", 0]  # MODEL into LATENT
    error = node_error(validate_prompt(graph, CTX), "8")
    assert error["type"] == "return_type_mismatch"
    assert error["extra_info"]["received_type"] == "MODEL"


def test_bad_linked_input() -> None:
    graph = invert_graph()
    graph["2"]["inputs"]["image"] = ["1", 0, 5]
    assert node_error(validate_prompt(graph, CTX), "2")["type"] == "bad_linked_input"


def test_bad_link_on_the_output_node_itself() -> None:
    graph = invert_graph()
    graph["3"]["inputs"]["images"] = ["7", 0]
    result = validate_prompt(graph, CTX)
    error = node_error(result, "3")
    assert error["type"] == "exception_during_validation"
    assert error["extra_info"]["exception_type"] == "KeyError"
    assert result.error is not None
    assert result.error["details"] == "Exception when validating node: '7'"


def test_one_good_output_is_enough() -> None:
    graph = invert_graph()
    graph["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    graph["5"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0},
    }
    result = validate_prompt(graph, CTX)
    assert result.ok and result.outputs == ["3"]
    assert result.node_errors["5"]["dependent_outputs"] == ["4"]


def test_partial_execution_targets() -> None:
    graph = invert_graph()
    graph["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    assert validate_prompt(graph, CTX, ["4"]).outputs == ["4"]
    assert validate_prompt(graph, CTX, ["1"]).error == {
        "type": "prompt_no_outputs",
        "message": "Prompt has no outputs",
        "details": "",
        "extra_info": {},
    }


def test_load_image_custom_validation() -> None:
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "there.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    assert validate_prompt(graph, CTX).ok
    graph["1"]["inputs"]["image"] = "gone.png"
    error = node_error(validate_prompt(graph, CTX), "1")
    assert error["details"] == "image - Invalid image file: gone.png"


def test_not_an_object_and_cycles_are_rejected() -> None:
    assert validate_prompt(["not", "a", "dict"], CTX).error["type"] == "invalid_prompt"  # type: ignore[index]
    graph = invert_graph()
    graph["1"] = {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}
    result = validate_prompt(graph, CTX)
    assert not result.ok
    assert result.error is not None and result.error["type"] == "prompt_outputs_failed_validation"


def test_input_is_not_mutated() -> None:
    graph = txt2img(cfg=7)
    before = json.dumps(graph, sort_keys=True)
    validate_prompt(graph, CTX)
    assert json.dumps(graph, sort_keys=True) == before
