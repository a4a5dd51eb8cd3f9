"""The coordinator's durable job store: one `Store` interface, an in-memory and a SQLite backend."""

from __future__ import annotations

from pathlib import Path

from comfyfleet.coordinator.store.base import SchemaTooNew, Store
from comfyfleet.coordinator.store.memory import MemoryStore
from comfyfleet.coordinator.store.sqlite import SqliteStore

DB_FILE = "coordinator.db"


def open_store(data_dir: Path) -> SqliteStore:
    """The SQLite store in `data_dir` (created if missing), file `coordinator.db`."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteStore(data_dir / DB_FILE)


__all__ = ["DB_FILE", "MemoryStore", "SchemaTooNew", "SqliteStore", "Store", "open_store"]
