"""Retention without HTTP: expiry by TTL (per tenant), shedding under disk pressure (oldest
first, never an open job), and the three crash-safe steps resumed after an interruption."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.model import JobRecord, WebhookMessage
from comfyfleet.coordinator.output_store import LocalOutputs
from comfyfleet.coordinator.outputs import OutputFiles
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.coordinator.store import MemoryStore, SqliteStore, Store
from comfyfleet.coordinator.tenants import TenantSettings
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus

S = JobStatus
NOW = 1_000_000.0
DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class FillingDisk(LocalOutputs):
    """A disk as full as the bytes it holds say (10 bytes = 100 %), and a log of removals."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.removed: list[str] = []

    def remove_job(self, job_id: str, tenant: str) -> None:
        self.removed.append(job_id)
        super().remove_job(job_id, tenant)

    def fullness(self) -> float | None:
        return self.stored_bytes() / 10


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "c.db")


def make(tmp_path: Path, store: Store, **over: object) -> tuple[Coordinator, Clock, FillingDisk]:
    config = dataclasses.replace(CoordinatorConfig(data_dir=tmp_path), **over)  # type: ignore[arg-type]
    clock = Clock()
    coord = Coordinator(config, store, OutputFiles(config.outputs_dir, 1 << 20), clock=clock)
    disk = FillingDisk(config.outputs_dir)
    coord.retention.kept = disk
    return coord, clock, disk


def add_job(
    coord: Coordinator, job_id: str, status: JobStatus, at: float, tenant: str = "t", size: int = 1
) -> JobRecord:
    record = JobRecord(
        id=job_id,
        spec=JobSpec(workflow={"1": {"class_type": "X", "inputs": {}}}),
        workflow_hash="h",
        created_at=at - 10,
        tenant=tenant,
        status=status,
        attempt=1,
        updated_at=at,
        outputs=[{"name": "o.png", "size": size, "sha256": "0" * 64, "attempt": 1}],
    )
    coord.store.insert_job(record)
    path = coord.outputs.final_path(job_id, 1, "o.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return record


def files(coord: Coordinator) -> set[str]:
    return {p.parent.parent.name for p in coord.outputs.root.rglob("*") if p.is_file()}


def sweep(coord: Coordinator) -> int:
    return asyncio.run(coord.retention.sweep())


def test_expired_jobs_go_with_their_outputs_open_and_young_ones_stay(
    tmp_path: Path, store: Store
) -> None:
    coord, clock, _ = make(tmp_path, store, retention_s=DAY)
    add_job(coord, "old-done", S.COMPLETED, NOW - 2 * DAY)
    add_job(coord, "old-failed", S.FAILED, NOW - 2 * DAY)
    add_job(coord, "young", S.COMPLETED, NOW - 60)
    add_job(coord, "old-running", S.RUNNING, NOW - 2 * DAY)
    assert sweep(coord) == 2
    assert store.get_job("old-done") is None and store.get_job("old-failed") is None
    assert files(coord) == {"young", "old-running"}
    assert coord.metrics.output_bytes_deleted._value.get() == 2
    assert coord.metrics.jobs_expired.labels("ttl")._value.get() == 2
    clock.now += DAY
    assert sweep(coord) == 1
    assert files(coord) == {"old-running"} and store.get_job("old-running") is not None


def test_each_tenant_keeps_jobs_for_its_own_retention(tmp_path: Path, store: Store) -> None:
    coord, _, _ = make(tmp_path, store, retention_s=DAY)
    coord.tenants.save("keeper", TenantSettings(retention_s=30 * DAY))
    coord.tenants.save("hasty", TenantSettings(retention_s=60.0))
    add_job(coord, "k", S.COMPLETED, NOW - 2 * DAY, tenant="keeper")
    add_job(coord, "d", S.COMPLETED, NOW - 2 * DAY, tenant="plain")
    add_job(coord, "h", S.COMPLETED, NOW - 120, tenant="hasty")
    assert sweep(coord) == 2
    assert files(coord) == {"k"}


def test_a_job_still_telling_its_webhook_is_kept(tmp_path: Path, store: Store) -> None:
    coord, _, _ = make(tmp_path, store, retention_s=DAY)
    running = add_job(coord, "w", S.RUNNING, NOW - 2 * DAY)
    done = dataclasses.replace(running, status=S.COMPLETED)
    msg = WebhookMessage("msg_1", "w", "t", "https://x.example/", "job.completed", "{}", 1.0, 1.0)
    store.update_jobs([(done, S.RUNNING, 1)], [[msg]])
    assert sweep(coord) == 0
    store.save_message(dataclasses.replace(msg, state="delivered"))
    assert sweep(coord) == 1


def test_disk_pressure_sheds_oldest_finished_first_and_never_open_jobs(
    tmp_path: Path, store: Store
) -> None:
    coord, _, disk = make(tmp_path, store, retention_s=365 * DAY, disk_high_water=0.5)
    add_job(coord, "running", S.RUNNING, NOW - 500, size=3)
    for i, age in enumerate([100, 400, 300, 200]):
        add_job(coord, f"done-{age}", S.COMPLETED, NOW - age, size=1 + i % 2)
    # 3 + 1 + 2 + 1 + 2 = 9 bytes = 90 %: shed until at most 50 %
    sweep(coord)
    assert disk.fullness() is not None and disk.fullness() <= 0.5  # type: ignore[operator]
    assert disk.removed == ["done-400", "done-300", "done-200"]  # oldest first, no more
    assert "running" in files(coord) and store.get_job("running") is not None
    assert coord.metrics.jobs_expired.labels("disk")._value.get() == len(disk.removed)
    disk.fullness = lambda: 1.0  # type: ignore[method-assign]  # full whatever goes
    assert sweep(coord) == 1  # done-100, the last finished job
    assert sweep(coord) == 0  # nothing finished is left: the open job stays
    assert files(coord) == {"running"} and store.get_job("running") is not None


def test_an_interrupted_sweep_is_finished_by_the_next(tmp_path: Path, store: Store) -> None:
    coord, _, disk = make(tmp_path, store, retention_s=DAY)
    a = add_job(coord, "a", S.COMPLETED, NOW - 2 * DAY, size=4)
    b = add_job(coord, "b", S.COMPLETED, NOW - 2 * DAY, size=5)
    store.delete_jobs([a, b])  # step 1 done, then the coordinator died
    disk.remove_job("a", "t")  # step 2 half done
    assert files(coord) == {"b"} and [d.job_id for d in store.doomed(10)] == ["a", "b"]
    sweep(coord)
    assert files(coord) == set() and store.doomed(10) == []
