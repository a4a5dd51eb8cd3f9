"""The coordinator's durable job store: one `Store` interface; memory, SQLite and PostgreSQL
backends."""

from __future__ import annotations

from pathlib import Path

from comfyfleet.coordinator.store.base import SchemaTooNew, Store
from comfyfleet.coordinator.store.dsn import check_store_url
from comfyfleet.coordinator.store.memory import MemoryStore
from comfyfleet.coordinator.store.sqlite import SqliteStore

DB_FILE = "coordinator.db"


def open_store(data_dir: Path, url: str | None = None) -> Store:
    """The store that the `store` setting names: a postgresql:// URL, or (unset) the SQLite file
    `coordinator.db` in `data_dir` (created if missing)."""
    if url is not None:
        check_store_url(url)  # ConfigError(key="store") naming the problem
        from comfyfleet.coordinator.store.postgres import PostgresStore

        return PostgresStore(url)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteStore(data_dir / DB_FILE)


__all__ = ["DB_FILE", "MemoryStore", "SchemaTooNew", "SqliteStore", "Store", "open_store"]
