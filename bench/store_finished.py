"""Do finished jobs slow the queue? Open-job reads and writes with 0 and N finished jobs.

    .venv/bin/python -m bench.store_finished [--finished 100000] [--open 1000] [--url URL]
    make bench-store ARGS="--finished 20000"

For each backend (PostgreSQL: a throwaway cluster, or --url; SQLite: a temp file) it stores
--open open jobs, times the queue's operations, bulk-loads --finished COMPLETED jobs (with a
history and an output each, like real ones), ANALYZEs PostgreSQL as autovacuum would (the SQLite
store never runs ANALYZE, so neither does this), and times them again.
Prints a Markdown table (median of repeated calls). A script for people, not a test: nothing here
asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from comfyfleet.coordinator.model import JobRecord
from comfyfleet.coordinator.store import SqliteStore, Store, codec
from comfyfleet.coordinator.store.postgres import PostgresStore
from comfyfleet.shared import sample_workflows as sample
from comfyfleet.shared.history import Transition
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import TERMINAL, JobStatus

S = JobStatus
OPEN = [s for s in JobStatus if s not in TERMINAL]
COLUMNS = (
    "id, tenant, status, attempt, created_at, updated_at, priority, idempotency_key, spec, state"
)


def _spec(i: int) -> JobSpec:
    workflow = sample.txt2img(512, 512, steps=20, seed=i, ckpt=sample.SDXL, prefix="b", text="b")
    return JobSpec(workflow=workflow)


def _job(job_id: str, status: JobStatus, at: float, i: int) -> JobRecord:
    rec = JobRecord(
        id=job_id, spec=_spec(i), workflow_hash="h", created_at=at, status=status, updated_at=at
    )
    if status in TERMINAL:
        path = ["SUBMITTED", "QUEUED", "ASSIGNED", "RUNNING", status.value]
        rec.history = [
            Transition(at + k, a, b, "e", "bench", 1, "agent-1")
            for k, (a, b) in enumerate(zip([None, *path], path, strict=False))
        ]
        rec.outputs = [{"name": f"b_{i:06}.png", "size": 400_000, "sha256": "ab" * 32}]
        rec.attempt, rec.agent_id = 1, "agent-1"
    return rec


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


def _measure(store: Store, queued: list[str], repeat: int) -> dict[str, float]:
    cycle = iter(range(10**9))

    def assign_and_back() -> None:  # a placement and a requeue: two guarded updates
        job = store.get_job(queued[next(cycle) % len(queued)])
        assert job is not None
        there = dataclasses.replace(job, status=S.ASSIGNED, attempt=job.attempt + 1)
        back = dataclasses.replace(there, status=S.QUEUED)
        assert store.update_jobs([(there, S.QUEUED, job.attempt)]) == [True]
        assert store.update_jobs([(back, S.ASSIGNED, there.attempt)]) == [True]

    def batch_of_100() -> None:  # one plan placing 100 jobs, then all of them requeued
        jobs = [j for j in map(store.get_job, queued[:100]) if j is not None]
        there = [dataclasses.replace(j, status=S.ASSIGNED, attempt=j.attempt + 1) for j in jobs]
        back = [dataclasses.replace(j, status=S.QUEUED) for j in there]
        assert all(
            store.update_jobs([(t, S.QUEUED, j.attempt) for t, j in zip(there, jobs, strict=True)])
        )
        assert all(store.update_jobs([(b, S.ASSIGNED, b.attempt) for b in back]))

    few = max(5, repeat // 10)
    return {
        "recovery: non_terminal_jobs(), every open job": _median_ms(
            lambda: sum(1 for _ in store.non_terminal_jobs()), few
        ),
        "list_jobs(QUEUED), page of 100": _median_ms(
            lambda: store.list_jobs(statuses=[S.QUEUED], limit=100), repeat
        ),
        "list_jobs(every open status), page of 100": _median_ms(
            lambda: store.list_jobs(statuses=OPEN, limit=100), repeat
        ),
        "list_jobs(COMPLETED), newest 500 (read at start)": _median_ms(
            lambda: store.list_jobs(statuses=[S.COMPLETED], limit=500), few
        ),
        "get_job (an open job)": _median_ms(lambda: store.get_job(queued[0]), repeat),
        "placement + requeue (2 guarded updates)": _median_ms(assign_and_back, repeat),
        "100 placements + 100 requeues (2 batches, 100 get_job)": _median_ms(batch_of_100, few),
        "count_by_status (reads every job)": _median_ms(store.count_by_status, few),
    }


def _measure_submit(store: Store, prefix: str, repeat: int) -> float:
    submits = iter(range(10**9))
    return _median_ms(
        lambda: store.insert_job(_job(f"{prefix}-{next(submits):07}", S.QUEUED, 9e9, 0)), repeat
    )


def _rows(n: int) -> Iterator[tuple[object, ...]]:
    for i in range(n):
        status = (S.COMPLETED, S.COMPLETED, S.COMPLETED, S.FAILED, S.CANCELLED)[i % 5]
        yield codec.row_values(codec.encode_job(_job(f"done-{i:07}", status, 1000.0 + i, i)))


def _fill_postgres(url: str, n: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor().copy(f"COPY jobs ({COLUMNS}) FROM STDIN") as copy:  # type: ignore[arg-type]
            for row in _rows(n):
                copy.write_row(row)
        conn.execute("ANALYZE jobs")


def _fill_sqlite(path: Path, n: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        marks = ", ".join("?" * 10)
        conn.executemany(f"INSERT INTO jobs ({COLUMNS}) VALUES ({marks})", _rows(n))
        conn.execute("COMMIT")  # no ANALYZE: the SQLite store never runs one
    finally:
        conn.close()


def _sizes_postgres(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        names = ("jobs", "jobs_open", "jobs_status_created_id", "jobs_created_id")
        return {
            name: conn.execute(
                "SELECT pg_size_pretty(pg_relation_size(%s::regclass))", (name,)
            ).fetchone()[0]  # type: ignore[index]
            for name in names
        }


def _buffers_postgres(url: str) -> dict[str, int]:
    """Shared buffers (8 kB pages) each query of the queue touches, right after a VACUUM (as
    autovacuum keeps the table): independent of the machine's load."""
    from comfyfleet.coordinator.store import postgres as pg

    queries = {
        "recovery, first page of 500": (pg.OPEN_FIRST, [500]),
        "list_jobs(QUEUED), page of 100": pg.list_query([S.QUEUED], None, 100, None),
    }
    out = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (INDEX_CLEANUP ON) jobs")
        for name, (query, params) in queries.items():
            text = query if isinstance(query, str) else query.as_string(conn)
            plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {text}", params)  # type: ignore[arg-type]
            top = plan.fetchone()[0][0]["Plan"]  # type: ignore[index]
            out[name] = int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))
    return out


