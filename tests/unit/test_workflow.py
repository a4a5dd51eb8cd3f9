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
        # a two-element list naming a node is a link: its index must be an integer
        (
            {"1": {"class_type": "A"}, "2": {"class_type": "B", "inputs": {"x": ["1", "zero"]}}},
            "workflow.2.inputs.x",
            "bad_link",
        ),
        (
            {"1": {"class_type": "A"}, "2": {"class_type": "B", "inputs": {"x": ["1", 0.0]}}},
            "workflow.2.inputs.x",
            "bad_link",
        ),
        (
            {"1": {"class_type": "A"}, "2": {"class_type": "B", "inputs": {"x": [1, True]}}},
            "workflow.2.inputs.x",
            "bad_link",
        ),
        (
            {"1": {"class_type": "A"}, "2": {"class_type": "B", "inputs": {"x": ["1", None]}}},
            "workflow.2.inputs.x",
            "bad_link",
        ),
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


# A literal value that is a two-element list not naming any node stays a literal.
def test_two_element_lists_that_name_no_node_are_literals() -> None:
    validate_workflow(
        {"1": {"class_type": "A", "inputs": {"size": ["wide", "tall"], "range": [0.5, 1.5]}}}
    )


node_ids = st.text(alphabet="0123456789abc", min_size=1, max_size=3)
not_an_index = (
    st.text(max_size=5)
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.none()
    | st.lists(st.integers(), max_size=2)
    | st.integers(max_value=-1)
)


@given(st.lists(node_ids, min_size=1, max_size=5, unique=True), st.data())
def test_a_list_naming_a_node_must_carry_an_integer_output_index(
    ids: list[str], data: st.DataObject
) -> None:
    """Any `[node_id, x]` where node_id names a node of the workflow is a link: accepted iff
    `x` is a non-negative integer (the graph is a chain, so no cycle gets in the way)."""
    wf: dict[str, object] = {i: {"class_type": "N", "inputs": {}} for i in ids}
    source = ids[0]
    target = "t" + ids[-1]
    index = data.draw(st.integers(0, 50) | not_an_index)
    as_int = data.draw(st.booleans()) and source.isdigit()
    ref = int(source) if as_int and str(int(source)) == source else source
    wf[target] = {"class_type": "M", "inputs": {"x": [ref, index]}}
    good = isinstance(index, int) and not isinstance(index, bool) and index >= 0
    if good:
        validate_workflow(wf)
    else:
        with pytest.raises(InvalidInput) as info:
            validate_workflow(wf)
        assert (info.value.field, info.value.code) == (f"workflow.{target}.inputs.x", "bad_link")
