"""ComfyUI's prompt validation over `/object_info` node definitions (pure, no I/O).

One implementation of ComfyUI's rules for both sides: the coordinator's ComfyUI facade validates
against the `/object_info` entries the agents report, merged into one catalogue
(`coordinator/comfy/catalog.py`), and the ComfyUI simulator against the entries of its own node
catalogue (`sim/validation.py`). The rules and the error bodies are ComfyUI's
(`execution.validate_prompt` / `validate_inputs`, recorded in
tests/fixtures/comfyui-traces/06_validation_errors.json). What ComfyUI checks with Python code
that object_info does not describe (`VALIDATE_INPUTS`) is reduced to the one case that matters:
an input declared `image_upload` (LoadImage, LoadImageMask) must name a file that exists (the
caller's `file_exists`: for the facade an upload or a file some agent lists, for the simulator
its input folder).

Mistakes that make ComfyUI's own code raise while following a link (a link to a missing node, an
output index past the end) are reported with the exception type and message that ComfyUI's code
raises there (`KeyError: '7'`, `IndexError: tuple index out of range`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NodeDefs", "Verdict", "no_prompt", "validate"]

NodeDefs = Mapping[str, Mapping[str, Any]]  # class_type -> its /object_info entry

# Where a fleet "raised": ComfyUI reports a traceback (a list of str); ours names this module.
_TRACEBACK = ['  File "comfyfleet/shared/comfy_validation.py", in validate_inputs\n']
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "INT": int,
    "FLOAT": float,
    "STRING": str,
    "BOOLEAN": bool,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """ComfyUI's (valid, error, good_outputs, node_errors), plus the prompt with INT/FLOAT/
    STRING/BOOLEAN values converted as ComfyUI converts them before it queues the prompt."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]
    prompt: dict[str, Any]

    def body(self) -> dict[str, Any]:
        """The 400 answer of POST /prompt."""
        return {"error": self.error, "node_errors": self.node_errors}


