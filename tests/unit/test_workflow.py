"""API-format workflow validation and the canonical hash."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.workflow import find_cycle, validate_workflow, workflow_hash

GOOD = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
}


def test_good_workflow_passes() -> None:
    validate_workflow(GOOD)


@pytest.mark.parametrize(
    ("workflow", "field", "code"),
    [
        ([], "workflow", "type"),
        ("x", "workflow", "type"),
        ({}, "workflow", "empty"),
        ({"nodes": [], "links": []}, "workflow", "ui_format"),
        ({"1": 5}, "workflow.1", "type"),
        ({"1": {"inputs": {}}}, "workflow.1.class_type", "missing"),
        ({"1": {"class_type": "", "inputs": {}}}, "workflow.1.class_type", "missing"),
        ({"1": {"class_type": "A", "inputs": []}}, "workflow.1.inputs", "type"),
        ({"1": {"class_type": "A", "inputs": {"x": ["9", 0]}}}, "workflow.1.inputs.x", "bad_link"),
        ({"1": {"class_type": "A", "inputs": {"x": ["1", -1]}}}, "workflow.1.inputs.x", "bad_link"),
        (
            {
                "1": {"class_type": "A", "inputs": {"x": ["2", 0]}},
                "2": {"class_type": "B", "inputs": {"y": ["1", 0]}},
            },
            "workflow",
            "cycle",
        ),
        ({"1": {"class_type": "A", "inputs": {"x": ["1", 0]}}}, "workflow", "cycle"),
    ],
)
def test_bad_workflows_name_the_field(workflow: object, field: str, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_workflow(workflow)
    assert info.value.field == field
    assert info.value.code == code
    assert info.value.message


def test_ui_format_message_says_how_to_export() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_workflow({"nodes": [{"id": 1}], "links": [], "version": 0.4})
    assert "API format" in info.value.message


def test_long_chain_has_no_cycle_and_no_recursion_limit() -> None:
    chain = {
        str(i): {"class_type": "N", "inputs": {"x": [str(i - 1), 0]} if i else {}}
        for i in range(5000)
    }
    assert find_cycle(chain) is None
    validate_workflow(chain)


def test_hash_ignores_key_order() -> None:
    shuffled = json.loads(json.dumps(GOOD))
    items = list(shuffled.items())
    random.Random(1).shuffle(items)
    reordered = {
        k: {"inputs": dict(reversed(list(v["inputs"].items()))), "class_type": v["class_type"]}
        for k, v in items
    }
    assert workflow_hash(reordered) == workflow_hash(GOOD)


def test_hash_changes_with_values() -> None:
    other = json.loads(json.dumps(GOOD))
    other["1"]["inputs"]["width"] = 65
    assert workflow_hash(other) != workflow_hash(GOOD)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=4), json_values, max_size=6))
def test_hash_is_stable_under_reordering(d: dict) -> None:
    rev = dict(reversed(list(d.items())))
    assert workflow_hash(rev) == workflow_hash(d)
    assert len(workflow_hash(d)) == 64


@given(json_values)
def test_validation_never_raises_anything_else(value: object) -> None:
    try:
        validate_workflow(value)
    except InvalidInput as exc:
        assert exc.field is not None
