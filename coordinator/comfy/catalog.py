"""What the fleet offers, as one ComfyUI would describe itself (pure).

`/object_info` is the union of the documents the agents report: every class any agent has (a
class only some agents have is listed; placement sends its jobs there), and for an input that is
a list of choices (checkpoints, samplers, input files), every choice any agent offers.
`/system_stats` lists one device per fleet GPU; `/models` the union of model files.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMFYUI_VERSION",
    "FEATURES",
    "FleetGpu",
    "merge_object_info",
    "model_folders",
    "system_stats",
    "upload_choices",
    "with_uploads",
]

COMFYUI_VERSION = "0.3.64"  # the ComfyUI whose API the facade speaks (see COMFYUI.md)
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
FEATURES: dict[str, Any] = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}


def merge_object_info(docs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One `/object_info` document from several; the first definition of a class wins, with
    the choices of its list inputs extended by those of later definitions (order kept)."""
    merged: dict[str, Any] = {}
    for doc in docs:
        for name, entry in doc.items():
            if not isinstance(entry, Mapping):
                continue
            have = merged.get(name)
            merged[name] = _copy_entry(entry) if have is None else _widen(have, entry)
    return merged


def _copy_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(entry)
    inputs = entry.get("input")
    if isinstance(inputs, Mapping):
        out["input"] = {
            cat: dict(section) if isinstance(section, Mapping) else section
            for cat, section in inputs.items()
        }
    return out


def _widen(have: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    mine, theirs = have.get("input"), other.get("input")
    if not isinstance(mine, dict) or not isinstance(theirs, Mapping):
        return have
    for cat, section in theirs.items():
        target = mine.get(cat)
        if not isinstance(target, dict) or not isinstance(section, Mapping):
            continue
        for name, spec in section.items():
            current = target.get(name)
            if current is None:
                continue  # an input this version lacks: the first definition decides
            target[name] = _union_spec(current, spec)
    return have


def _union_spec(a: Any, b: Any) -> Any:
    """`[choices, opts]` specs with their choices united; anything else stays `a`."""
    if not (isinstance(a, list) and isinstance(b, list) and a and b):
        return a
    if isinstance(a[0], list) and isinstance(b[0], list):
        return [_union(a[0], b[0]), *a[1:]]
    if a[0] == "COMBO" and b[0] == "COMBO" and len(a) > 1 and len(b) > 1:
        opts_a, opts_b = a[1], b[1]
        if isinstance(opts_a, Mapping) and isinstance(opts_b, Mapping):
            both = _union(opts_a.get("options") or [], opts_b.get("options") or [])
            return [a[0], {**opts_a, "options": both}, *a[2:]]
    return a


def _union(a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    out = list(a)
    seen = {_key(x) for x in a}
    for item in b:
        if _key(item) not in seen:
            seen.add(_key(item))
            out.append(item)
    return out


def _key(item: Any) -> Any:
    return item if isinstance(item, str | int | float | bool) or item is None else repr(item)


def _upload_inputs(defs: Mapping[str, Any]) -> Iterable[tuple[str, str, str, list[Any]]]:
    """(class, section, input, spec) of every input declared `image_upload` with its choices."""
    for name, entry in defs.items():
        inputs = entry.get("input") if isinstance(entry, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        for cat, section in inputs.items():
            if not isinstance(section, Mapping):
                continue
            for input_name, spec in section.items():
                if (
                    isinstance(spec, list)
                    and len(spec) > 1
                    and isinstance(spec[0], list)
                    and isinstance(spec[1], Mapping)
                    and spec[1].get("image_upload") is True
                ):
                    yield name, cat, input_name, spec


def upload_choices(defs: Mapping[str, Any]) -> frozenset[str]:
    """The input files the agents list themselves (LoadImage's choices)."""
    return frozenset(
        str(c) for _, _, _, spec in _upload_inputs(defs) for c in spec[0] if isinstance(c, str)
    )


def with_uploads(defs: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """`/object_info` for one tenant: its uploads among LoadImage's choices (so the web UI
    keeps a chosen upload valid after a reload). `defs` is left as it is."""
    out = dict(defs)
    if not names:
        return out
    for cls, cat, input_name, spec in list(_upload_inputs(defs)):
        entry = out[cls] = dict(out[cls])
        inputs = entry["input"] = dict(entry["input"])
        section = inputs[cat] = dict(inputs[cat])
        section[input_name] = [_union(spec[0], names), *spec[1:]]
    return out


def model_folders(reports: Iterable[Mapping[str, Sequence[str]]]) -> dict[str, list[str]]:
    """`/models` and `/models/{folder}`: every folder and file any agent reported."""
    folders: dict[str, set[str]] = {}
    for report in reports:
        for folder, names in report.items():
            folders.setdefault(folder, set()).update(str(n) for n in names)
    return {folder: sorted(names) for folder, names in sorted(folders.items())}


@dataclass(frozen=True, slots=True)
class FleetGpu:
    """One GPU of the fleet as `/system_stats` lists it."""

    agent_id: str
    index: int
    name: str
    vram_total_mb: int
    vram_free_mb: int


def system_stats(
    gpus: Sequence[FleetGpu], ram_total: int, ram_free: int, argv: Sequence[str]
) -> dict[str, Any]:
    """ComfyUI's `/system_stats` for the fleet: one `devices` entry per GPU, numbered in order
    (`index`), named `<GPU name> (<agent>:<index>)` so a person sees where it is."""
    devices = [
        {
            "name": f"cuda:{n} {gpu.name} ({gpu.agent_id}:{gpu.index})",
            "type": "cuda",
            "index": n,
            "vram_total": gpu.vram_total_mb << 20,
            "vram_free": gpu.vram_free_mb << 20,
            "torch_vram_total": gpu.vram_total_mb << 20,
            "torch_vram_free": gpu.vram_free_mb << 20,
        }
        for n, gpu in enumerate(gpus)
    ]
    return {
        "system": {
            "os": "posix",
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": COMFYUI_VERSION,
            "required_frontend_version": "",
            "installed_templates_version": "",
            "required_templates_version": "",
            "python_version": sys.version,
            "pytorch_version": "",
            "embedded_python": False,
            "argv": list(argv),
        },
        "devices": devices,
    }
