"""Daemon settings from layers: TOML file, then `COMFYFLEET_*` environment, then flags.

Driven by the fields of a frozen config dataclass and their types, so a field added to
`CoordinatorConfig` or `AgentConfig` is configurable everywhere with no code here. Pure apart
from reading the TOML file: the environment is passed in as a mapping.

Supported field types: str, int, float, bool, Path, `X | None` of those, `tuple[str, ...]`
(a TOML array, or comma-separated text), `dict[str, str]` (a TOML table, or `k=v,k=v` text) and
`tuple[D, ...]` of a frozen dataclass D (a TOML array of tables, or JSON text), each table checked
the same way against D's fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import tomli_w

from comfyfleet.shared.errors import SharedError

ENV_PREFIX = "COMFYFLEET_"
SECRET_WORDS = ("token", "secret", "password", "api_key")
MASK = "********"


class ConfigError(SharedError):
    """A setting that cannot be used: `key` names it, `message` says why."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class Layer:
    """One source of values. `text` layers (environment, `--set`) hold strings to parse."""

    name: str
    values: Mapping[str, Any]
    text: bool


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _metadata(cls: type, name: str) -> Mapping[str, Any]:
    return next((f.metadata for f in dataclasses.fields(cls) if f.name == name), {})


def is_secret(cls: type, name: str) -> bool:
    """Shown masked: a field marked `secret`, named like one, or with its own `mask` (a function
    that hides only the secret part of the value, such as the password in a database URL)."""
    meta = _metadata(cls, name)
    return bool(meta.get("secret") or meta.get("mask")) or any(w in name for w in SECRET_WORDS)


def masked(cls: type, name: str, value: Any) -> Any:
    """`value` as `config show` prints it: through the field's `mask`, or MASK for a secret."""
    mask = _metadata(cls, name).get("mask")
    if value is None or not is_secret(cls, name):
        return value
    return mask(value) if callable(mask) else MASK


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def env_layer(cls: type, env: Mapping[str, str], aliases: Mapping[str, str] | None = None) -> Layer:
    """`COMFYFLEET_<FIELD>` for every field (plus `aliases`: env name -> field name).

    Other COMFYFLEET_ variables are left alone: the environment is shared with other commands.
    """
    values: dict[str, str] = {}
    for alias, name in (aliases or {}).items():
        if alias in env:
            values[name] = env[alias]
    for name in field_types(cls):
        if env_name(name) in env:
            values[name] = env[env_name(name)]
    return Layer("environment", values, text=True)


