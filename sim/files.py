"""Safe mapping of ComfyUI file references (`name [input]`, type + subfolder) to paths."""

from __future__ import annotations

import os
from pathlib import Path

from comfyfleet.sim.config import SimConfig

__all__ = ["annotated_input_path", "dir_for_type", "inside", "upload_folder"]

_ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}


def dir_for_type(config: SimConfig, kind: str) -> Path | None:
    return {
        "input": config.input_dir,
        "output": config.output_dir,
        "temp": config.resolved_temp_dir,
    }.get(kind)


def inside(base: Path, candidate: Path) -> bool:
    base_abs = os.path.abspath(base)
    return os.path.commonpath((base_abs, os.path.abspath(candidate))) == base_abs


def annotated_input_path(config: SimConfig, name: str) -> Path | None:
    """The file a LoadImage `image` value names, or None when it would leave its folder."""
    kind = "input"
    for suffix, annotated_kind in _ANNOTATIONS.items():
        if name.endswith(suffix):
            name, kind = name[: -len(suffix)], annotated_kind
            break
    base = dir_for_type(config, kind)
    if base is None or not name:
        return None
    path = base / name
    return path if inside(base, path) else None


def upload_folder(base: Path, subfolder: str, filename: str) -> Path | None:
    """Where `/upload/image` writes, or None when `subfolder`/`filename` would leave `base`."""
    folder = Path(os.path.join(base, os.path.normpath(subfolder))) if subfolder else base
    if os.path.basename(filename) != filename or not inside(base, folder / filename):
        return None
    return folder
