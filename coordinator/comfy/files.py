"""Files a ComfyUI client names: uploads kept centrally, and how `/view` names job outputs.

Uploads (`/upload/image`, `/upload/mask`) live under `<data_dir>/comfy/uploads/<tenant>/<type>/`
with ComfyUI's naming rules: a new name is kept; the same name with the same bytes keeps the name
(nothing is written); different bytes get `name (1).ext`, `name (2).ext`, ... unless `overwrite`.
A later prompt naming an upload carries its bytes to whichever agent runs it (the job's inputs).

A job's outputs are addressed as ComfyUI addresses files, with the job in the subfolder:
`/view?filename=<ComfyUI's name>&subfolder=<job id>[/<ComfyUI's subfolder>]&type=output|temp`,
so two GPUs writing `ComfyUI_00001_.png` never collide and a client keeps ComfyUI's names.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from comfyfleet.shared.errors import InvalidInput

__all__ = [
    "FOLDER_TYPES",
    "FileRef",
    "UploadStore",
    "parse_annotated",
    "job_file_ref",
    "split_job_subfolder",
    "reencode",
]

FOLDER_TYPES = ("input", "output", "temp")
_ANNOTATION = re.compile(r"^(.*) \[(input|output|temp)\]$")
_JOB_ID = re.compile(r"^comfy-[0-9a-f]{32}$|^[0-9a-f]{24}$")


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file as ComfyUI's JSON names it."""

    filename: str
    subfolder: str
    type: str

    def as_dict(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


def job_file_ref(job_id: str, ref: FileRef) -> FileRef:
    """How the facade names a job's file to clients (the job leads the subfolder)."""
    sub = f"{job_id}/{ref.subfolder}" if ref.subfolder else job_id
    return FileRef(ref.filename, sub, ref.type)


def split_job_subfolder(subfolder: str) -> tuple[str, str] | None:
    """(job id, ComfyUI's subfolder) from a facade subfolder; None when it names no job."""
    head, _, rest = subfolder.strip("/").partition("/")
    return (head, rest) if _JOB_ID.match(head) else None


def parse_annotated(value: str, default: str = "input") -> tuple[str, str, str]:
    """(type, subfolder, name) of a file name as LoadImage takes it: `sub/name.png`, optionally
    followed by ` [input]` / ` [output]` / ` [temp]` (ComfyUI's annotated file names); the type
    is `default` when not annotated."""
    kind = default
    match = _ANNOTATION.match(value)
    if match:
        value, kind = match.group(1), match.group(2)
    sub, _, name = value.rpartition("/")
    return kind, sub, name


def _safe_parts(subfolder: str, field: str) -> tuple[str, ...]:
    path = PurePosixPath(subfolder.replace("\\", "/"))
    if path.is_absolute() or any(p in ("..", "") for p in path.parts if p != "."):
        raise InvalidInput(field, "must stay inside its folder")
    return tuple(p for p in path.parts if p != ".")


def _safe_name(name: str, field: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise InvalidInput(field, "must be a plain file name")
    if len(name.encode()) > 255:
        raise InvalidInput(field, "is longer than 255 bytes")
    return name


class UploadStore:
    """Uploaded files, per tenant, in ComfyUI's input/output/temp folder layout."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _folder(self, tenant: str, kind: str, subfolder: str, field: str) -> Path:
        if kind not in FOLDER_TYPES:
            raise InvalidInput("type", f"must be one of {', '.join(FOLDER_TYPES)}")
        tenant_dir = hashlib.sha256(tenant.encode()).hexdigest()[:24]
        return self.root.joinpath(tenant_dir, kind, *_safe_parts(subfolder, field))

    def save(
        self,
        tenant: str,
        filename: str,
        data: bytes,
        *,
        kind: str = "input",
        subfolder: str = "",
        overwrite: bool = False,
    ) -> dict[str, str]:
        """Store an upload; ComfyUI's answer `{"name", "subfolder", "type"}`."""
        _safe_name(filename, "image")
        folder = self._folder(tenant, kind, subfolder, "subfolder")
        folder.mkdir(parents=True, exist_ok=True)
        name = filename
        if not overwrite:
            stem, ext = os.path.splitext(filename)
            n = 1
            while (folder / name).exists():
                if _same_bytes(folder / name, data):
                    return {"name": name, "subfolder": subfolder, "type": kind}
                name = f"{stem} ({n}){ext}"
                n += 1
        _write_atomic(folder / name, data)
        return {"name": name, "subfolder": subfolder, "type": kind}

    def path(self, tenant: str, kind: str, subfolder: str, filename: str) -> Path | None:
        """The stored file, or None (a bad name is None too: nothing there)."""
        try:
            folder = self._folder(tenant, kind, subfolder, "subfolder")
            _safe_name(filename, "filename")
        except InvalidInput:
            return None
        path = folder / filename
        return path if path.is_file() else None

    def named(self, tenant: str, value: str) -> Path | None:
        """The upload a LoadImage value names (`sub/name.png [input]`), or None."""
        kind, sub, name = parse_annotated(value)
        return self.path(tenant, kind, sub, name)

    def input_names(self, tenant: str, limit: int = 10_000) -> list[str]:
        """The tenant's input files as LoadImage lists them (`sub/name` for subfolders)."""
        base = self._folder(tenant, "input", "", "subfolder")
        if not base.is_dir():
            return []
        names: list[str] = []
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp"):
                names.append(path.relative_to(base).as_posix())
                if len(names) >= limit:
                    break
        return names


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    except OSError:
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reencode(data: bytes, preview: str | None, channel: str | None) -> tuple[bytes, str] | None:
    """`/view`'s `preview=webp;90` and `channel=rgb|a` re-encodings, as ComfyUI makes them;
    None: serve the file as it is. Raises OSError/ValueError for bytes that are no image."""
    if preview is not None:
        parts = preview.split(";")
        fmt = parts[0] if parts[0] in ("webp", "jpeg") and "a" not in (channel or "") else "webp"
        quality = int(parts[-1]) if parts[-1].isdigit() else 90
        with Image.open(io.BytesIO(data)) as img:
            out: Any = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img
            buf = io.BytesIO()
            out.save(buf, format=fmt, quality=min(quality, 100))
        return buf.getvalue(), f"image/{fmt}"
    if channel == "rgb":
        with Image.open(io.BytesIO(data)) as img:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    if channel == "a":
        with Image.open(io.BytesIO(data)) as img:
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            rgba = Image.new("RGBA", img.size)
            rgba.putalpha(alpha)
            buf = io.BytesIO()
            rgba.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    return None