def run_backend(
    name: str,
    store: Store,
    fill: Callable[[int], None],
    args: argparse.Namespace,
    buffers: Callable[[Store], dict[str, int]] | None = None,
) -> dict[str, Any]:
    queued = []
    for i in range(args.open):
        status = (S.QUEUED, S.QUEUED, S.QUEUED, S.RUNNING, S.ASSIGNED)[i % 5]
        job = _job(f"open-{i:06}", status, 1e8 + i, i)  # open jobs are the newest
        store.insert_job(job)
        if status == S.QUEUED:
            queued.append(job.id)
    print(f"{name}: {args.open:,} open jobs, 0 finished ...", file=sys.stderr)
    # Submits add open jobs: timed first here and last below, so that both rounds of the other
    # operations see the same open jobs.
    submit_before = _measure_submit(store, "before", args.repeat)
    empty = _measure(store, queued, args.repeat)
    pages_before = buffers(store) if buffers else {}
    print(f"{name}: loading {args.finished:,} finished jobs ...", file=sys.stderr)
    start = time.perf_counter()
    fill(args.finished)
    print(f"{name}: loaded in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    full = _measure(store, queued, args.repeat)
    pages_after = buffers(store) if buffers else {}
    submit_after = _measure_submit(store, "after", args.repeat)
    submit = "insert_job (a submit)"
    return {
        "before": {**empty, submit: submit_before},
        "after": {**full, submit: submit_after},
        "pages": {k: (pages_before[k], pages_after[k]) for k in pages_before},
    }


@contextlib.contextmanager
def _postgres_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    from tests.helpers.postgres import running_cluster

    with running_cluster() as cluster:
        database = cluster.new_database()
        yield cluster.url(database)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--finished", type=int, default=100_000)
    ap.add_argument("--open", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=200, help="calls per median")
    ap.add_argument("--url", help="an empty PostgreSQL database (default: a throwaway cluster)")
    ap.add_argument("--only", choices=["postgres", "sqlite"])
    args = ap.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    sizes: dict[str, str] = {}
    if args.only in (None, "postgres"):
        with _postgres_url(args.url) as url:
            store = PostgresStore(url)
            try:
                results["PostgreSQL"] = run_backend(
                    "PostgreSQL",
                    store,
                    lambda n: _fill_postgres(url, n),
                    args,
                    lambda _: _buffers_postgres(url),
                )
                sizes = _sizes_postgres(url)
            finally:
                store.close()
    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(prefix="cf-bench-store-") as tmp:
            path = Path(tmp) / "coordinator.db"
            sqlite_store = SqliteStore(path)
            try:
                results["SQLite"] = run_backend(
                    "SQLite", sqlite_store, lambda n: _fill_sqlite(path, n), args
                )
            finally:
                sqlite_store.close()
    backends = list(results)
    print(
        f"\n{args.open:,} open jobs; median ms of each call with 0 and with "
        f"{args.finished:,} finished jobs in the table\n"
    )
    head = " | ".join(f"{b}: 0 | {b}: {args.finished:,}" for b in backends)
    print(f"| operation | {head} |")
    print("|---" * (1 + 2 * len(backends)) + "|")
    for op in next(iter(results.values()))["before"]:
        cells = " | ".join(
            f"{results[b]['before'][op]} | {results[b]['after'][op]}" for b in backends
        )
        print(f"| {op} | {cells} |")
    for name, (before, after) in results.get("PostgreSQL", {}).get("pages", {}).items():
        print(
            f"\nPostgreSQL pages touched, {name}: {before} with 0, {after} with {args.finished:,}"
        )
    if sizes:
        print(
            "\nPostgreSQL relation sizes after the load: "
            + ", ".join(f"{k} {v}" for k, v in sizes.items())
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
