"""What ComfyUI keeps for its web UI's user: settings and user data files (saved workflows,
keybindings, ...), durable and per tenant.

ComfyUI keeps them under `user/<user>/` (app/user_manager.py, app/app_settings.py); the fleet
keeps one such folder per tenant under `<data_dir>/comfy/userdata/`, so each tenant's UI has its
own saved workflows and settings, and they survive restarts. Paths from requests are relative to
that folder and never leave it (`resolve` is the one check). Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

__all__ = ["SETTINGS", "UserData"]

SETTINGS = "comfy.settings.json"
MAX_LISTED = 10_000


class UserData:
    def __init__(self, base: Path) -> None:
        self.base = base

    def root(self, tenant: str) -> Path:
        return self.base / hashlib.sha256(tenant.encode()).hexdigest()[:24]

    def resolve(self, tenant: str, rel: str) -> Path | None:
        """The file or folder `rel` names inside the tenant's folder; None when it would leave
        it (or names nothing). `rel` may be URL-encoded, as ComfyUI's frontend sends it."""
        if "%" in rel:
            rel = unquote(rel)
        path = PurePosixPath(rel.replace("\\", "/"))
        parts = [p for p in path.parts if p not in ("", ".")]
        if path.is_absolute() or not parts or ".." in parts or "\x00" in rel:
            return None
        return self.root(tenant).joinpath(*parts)

    # -- settings -----------------------------------------------------------------------------

    def settings(self, tenant: str) -> dict[str, Any]:
        try:
            data = json.loads((self.root(tenant) / SETTINGS).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_settings(self, tenant: str, settings: dict[str, Any]) -> None:
        write_atomic(self.root(tenant) / SETTINGS, json.dumps(settings, indent=4).encode())

    # -- files ----------------------------------------------------------------------------------

    def listing(
        self, tenant: str, folder: Path, recurse: bool, full_info: bool, split: bool
    ) -> list[Any]:
        """`GET /userdata?dir=`: files under `folder`, relative to it (ComfyUI's three forms)."""
        found = folder.rglob("*") if recurse else folder.glob("*")
        out: list[Any] = []
        for path in sorted(found):
            if not path.is_file() or path.name.startswith(".tmp-"):
                continue
            rel = path.relative_to(folder).as_posix()
            if full_info:
                out.append(file_info(path, folder))
            elif split:
                out.append([rel, *rel.split("/")])
            else:
                out.append(rel)
            if len(out) >= MAX_LISTED:
                break
        return out

    def listing_v2(self, tenant: str, folder: Path) -> list[dict[str, Any]]:
        """`GET /v2/userdata?path=`: folders and files under `folder`, folders first."""
        root = self.root(tenant)
        out: list[dict[str, Any]] = []
        for path in folder.rglob("*"):
            if path.name.startswith(".tmp-"):
                continue
            rel = path.relative_to(root).as_posix()
            if path.is_dir():
                out.append({"name": path.name, "path": rel, "type": "directory"})
            elif path.is_file():
                stat = path.stat()
                out.append({"name": path.name, "path": rel, "type": "file",
                            "size": stat.st_size, "modified": stat.st_mtime})  # fmt: skip
            if len(out) >= MAX_LISTED:
                break
        out.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return out


def file_info(path: Path, relative_to: Path) -> dict[str, Any]:
    stat = path.stat()
    return {
        "path": path.relative_to(relative_to).as_posix(),
        "size": stat.st_size,
        "modified": stat.st_mtime,
        "created": stat.st_ctime,
    }


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
