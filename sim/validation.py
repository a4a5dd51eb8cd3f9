"""Prompt validation, as ComfyUI 0.3.64's `execution.validate_prompt` does it (pure, no I/O).

The error bodies are the recorded ones (tests/fixtures/comfyui-traces/06_validation_errors.json).
Mistakes that make ComfyUI's own code raise while following a link (a missing node, an output
index past the end) are reproduced by letting the same Python operations raise here, so the
exception type and message are the ones ComfyUI reports.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.sim.nodes import CatalogueContext, NodeSpec

__all__ = ["Validation", "ValidationContext", "no_prompt_error", "validate_prompt"]


@dataclass(frozen=True)
class ValidationContext:
    catalogue: Mapping[str, NodeSpec]
    nodes: CatalogueContext = field(default_factory=CatalogueContext)
    image_exists: Callable[[str], bool] = lambda _name: False


@dataclass(frozen=True)
class Validation:
    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]
    prompt: dict[str, Any]  # the prompt with INT/FLOAT/STRING inputs converted, as ComfyUI does


def no_prompt_error() -> dict[str, Any]:
    return {
        "type": "no_prompt",
        "message": "No prompt provided",
        "details": "No prompt provided",
        "extra_info": {},
    }


def _invalid(message: str, node_id: str) -> dict[str, Any]:
    return {
        "type": "invalid_prompt",
        "message": message,
        "details": f"Node ID '#{node_id}'",
        "extra_info": {},
    }


def _full_type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def validate_prompt(
    raw_prompt: Any,
    ctx: ValidationContext,
    partial_targets: list[str] | None = None,
) -> Validation:
    if not isinstance(raw_prompt, dict):
        error = {
            "type": "invalid_prompt",
            "message": "Cannot execute because the prompt is not an object.",
            "details": "",
            "extra_info": {},
        }
        return Validation(False, error, [], {}, {})
    prompt: dict[str, Any] = copy.deepcopy(raw_prompt)
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            msg = "Cannot execute because a node is missing the class_type property."
            return Validation(False, _invalid(msg, node_id), [], {}, prompt)
        class_type = node["class_type"]
        spec = ctx.catalogue.get(class_type) if isinstance(class_type, str) else None
        if spec is None:
            msg = f"Cannot execute because node {class_type} does not exist."
            return Validation(False, _invalid(msg, node_id), [], {}, prompt)
        if spec.output_node and (partial_targets is None or node_id in partial_targets):
            outputs.append(node_id)
    if not outputs:
        error = {
            "type": "prompt_no_outputs",
            "message": "Prompt has no outputs",
            "details": "",
            "extra_info": {},
        }
        return Validation(False, error, [], {}, prompt)

    checker = _Checker(prompt, ctx)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for out in outputs:
        try:
            valid, reasons = checker.validate(out)
        except Exception as exc:  # noqa: BLE001 - mirrors ComfyUI's catch-all
            valid = False
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(exc),
                    "extra_info": {
                        "exception_type": _full_type_name(exc),
                        "traceback": traceback.format_tb(exc.__traceback__),
                    },
                }
            ]
            checker.validated[out] = (False, reasons)
        if valid:
            good.append(out)
            continue
        failed.append((out, reasons))
        for node_id, (node_valid, node_reasons) in checker.validated.items():
            if node_valid or not node_reasons:
                continue
            if node_id not in node_errors:
                node_errors[node_id] = {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                }
            node_errors[node_id]["dependent_outputs"].append(out)

    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, rs in failed for r in rs)
        error = {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": details,
            "extra_info": {},
        }
        return Validation(False, error, [], node_errors, prompt)
    return Validation(True, None, good, node_errors, prompt)


def _validate_node_input(received: Any, expected: Any) -> bool:
    if not received != expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    received_set = {t.strip() for t in received.split(",")}
    expected_set = {t.strip() for t in expected.split(",")}
    if "*" in received_set or "*" in expected_set:
        return True
    return bool(received_set & expected_set)


class _Checker:
    """validate_inputs() with its memo `validated` {node_id: (valid, reasons)}."""

    def __init__(self, prompt: dict[str, Any], ctx: ValidationContext) -> None:
        self.prompt = prompt
        self.ctx = ctx
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        self._active: set[str] = set()

    def validate(self, unique_id: str) -> tuple[bool, list[dict[str, Any]]]:
        if unique_id in self.validated:
            return self.validated[unique_id]
        if unique_id in self._active:
            raise RecursionError("Dependency cycle detected")
        self._active.add(unique_id)
        try:
            result = self._validate(unique_id)
        finally:
            self._active.discard(unique_id)
        self.validated[unique_id] = result
        return result

    def _validate(self, unique_id: str) -> tuple[bool, list[dict[str, Any]]]:
        node = self.prompt[unique_id]
        inputs = node["inputs"]
        if not isinstance(inputs, dict):
            raise TypeError(f"inputs of node {unique_id} must be an object")
        spec: NodeSpec = self.ctx.catalogue[node["class_type"]]
        class_inputs = spec.input_types(self.ctx.nodes)
        categories = [("required", n) for n in class_inputs["required"]] + [
            ("optional", n) for n in class_inputs.get("optional", {})
        ]
        errors: list[dict[str, Any]] = []
        valid = True
        for category, name in categories:
            input_spec = class_inputs[category][name]
            input_type = input_spec[0]
            extra = input_spec[1] if len(input_spec) > 1 else {}
            info = [input_type, extra]
            if name not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            val = inputs[name]
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of "
                            "[node_id, slot_index]",
                            "details": name,
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_value": val,
                            },
                        }
                    )
                    continue
                o_id = val[0]
                o_class_type = self.prompt[o_id]["class_type"]
                received_type = self.ctx.catalogue[o_class_type].return_types[val[1]]
                if not _validate_node_input(received_type, input_type):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{name}, received_type({received_type}) mismatch "
                            f"input_type({input_type})",
                            "extra_info": {
                                "input_name": name,
                                "input_config": info,
                                "received_type": received_type,
                                "linked_node": val,
                            },
                        }
                    )
                    continue
                try:
                    linked_valid, _ = self.validate(o_id)
                    if not linked_valid:
                        valid = False
                except Exception as exc:  # noqa: BLE001 - ComfyUI files it under o_id
                    valid = False
                    self.validated[o_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(exc),
                                "extra_info": {
                                    "input_name": name,
                                    "input_config": info,
                                    "exception_message": str(exc),
                                    "exception_type": _full_type_name(exc),
                                    "traceback": traceback.format_tb(exc.__traceback__),
                                    "linked_node": val,
                                },
                            }
                        ],
                    )
                continue

            error = self._check_value(name, input_type, extra, info, val, inputs, spec)
            if error is not None:
                errors.append(error)

        for name in spec.custom_validated:
            val = inputs.get(name)
            if name in inputs and not isinstance(val, list):
                ret = self._custom_validate(spec, name, val)
                if ret is not True:
                    details = name if ret is False else f"{name} - {ret}"
                    errors.append(
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": details,
                            "extra_info": {"input_name": name},
                        }
                    )
        if errors or not valid:
            return False, errors
        return True, []

    def _custom_validate(self, spec: NodeSpec, name: str, val: Any) -> bool | str:
        if spec.name == "LoadImage" and name == "image":
            if not isinstance(val, str) or not self.ctx.image_exists(val):
                return f"Invalid image file: {val}"
        return True

    def _check_value(
        self,
        name: str,
        input_type: Any,
        extra: Mapping[str, Any],
        info: list[Any],
        val: Any,
        inputs: dict[str, Any],
        spec: NodeSpec,
    ) -> dict[str, Any] | None:
        converters: dict[str, Callable[[Any], Any]] = {
            "INT": int,
            "FLOAT": float,
            "STRING": str,
            "BOOLEAN": bool,
        }
        if isinstance(input_type, str) and input_type in converters:
            try:
                val = converters[input_type](val)
                inputs[name] = val
            except Exception as exc:  # noqa: BLE001
                return {
                    "type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {input_type} value",
                    "details": f"{name}, {val}, {exc}",
                    "extra_info": {
                        "input_name": name,
                        "input_config": info,
                        "received_value": val,
                        "exception_message": str(exc),
                    },
                }
        if name in spec.custom_validated:
            return None
        try:
            if "min" in extra and val < extra["min"]:
                return {
                    "type": "value_smaller_than_min",
                    "message": "Value {} smaller than min of {}".format(val, extra["min"]),
                    "details": name,
                    "extra_info": {"input_name": name, "input_config": info, "received_value": val},
                }
            if "max" in extra and val > extra["max"]:
                return {
                    "type": "value_bigger_than_max",
                    "message": "Value {} bigger than max of {}".format(val, extra["max"]),
                    "details": name,
                    "extra_info": {"input_name": name, "input_config": info, "received_value": val},
                }
        except TypeError as exc:
            return {
                "type": "invalid_input_type",
                "message": f"Failed to convert an input value to a {input_type} value",
                "details": f"{name}, {val}, {exc}",
                "extra_info": {
                    "input_name": name,
                    "input_config": info,
                    "received_value": val,
                    "exception_message": str(exc),
                },
            }
        if isinstance(input_type, list):
            try:
                present = val in input_type
            except TypeError:
                present = False
            if not present:
                input_config: list[Any] | None = info
                if len(input_type) > 20:
                    list_info = f"(list of length {len(input_type)})"
                    input_config = None
                else:
                    list_info = str(input_type)
                return {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{name}: '{val}' not in {list_info}",
                    "extra_info": {
                        "input_name": name,
                        "input_config": input_config,
                        "received_value": val,
                    },
                }
        return None
