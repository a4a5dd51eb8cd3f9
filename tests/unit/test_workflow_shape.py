"""Shape hash: widget values never change it; topology, classes and model files always do."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.shared.workflow_shape import model_refs, node_classes, shape_hash

TXT2IMG: dict[str, Any] = {
    "4": {
        "class_type": "CheckpointLoaderSimple",
        "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
    },
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 512, "height": 512, "batch_size": 1},
    },
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 1,
            "steps": 20,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}},
}

# (node, input) pairs that are widget values, and values to put there
WIDGETS = [
    ("3", "seed"),
    ("3", "steps"),
    ("3", "cfg"),
    ("5", "width"),
    ("5", "height"),
    ("6", "text"),
    ("7", "text"),
    ("9", "filename_prefix"),
    ("3", "denoise"),
]
widget_values = st.one_of(
    st.integers(-(2**63), 2**63), st.text(max_size=50), st.floats(allow_nan=False)
)


@given(st.lists(st.tuples(st.sampled_from(WIDGETS), widget_values), max_size=9))
def test_widget_values_do_not_change_the_shape(changes: list[Any]) -> None:
    wf = copy.deepcopy(TXT2IMG)
    for (node, name), value in changes:
        wf[node]["inputs"][name] = value
    assert shape_hash(wf) == shape_hash(TXT2IMG)


@given(st.sampled_from(["v2.safetensors", "sd_xl_base_1.0.safetensors", "x"]))
def test_a_different_model_file_changes_the_shape(name: str) -> None:
    wf = copy.deepcopy(TXT2IMG)
    wf["4"]["inputs"]["ckpt_name"] = name
    assert shape_hash(wf) != shape_hash(TXT2IMG)
    assert model_refs(wf) == (name,)


@given(
    st.sampled_from(
        [
            ("3", "positive", ["7", 0]),
            ("8", "vae", ["4", 1]),
            ("8", "samples", ["5", 0]),
            ("9", "images", ["3", 0]),
        ]
    )
)
def test_rewiring_changes_the_shape(change: tuple[str, str, list[Any]]) -> None:
    node, name, link = change
    wf = copy.deepcopy(TXT2IMG)
    wf[node]["inputs"][name] = link
    assert shape_hash(wf) != shape_hash(TXT2IMG)


def test_class_changes_and_extra_nodes_change_the_shape() -> None:
    wf = copy.deepcopy(TXT2IMG)
    wf["9"]["class_type"] = "PreviewImage"
    assert shape_hash(wf) != shape_hash(TXT2IMG)
    wf = copy.deepcopy(TXT2IMG)
    wf["10"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}
    assert shape_hash(wf) != shape_hash(TXT2IMG)


def test_key_order_does_not_matter_and_hash_is_prefixed() -> None:
    reordered = {k: TXT2IMG[k] for k in reversed(list(TXT2IMG))}
    assert shape_hash(reordered) == shape_hash(TXT2IMG)
    assert shape_hash(TXT2IMG).startswith("s:")


def test_models_and_classes_are_read_from_the_graph() -> None:
    wf = copy.deepcopy(TXT2IMG)
    wf["11"] = {
        "class_type": "LoraLoader",
        "inputs": {"lora_name": "detail.safetensors", "model": ["4", 0], "clip": ["4", 1]},
    }
    assert model_refs(wf) == ("detail.safetensors", "v1-5-pruned-emaonly.safetensors")
    assert node_classes(TXT2IMG) == (
        "CLIPTextEncode",
        "CheckpointLoaderSimple",
        "EmptyLatentImage",
        "KSampler",
        "SaveImage",
        "VAEDecode",
    )