def file_layer(path: Path) -> Layer:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(None, f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(None, f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(None, f"config file {path} is not valid TOML: {exc}") from None
    return Layer(f"config file {path}", data, text=False)


def resolve(cls: type, layers: Sequence[Layer]) -> dict[str, Any]:
    """Typed values by field name; later layers win. Unknown keys and bad values raise."""
    types_ = field_types(cls)
    out: dict[str, Any] = {}
    for layer in layers:
        for key, raw in layer.values.items():
            if key not in types_:
                known = ", ".join(sorted(types_))
                raise ConfigError(key, f"unknown key (from {layer.name}); known keys: {known}")
            try:
                out[key] = coerce(types_[key], raw, layer.text)
            except ValueError as exc:
                raise ConfigError(key, f"{exc} (from {layer.name})") from None
    return out


def build(cls: type, values: Mapping[str, Any]) -> Any:
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            missing[0],
            f"is required: set it in the config file, as {env_name(missing[0])}, or with a flag",
        )
    return cls(**values)


def effective(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every field with its value (or default), secrets masked, ready to print as TOML."""
    shown: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = None
        shown[f.name] = masked(cls, f.name, value)
    return shown


def to_toml(shown: Mapping[str, Any]) -> str:
    """Render `effective()` output (tomli-w); unset values appear as comments, TOML has no null."""
    unset = [f"# {key} = (unset)\n" for key, value in shown.items() if value is None]
    present = {key: _set_only(value) for key, value in shown.items() if value is not None}
    return "".join(unset) + tomli_w.dumps(msgspec.to_builtins(present, enc_hook=str))


def _set_only(value: Any) -> Any:
    """Tables (dataclasses) with their unset (None) keys left out, as TOML has no null."""
    if isinstance(value, tuple | list):
        return [_set_only(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: getattr(value, f.name)
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        }
    return value


# --- conversion -------------------------------------------------------------------------------

# Text words for booleans beyond msgspec's lax `true`/`false`/`1`/`0`.
_BOOL_WORDS = {"yes": True, "on": True, "no": False, "off": False}
_EXPECTED = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
    Path: "a path",
    tuple: "a list",
    dict: "a table of KEY = VALUE",
}


def coerce(tp: Any, raw: Any, text: bool) -> Any:
    """`raw` as type `tp`, or ValueError saying what was expected.

    msgspec converts: strictly for typed layers (a TOML string is not a port), leniently
    (`strict=False`) for text layers, after text lists and tables are split here. Numbers must
    be finite and not negative.
    """
    inner = _optional(tp)
    item = typing.get_args(inner)[0] if typing.get_origin(inner) is tuple else None
    if isinstance(item, type) and dataclasses.is_dataclass(item):
        return _tables(item, raw, text)
    if text and isinstance(raw, str):
        raw = raw.strip()
        if inner is not tp and raw.lower() in ("", "none"):
            return None
        raw = _split_text(inner, raw)
    try:
        value = msgspec.convert(raw, tp, strict=not text, dec_hook=_path)
    except msgspec.ValidationError as exc:
        raise ValueError(_explain(inner, raw, exc)) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"must be finite, got {raw!r}")
        if value < 0:
            raise ValueError(f"must not be negative, got {raw!r}")
    return value


def _tables(item: type, raw: Any, text: bool) -> tuple[Any, ...]:
    """A TOML array of tables (text: the same as JSON), each checked as `item`'s fields."""
    if text and isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else []
        except ValueError:
            raise ValueError(f"expected a JSON list of objects, got {raw!r}") from None
    if not isinstance(raw, list | tuple) or not all(isinstance(t, dict) for t in raw):
        raise ValueError(f"expected a list of tables, got {_show(raw)}")
    out = []
    for i, table in enumerate(raw):
        try:
            out.append(build(item, resolve(item, [Layer(f"entry {i}", table, text=False)])))
        except ConfigError as exc:
            raise ValueError(f"[{i}].{exc.key}: {exc.message}") from None
    return tuple(out)


def _optional(tp: Any) -> Any:
    """`X` for `X | None`; `tp` itself otherwise."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) != 1:
        raise TypeError(f"unsupported config type {tp}")
    return args[0]


def _split_text(tp: Any, raw: str) -> Any:
    """Text forms: `a, b` for a list, `k=v,k=v` for a table, yes/no/on/off for a boolean."""
    origin = typing.get_origin(tp)
    parts = [p.strip() for p in raw.split(",") if p.strip()]
    if origin is tuple:
        return parts
    if origin is dict:
        pairs = [part.partition("=") for part in parts]
        bad = next((k + sep + v for k, sep, v in pairs if not sep or not k.strip()), None)
        if bad is not None:
            raise ValueError(f"expected KEY=VALUE pairs, got {bad!r}")
        return {k.strip(): v.strip() for k, _, v in pairs}
    if tp is bool:
        return _BOOL_WORDS.get(raw.lower(), raw)
    return raw


def _path(tp: type, obj: Any) -> Any:
    """msgspec hook for `Path`: a non-blank string, `~` expanded."""
    if tp is not Path:
        raise NotImplementedError(f"unsupported config type {tp}")
    if isinstance(obj, Path):
        return obj
    if not isinstance(obj, str) or not obj.strip():
        raise ValueError(f"got {_show(obj)}")
    return Path(obj).expanduser()


def _explain(tp: Any, raw: Any, exc: msgspec.ValidationError) -> str:
    what = _EXPECTED.get(typing.get_origin(tp) or tp, str(tp))
    if isinstance(raw, dict) and typing.get_origin(tp) is dict:
        bad = next((k for k, v in raw.items() if not isinstance(v, str)), None)
        if bad is not None:
            return f"value of {bad!r} must be a string"
    if "- at `$" in str(exc):  # an item inside a list: msgspec says which and why
        return f"expected {what}: {exc}"
    return f"expected {what}, got {_show(raw)}"


def _show(raw: Any) -> str:
    return f"{type(raw).__name__} {raw!r}"
