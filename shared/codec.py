"""Encoding of messages: msgpack for agents, JSON for clients and debugging."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from comfyfleet.shared.errors import InvalidInput

MSGPACK = "application/msgpack"
JSON = "application/json"

T = TypeVar("T")

_msgpack_enc = msgspec.msgpack.Encoder()
_json_enc = msgspec.json.Encoder()
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]*)`")
_NAMED = re.compile(r"^`([A-Za-z_][A-Za-z0-9_]*)` ")  # a check of one field (__post_init__)


def encode(obj: Any, content_type: str = MSGPACK) -> bytes:
    if content_type == MSGPACK:
        return _msgpack_enc.encode(obj)
    return _json_enc.encode(obj)


def decode(data: bytes, type_: type[T], content_type: str = MSGPACK) -> T:
    """Decode and validate; raises `InvalidInput` naming the field on any problem."""
    try:
        if content_type == MSGPACK:
            return msgspec.msgpack.decode(data, type=type_)
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        kind = "msgpack" if content_type == MSGPACK else "JSON"
        raise InvalidInput("body", f"body is not valid {kind}: {exc}", "malformed") from None
    except RecursionError:
        raise InvalidInput("body", "body is nested too deeply", "too_deep") from None


def validation_error(text: str) -> InvalidInput:
    """Turn msgspec's message into an `InvalidInput` with a dotted field path."""
    path = ""
    m = _AT.search(text)
    message = text
    if m:
        path = re.sub(r"\[(\d+)\]", r".\1", m.group(1)).replace("[...]", "").lstrip(".")
        message = text[: m.start()]
    for pattern, code in ((_UNKNOWN, "unknown_field"), (_MISSING, "missing"), (_NAMED, "invalid")):
        found = pattern.search(message)
        if found:
            name = found.group(1)
            field = f"{path}.{name}" if path else name
            return InvalidInput(field, message, code)
    return InvalidInput(path or "body", message, "invalid")
