"""Where the stock ComfyUI frontend's files are (the `ui` extra, `comfyui-frontend-package`),
found once when the facade starts."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Frontend", "frontend"]


@dataclass(frozen=True, slots=True)
class Frontend:
    """The stock frontend's files (None without the `ui` extra) and its extension scripts."""

    root: Path | None
    extensions: tuple[str, ...]


def frontend() -> Frontend:
    root = frontend_root()
    return Frontend(root, tuple(extension_scripts(root)))


def frontend_root() -> Path | None:
    """The stock frontend's files, when the `ui` extra is installed."""
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "static"
    return root if (root / "index.html").is_file() else None


def extension_scripts(root: Path | None) -> list[str]:
    """`/extensions`: the frontend's own extension scripts, as ComfyUI lists them."""
    if root is None:
        return []
    return sorted("/" + p.relative_to(root).as_posix() for p in (root / "extensions").rglob("*.js"))
