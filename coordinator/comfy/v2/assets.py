"""Comfy API v2 assets: a durable index per tenant over uploaded files.

An asset is a record (a UUID, its blake3 hash, size, content type, `file_path`, tags, when it
was made) over a file kept where the facade keeps uploads (`files.UploadStore`, the tenant's
`input` folder, with ComfyUI's naming rules), so a v2 upload is also what ComfyUI's `LoadImage`
lists and a `/prompt` may name. The index is SQLite (WAL, synchronous) beside the uploads, so
assets survive coordinator restarts. Each tenant sees only its own: a hash another tenant
uploaded is, to the caller, a miss (`404 blob_not_found`), exactly as v2 asks.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AssetIndex", "AssetRecord", "MODEL_FOLDERS", "split_file_path"]

# ComfyUI's model folders (folder_paths): a `file_path` under one of these is a model file
MODEL_FOLDERS = frozenset(
    {
        "checkpoints", "loras", "vae", "text_encoders", "clip", "diffusion_models", "unet",
        "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx", "controlnet",
        "t2i_adapter", "gligen", "upscale_models", "latent_upscale_models", "hypernetworks",
        "photomaker", "classifiers", "model_patches", "audio_encoders", "configs", "custom_nodes",
    }
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    file_path TEXT NOT NULL,
    subfolder TEXT NOT NULL,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS assets_by_hash ON assets (tenant, hash, created_at);
"""


@dataclass(frozen=True, slots=True)
class AssetRecord:
    id: str
    tenant: str
    hash: str
    size: int
    content_type: str
    file_path: str
    subfolder: str  # where the bytes are: the tenant's input/<subfolder>/<name>
    name: str
    tags: tuple[str, ...]
    created_at: float

    @property
    def upload_value(self) -> str:
        """The file as a LoadImage input names it."""
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


def split_file_path(file_path: str) -> tuple[bool, str, str]:
    """(is a model file, subfolder, name) of an upload's `file_path`: `photo.png`,
    `input/sub/photo.png` or `models/<folder>/x.safetensors` / `<folder>/x.safetensors`.
    Raises ValueError naming the problem for a path that is empty, absolute, climbs out with
    `..`, or starts with a folder that is neither `input` nor a model folder."""
    if not file_path or file_path.startswith(("/", "\\")) or "\x00" in file_path:
        raise ValueError("must be a relative path")
    parts = file_path.replace("\\", "/").split("/")
    if parts[0] == "models":
        parts = parts[1:]
        if not parts:
            raise ValueError("must name a file")
        if parts[0] not in MODEL_FOLDERS:
            raise ValueError(f"'{parts[0]}' is not a model folder")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError("must not contain empty, '.' or '..' segments")
    if len(parts) == 1:
        return False, "", parts[0]
    if parts[0] in MODEL_FOLDERS:
        return True, "/".join(parts[:-1]), parts[-1]
    if parts[0] != "input":
        raise ValueError(f"'{parts[0]}' is not an upload root (input, or a model folder)")
    return False, "/".join(parts[1:-1]), parts[-1]


class AssetIndex:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self,
        tenant: str,
        hash: str,
        size: int,
        content_type: str,
        file_path: str,
        where: tuple[str, str],
        tags: tuple[str, ...] = (),
    ) -> AssetRecord:
        record = AssetRecord(
            id=str(uuid.uuid4()),
            tenant=tenant,
            hash=hash,
            size=size,
            content_type=content_type,
            file_path=file_path,
            subfolder=where[0],
            name=where[1],
            tags=tags,
            created_at=time.time(),
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO assets VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    record.id,
                    tenant,
                    hash,
                    size,
                    content_type,
                    file_path,
                    record.subfolder,
                    record.name,
                    json.dumps(list(tags)),
                    record.created_at,
                ),  # fmt: skip
            )
        return record

    def _one(self, sql: str, args: tuple[object, ...]) -> AssetRecord | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return None if row is None else _record(row)

    def get(self, tenant: str, asset_id: str) -> AssetRecord | None:
        return self._one("SELECT * FROM assets WHERE id=? AND tenant=?", (asset_id, tenant))

    def by_hash(self, tenant: str, hash: str) -> AssetRecord | None:
        return self._one(
            "SELECT * FROM assets WHERE tenant=? AND hash=? ORDER BY created_at LIMIT 1",
            (tenant, hash.lower()),
        )

    def delete(self, tenant: str, asset_id: str) -> tuple[AssetRecord | None, bool]:
        """Remove the record; also whether it was the last one over its file."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM assets WHERE id=? AND tenant=?", (asset_id, tenant)
            ).fetchone()
            if row is None:
                return None, False
            record = _record(row)
            self._db.execute("DELETE FROM assets WHERE id=?", (asset_id,))
            others = self._db.execute(
                "SELECT COUNT(*) FROM assets WHERE tenant=? AND subfolder=? AND name=?",
                (tenant, record.subfolder, record.name),
            ).fetchone()[0]
        return record, others == 0


def _record(row: tuple[object, ...]) -> AssetRecord:
    tags = json.loads(str(row[8]))
    return AssetRecord(
        id=str(row[0]),
        tenant=str(row[1]),
        hash=str(row[2]),
        size=int(row[3]),  # type: ignore[call-overload]
        content_type=str(row[4]),
        file_path=str(row[5]),
        subfolder=str(row[6]),
        name=str(row[7]),
        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
        created_at=float(row[9]),  # type: ignore[arg-type]
    )