def _error(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def no_prompt() -> dict[str, Any]:
    """The 400 body for a POST /prompt without `prompt`."""
    return {
        "error": _error("no_prompt", "No prompt provided", "No prompt provided"),
        "node_errors": {},
    }


class _Raised(Exception):
    """What ComfyUI's validator would have raised at this point: (type name, message)."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name
        self.message = message


def validate(
    prompt: Any,
    defs: NodeDefs,
    file_exists: Callable[[str], bool] = lambda _name: False,
    partial_targets: list[str] | None = None,
) -> Verdict:
    """Validate `prompt` (the `prompt` field of POST /prompt) against `defs`."""
    if not isinstance(prompt, dict):
        msg = "Cannot execute because the prompt is not an object."
        return Verdict(False, _error("invalid_prompt", msg), [], {}, {})
    work: dict[str, Any] = {
        k: ({**v, "inputs": dict(v["inputs"])} if _has_inputs(v) else v) for k, v in prompt.items()
    }
    outputs: list[str] = []
    for node_id, node in work.items():
        if not isinstance(node, dict) or "class_type" not in node:
            msg = "Cannot execute because a node is missing the class_type property."
            return Verdict(
                False, _error("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {}, work
            )
        class_type = node["class_type"]
        entry = defs.get(class_type) if isinstance(class_type, str) else None
        if entry is None:
            msg = f"Cannot execute because node {class_type} does not exist."
            return Verdict(
                False, _error("invalid_prompt", msg, f"Node ID '#{node_id}'"), [], {}, work
            )
        if entry.get("output_node") is True and (
            partial_targets is None or node_id in partial_targets
        ):
            outputs.append(node_id)
    if not outputs:
        return Verdict(False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {}, work)

    checker = _Checker(work, defs, file_exists)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for out in outputs:
        try:
            valid, reasons = checker.check(out)
        except _Raised as exc:
            valid = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    exc.message,
                    exception_type=exc.type_name,
                    traceback=list(_TRACEBACK),
                )
            ]
            checker.validated[out] = (False, reasons)
        if valid:
            good.append(out)
            continue
        failed.append((out, reasons))
        for node_id, (node_ok, node_reasons) in checker.validated.items():
            if node_ok or not node_reasons:
                continue
            entry = node_errors.setdefault(
                node_id,
                {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": work[node_id]["class_type"],
                },
            )
            entry["dependent_outputs"].append(out)
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, rs in failed for r in rs)
        error = _error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
        )
        return Verdict(False, error, [], node_errors, work)
    return Verdict(True, None, good, node_errors, work)


def _invalid(message: str, node_id: str, work: dict[str, Any]) -> Verdict:
    return Verdict(False, _error("invalid_prompt", message, f"Node ID '#{node_id}'"), [], {}, work)


def _has_inputs(node: Any) -> bool:
    return isinstance(node, dict) and isinstance(node.get("inputs"), dict)


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's `validate_node_input` (non-strict): equal, or comma-separated type sets that
    overlap, `*` matching anything."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def _combo(input_type: Any, extra: Mapping[str, Any]) -> list[Any] | None:
    if isinstance(input_type, list):
        return input_type
    if input_type == "COMBO" and isinstance(extra.get("options"), list):
        return list(extra["options"])
    return None


class _Checker:
    """`validate_inputs` with its memo {node_id: (valid, reasons)}."""

    def __init__(
        self, prompt: dict[str, Any], defs: NodeDefs, file_exists: Callable[[str], bool]
    ) -> None:
        self.prompt = prompt
        self.defs = defs
        self.file_exists = file_exists
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        self._active: set[str] = set()

    def _node(self, node_id: Any) -> dict[str, Any]:
        try:
            node = self.prompt[node_id]
        except KeyError:
            raise _Raised("KeyError", repr(node_id)) from None
        except TypeError:
            raise _Raised("TypeError", f"unhashable type: '{_tname(node_id)}'") from None
        if not isinstance(node, dict):
            raise _Raised("TypeError", f"'{_tname(node)}' object is not subscriptable")
        return node

    def check(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in self.validated:
            return self.validated[node_id]
        if node_id in self._active:
            raise _Raised("RecursionError", "Dependency cycle detected")
        self._active.add(node_id)
        try:
            result = self._check(node_id)
        finally:
            self._active.discard(node_id)
        self.validated[node_id] = result
        return result

    def _check(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        node = self._node(node_id)
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            raise _Raised("KeyError", "'inputs'")
        entry = self.defs[node["class_type"]]
        raw_inputs = entry.get("input")
        declared: Mapping[str, Any] = raw_inputs if isinstance(raw_inputs, Mapping) else {}
        errors: list[dict[str, Any]] = []
        valid = True
        uploads: list[str] = []
        for category in ("required", "optional"):
            section = declared.get(category)
            if not isinstance(section, Mapping):
                continue
            for name, spec in section.items():
                input_type, extra = _spec(spec)
                info = [input_type, extra]
                if extra.get("image_upload") is True:
                    uploads.append(name)
                if name not in inputs:
                    if category == "required":
                        errors.append(
                            _error(
                                "required_input_missing",
                                "Required input is missing",
                                name,
                                input_name=name,
                            )
                        )
                    continue
                value = inputs[name]
                if isinstance(value, list):
                    linked = self._link(name, value, input_type, info)
                    if linked is None:
                        continue
                    if isinstance(linked, dict):
                        errors.append(linked)
                    else:
                        valid = False
                    continue
                problem = self._value(inputs, name, input_type, extra, info, name in uploads)
                if problem is not None:
                    errors.append(problem)
        for name in uploads:
            value = inputs.get(name)
            if name in inputs and not isinstance(value, list):
                if not isinstance(value, str) or not self.file_exists(value):
                    errors.append(
                        _error(
                            "custom_validation_failed",
                            "Custom validation failed for node",
                            f"{name} - Invalid image file: {value}",
                            input_name=name,
                        )
                    )
        if errors or not valid:
            return False, errors
        return True, []

    def _link(self, name: str, value: list[Any], input_type: Any, info: list[Any]) -> Any:
        """None: the link is fine; a dict: an error of this node; False: the linked node (or
        something behind it) is invalid, its own errors filed under it."""
        if len(value) != 2:
            return _error(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                name,
                input_name=name,
                input_config=info,
                received_value=value,
            )
        linked_id, slot = value
        linked = self._node(linked_id)
        returns = self.defs[linked["class_type"]].get("output") or []
        received = _index(returns, slot)
        if not types_match(received, input_type):
            return _error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                f"{name}, received_type({received}) mismatch input_type({input_type})",
                input_name=name,
                input_config=info,
                received_type=received,
                linked_node=value,
            )
        try:
            linked_ok, _ = self.check(linked_id)
        except _Raised as exc:
            self.validated[linked_id] = (
                False,
                [
                    _error(
                        "exception_during_inner_validation",
                        "Exception when validating inner node",
                        exc.message,
                        input_name=name,
                        input_config=info,
                        exception_message=exc.message,
                        exception_type=exc.type_name,
                        traceback=list(_TRACEBACK),
                        linked_node=value,
                    )
                ],
            )
            return False
        return None if linked_ok else False

    def _value(
        self,
        inputs: dict[str, Any],
        name: str,
        input_type: Any,
        extra: Mapping[str, Any],
        info: list[Any],
        custom: bool,
    ) -> dict[str, Any] | None:
        value = inputs[name]
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        convert = _CONVERT.get(input_type) if isinstance(input_type, str) else None
        if convert is not None:
            try:
                value = inputs[name] = convert(value)
            except (TypeError, ValueError, OverflowError) as exc:
                return _not_converted(name, input_type, info, value, exc)
        if custom:
            return None
        try:
            if "min" in extra and value < extra["min"]:
                return _error(
                    "value_smaller_than_min",
                    f"Value {value} smaller than min of {extra['min']}",
                    name,
                    input_name=name,
                    input_config=info,
                    received_value=value,
                )
            if "max" in extra and value > extra["max"]:
                return _error(
                    "value_bigger_than_max",
                    f"Value {value} bigger than max of {extra['max']}",
                    name,
                    input_name=name,
                    input_config=info,
                    received_value=value,
                )
        except TypeError as exc:
            return _not_converted(name, input_type, info, value, exc)
        options = _combo(input_type, extra)
        if options is not None and not _contains(options, value):
            too_long = len(options) > 20
            listed = f"(list of length {len(options)})" if too_long else str(options)
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: '{value}' not in {listed}",
                input_name=name,
                input_config=None if too_long else info,
                received_value=value,
            )
        return None


def _not_converted(
    name: str, input_type: Any, info: list[Any], value: Any, exc: Exception
) -> dict[str, Any]:
    return _error(
        "invalid_input_type",
        f"Failed to convert an input value to a {input_type} value",
        f"{name}, {value}, {exc}",
        input_name=name,
        input_config=info,
        received_value=value,
        exception_message=str(exc),
    )


def _spec(spec: Any) -> tuple[Any, dict[str, Any]]:
    """(input type, its options) from an object_info input entry `[TYPE, {...}]`."""
    if isinstance(spec, list | tuple) and spec:
        extra = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
        return spec[0], dict(extra)
    return spec, {}


def _index(returns: Any, slot: Any) -> Any:
    if isinstance(slot, bool) or not isinstance(slot, int):
        raise _Raised("TypeError", "tuple indices must be integers or slices, not " + _tname(slot))
    try:
        return returns[slot]
    except IndexError:
        raise _Raised("IndexError", "tuple index out of range") from None


def _tname(value: Any) -> str:
    return type(value).__name__


def _contains(options: list[Any], value: Any) -> bool:
    try:
        return value in options
    except TypeError:
        return False
