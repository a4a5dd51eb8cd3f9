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


def is_secret(cls: type, name: str) -> bool:
    meta = next((f.metadata for f in dataclasses.fields(cls) if f.name == name), None)
    return bool(meta and meta.get("secret")) or any(word in name for word in SECRET_WORDS)


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
        if value is not None and is_secret(cls, f.name):
            value = MASK
        shown[f.name] = value
    return shown


def to_toml(shown: Mapping[str, Any]) -> str:
    """Render `effective()` output; unset values appear as comments."""
    lines = []
    tables = []
    for key, value in shown.items():
        if value is None:
            lines.append(f"# {key} = (unset)")
        elif isinstance(value, dict):
            tables.append(f"\n[{key}]")
            tables.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        pairs = [
            f"{f.name} = {_toml_value(getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        ]
        return "{" + ", ".join(pairs) + "}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


# --- coercion ---------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def coerce(tp: Any, raw: Any, text: bool) -> Any:
    """`raw` as type `tp`, or ValueError saying what was expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text and isinstance(raw, str) and raw.strip().lower() in ("", "none"):
            return None
        if len(args) != 1:
            raise TypeError(f"unsupported config type {tp}")
        return coerce(args[0], raw, text)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            return _tables(item, raw, text)
        if text and isinstance(raw, str):
            parts = [p.strip() for p in raw.split(",") if p.strip()]
        elif isinstance(raw, list | tuple):
            parts = list(raw)
        else:
            raise ValueError(f"expected a list, got {_show(raw)}")
        return tuple(coerce(item, p, text) for p in parts)
    if origin is dict:
        if text and isinstance(raw, str):
            pairs: dict[str, Any] = {}
            for part in (p.strip() for p in raw.split(",") if p.strip()):
                k, sep, v = part.partition("=")
                if not sep or not k.strip():
                    raise ValueError(f"expected KEY=VALUE pairs, got {part!r}")
                pairs[k.strip()] = v.strip()
            raw = pairs
        if not isinstance(raw, dict):
            raise ValueError(f"expected a table of KEY = VALUE, got {_show(raw)}")
        bad = [k for k, v in raw.items() if not isinstance(v, str)]
        if bad:
            raise ValueError(f"value of {bad[0]!r} must be a string")
        return dict(raw)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if text and isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {_show(raw)}")
    if tp is int or tp is float:
        return _number(tp, raw, text)
    if tp is str:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {_show(raw)}")
        return raw
    if tp is Path:
        if isinstance(raw, Path):
            return raw
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"expected a path, got {_show(raw)}")
        return Path(raw).expanduser()
    raise TypeError(f"unsupported config type {tp}")


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


def _number(tp: type, raw: Any, text: bool) -> int | float:
    what = "an integer" if tp is int else "a number"
    value: int | float
    if isinstance(raw, bool):
        raise ValueError(f"expected {what}, got {_show(raw)}")
    if text and isinstance(raw, str):
        try:
            value = tp(raw.strip())
        except ValueError:
            raise ValueError(f"expected {what}, got {raw!r}") from None
    elif isinstance(raw, int) or (tp is float and isinstance(raw, float)):
        value = tp(raw)
    else:
        raise ValueError(f"expected {what}, got {_show(raw)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be finite, got {raw!r}")
    if value < 0:
        raise ValueError(f"must not be negative, got {raw!r}")
    return value


def _show(raw: Any) -> str:
    return f"{type(raw).__name__} {raw!r}"
