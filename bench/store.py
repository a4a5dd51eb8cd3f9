"""Store speed check: `.venv/bin/python -m bench.store [N] [DIR]`.

Inserts N jobs (one commit each), applies N guarded updates (one commit each), then N more in
batches of 100 (one commit per batch), and reads them back; prints operations per second.
Every job moves through the transition table (`coordinator/jobs.py`: created, assigned,
started), as the coordinator moves them. A script for people, not a test: nothing here asserts
a speed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.store import MemoryStore, Store, open_store
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobEvent, JobStatus

BATCH = 100
T = TypeVar("T")


def _workflow() -> dict[str, object]:
    return {
        str(i): {"class_type": "KSampler", "inputs": {"seed": i, "steps": 20, "cfg": 7.0}}
        for i in range(8)
    }


def _jobs(n: int) -> list[JobRecord]:
    spec = JobSpec(workflow=_workflow())
    now = time.time()
    return [
        moves.created(
            JobRecord(id=f"job-{i:08}", spec=spec, workflow_hash="h", created_at=now + i * 1e-3),
            now,
        )
        for i in range(n)
    ]


def _assigned(job: JobRecord) -> JobRecord:
    return moves.assigned(job, time.time(), "agent-1", "agent-1:0", 0)


def _started(job: JobRecord) -> JobRecord:
    return moves.advance(job, JobEvent.START, time.time(), "bench: prompt accepted")


def _each(fn: Callable[[T], object], items: Sequence[T]) -> Callable[[], None]:
    """Call fn on every item, keeping no result (retained results would time the GC instead)."""

    def run() -> None:
        for item in items:
            fn(item)

    return run


def _timed(label: str, n: int, fn: Callable[[], object]) -> None:
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    print(f"  {label:<34} {n / took:>11,.0f}/s  ({took * 1e6 / n:7.1f} us each)")


def bench(store: Store, n: int) -> None:
    jobs = _jobs(n)
    _timed("insert_job (commit each)", n, _each(store.insert_job, jobs))
    assigned = [_assigned(j) for j in jobs]
    _timed(
        "update_job (commit each)",
        n,
        _each(lambda j: store.update_job(j, JobStatus.QUEUED, 0), assigned),
    )
    running = [(_started(j), JobStatus.ASSIGNED, 1) for j in assigned]
    batches = [running[i : i + BATCH] for i in range(0, n, BATCH)]
    _timed(f"update_jobs (batches of {BATCH})", n, _each(store.update_jobs, batches))
    _timed("get_job", n, _each(store.get_job, [j.id for j in jobs]))
    pages = max(1, n // 100)
    _timed(
        "list_jobs (page of 100, by tenant)",
        pages,
        _each(lambda _: store.list_jobs(tenant="default", limit=100), range(pages)),
    )
    _timed("non_terminal_jobs (all N)", 1, store.non_terminal_jobs)
    stored = [store.get_job(j.id) for j in jobs]
    if any(j is None or j.status is not JobStatus.RUNNING for j in stored):
        raise SystemExit("a guarded update did not apply: the numbers above are not comparable")


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 10_000
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(argv[1]) if len(argv) > 1 else Path(tmp)
        print(f"SqliteStore ({data_dir / 'coordinator.db'}), {n:,} jobs:")
        sqlite_store = open_store(data_dir)
        try:
            bench(sqlite_store, n)
        finally:
            sqlite_store.close()
        print(f"MemoryStore, {n:,} jobs:")
        bench(MemoryStore(), n)


if __name__ == "__main__":
    main(sys.argv[1:])
