"""PostgreSQL's own promises, beyond the contract suite (which runs on it too): versioned schema,
open jobs on their own index, and faults of the server as StoreUnavailable.

Every test uses the session's throwaway cluster (`pg_cluster`): without PostgreSQL they fail."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from comfyfleet.coordinator.errors import StoreUnavailable
from comfyfleet.coordinator.model import AgentRecord, JobRecord
from comfyfleet.coordinator.store import SchemaTooNew, migrations, open_store
from comfyfleet.coordinator.store import postgres_sql as pg_sql
from comfyfleet.coordinator.store.postgres import PostgresOptions, PostgresStore
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import TERMINAL, JobStatus
from tests.helpers.postgres import Cluster
from tests.helpers.procs import free_port

S = JobStatus


@pytest.fixture
def schema(pg_cluster: Cluster) -> Iterator[str]:
    name = pg_cluster.new_schema()
    yield name
    pg_cluster.drop_schemas([name])


@pytest.fixture
def url(pg_cluster: Cluster, schema: str) -> str:
    return pg_cluster.url(search_path=schema)


@pytest.fixture
def open_pg(url: str) -> Iterator[Callable[..., PostgresStore]]:
    made: list[PostgresStore] = []

    def make(store_url: str = url, **options: Any) -> PostgresStore:
        made.append(PostgresStore(store_url, PostgresOptions(**options)))
        return made[-1]

    yield make
    for store in made:
        store.close()


def sql_in(pg_cluster: Cluster, schema: str, statement: str, *params: object) -> list[Any]:
    with psycopg.connect(pg_cluster.url(search_path=schema), autocommit=True) as conn:
        cur = conn.execute(statement, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def job(job_id: str, status: JobStatus = S.QUEUED, at: float = 1.0, **kw: Any) -> JobRecord:
    spec = JobSpec(workflow={"1": {"class_type": "KSampler", "inputs": {"seed": 5}}})
    return JobRecord(id=job_id, spec=spec, workflow_hash="wf", created_at=at, status=status, **kw)


def moved(record: JobRecord, status: JobStatus, attempt: int) -> JobRecord:
    return dataclasses.replace(record, status=status, attempt=attempt, updated_at=2.0)


# ---- schema ---------------------------------------------------------------------------------


def test_both_dialects_have_every_schema_version() -> None:
    assert len(migrations.SQLITE) == len(migrations.POSTGRES) == migrations.LATEST


def test_open_index_covers_exactly_the_non_terminal_statuses() -> None:
    """A new status needs a migration that rebuilds jobs_open: this test says so."""
    open_now = {s.value for s in JobStatus if s not in TERMINAL}
    assert set(migrations.POSTGRES_OPEN_STATUSES) == open_now


def test_first_open_migrates_and_data_survives_reopen(
    open_pg: Callable[..., PostgresStore],
    pg_cluster: Cluster,
    schema: str,
    url: str,
    tmp_path: Path,
) -> None:
    store = open_pg()
    assert sql_in(pg_cluster, schema, "SELECT version FROM comfyfleet_schema") == [
        (migrations.LATEST,)
    ]
    indexes = {r[0] for r in sql_in(pg_cluster, schema, "SELECT indexname FROM pg_indexes")}
    assert {"jobs_pkey", "jobs_idempotency", "jobs_open", "jobs_status_created_id"} <= indexes
    store.insert_job(job("q", idempotency_key="k"))
    store.save_agent(AgentRecord("a", 1.0, {"x": 1}))
    store.close()
    again = open_store(tmp_path / "unused", url)
    try:
        assert isinstance(again, PostgresStore)
        assert not (tmp_path / "unused").exists()  # PostgreSQL: nothing in the data dir
        assert again.get_job("q") == job("q", idempotency_key="k")
        assert again.insert_job(job("other", idempotency_key="k"))[0].id == "q"
        assert again.load_agents() == [AgentRecord("a", 1.0, {"x": 1})]
        assert again.schema_version() == migrations.LATEST
    finally:
        again.close()


def test_newer_schema_is_refused_untouched(
    open_pg: Callable[..., PostgresStore], pg_cluster: Cluster, schema: str
) -> None:
    open_pg().close()
    newer = migrations.LATEST + 1
    sql_in(pg_cluster, schema, "UPDATE comfyfleet_schema SET version = %s", newer)
    with pytest.raises(SchemaTooNew, match=f"schema version {newer}.*upgrade comfyfleet"):
        open_pg()
    assert sql_in(pg_cluster, schema, "SELECT version FROM comfyfleet_schema") == [(newer,)]


def test_coordinators_opening_together_migrate_once(
    open_pg: Callable[..., PostgresStore], pg_cluster: Cluster, schema: str
) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def opener() -> None:
        try:
            start.wait()
            open_pg()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sql_in(pg_cluster, schema, "SELECT version FROM comfyfleet_schema") == [
        (migrations.LATEST,)
    ]


def test_a_database_not_in_utf8_is_refused(pg_cluster: Cluster) -> None:
    name = "ascii_db"
    with pg_cluster.admin() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' TEMPLATE template0").format(
                sql.Identifier(name)
            )
        )
    try:
        with pytest.raises(StoreUnavailable, match="encoding is SQL_ASCII; comfyfleet needs UTF8"):
            PostgresStore(pg_cluster.url(name))
    finally:
        pg_cluster.drop_database(name)


# ---- finished jobs stay out of the queue's way ------------------------------------------------


def plan_of(pg_cluster: Cluster, schema: str, query: Any, params: list[object]) -> str:
    with psycopg.connect(pg_cluster.url(search_path=schema), autocommit=True) as conn:
        explain = sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) ") + (
            sql.SQL(query) if isinstance(query, str) else query
        )
        return "\n".join(r[0] for r in conn.execute(explain, params))


def test_open_job_reads_never_visit_finished_jobs(
    open_pg: Callable[..., PostgresStore], pg_cluster: Cluster, schema: str
) -> None:
    """Recovery pages read jobs_open, which holds no finished job; listings of open statuses
    read an index restricted to them. Neither scans the table nor filters finished rows out."""
    store = open_pg()
    store.update_jobs([])  # warm
    for i in range(2000):
        store.insert_job(job(f"done-{i:04}", S.COMPLETED, at=float(i)))
    store.insert_job(job("open", S.QUEUED, at=5000.0))
    store.insert_job(job("running", S.RUNNING, at=5001.0))
    sql_in(pg_cluster, schema, "ANALYZE jobs")
    plans = {
        "recovery, first page": plan_of(pg_cluster, schema, pg_sql.OPEN_FIRST, [500]),
        "recovery, next page": plan_of(pg_cluster, schema, pg_sql.OPEN_AFTER, [1.0, "x", 500]),
    }
    assert all("jobs_open" in plan for plan in plans.values()), plans
    for statuses in ([S.QUEUED], [S.RUNNING, S.ASSIGNED], [s for s in S if s not in TERMINAL]):
        query, params = pg_sql.list_query(statuses, "default", 100, None)
        plans[f"list {statuses}"] = plan_of(pg_cluster, schema, query, params)
    for name, plan in plans.items():
        assert "Seq Scan" not in plan and "Rows Removed by Filter" not in plan, (name, plan)
    assert [j.id for j in store.non_terminal_jobs()] == ["open", "running"]


# ---- faults of the server are StoreUnavailable ------------------------------------------------


def test_unreachable_server_is_unavailable_and_the_password_is_masked() -> None:
    dead = f"postgresql://fleet:pw-never-shown@127.0.0.1:{free_port()}/fleet"
    with pytest.raises(StoreUnavailable) as info:
        PostgresStore(dead, PostgresOptions(connect_timeout_s=2))
    assert "PostgreSQL unavailable" in info.value.message
    assert "127.0.0.1" in info.value.message
    assert "pw-never-shown" not in str(info.value) and "********" in info.value.message


def test_connections_the_server_drops_are_replaced(
    open_pg: Callable[..., PostgresStore], pg_cluster: Cluster, url: str
) -> None:
    store = open_pg(f"{url}&application_name=dropped-store", pool_min=2)
    store.insert_job(job("a"))
    with pg_cluster.admin() as conn:
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'dropped-store'"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    assert store.get_job("a") == job("a")  # a checked connection, not a dead one
    assert store.update_job(moved(job("a"), S.ASSIGNED, 1), S.QUEUED, 0)


def test_read_only_database_refuses_writes_and_reads_still_work(
    open_pg: Callable[..., PostgresStore], url: str
) -> None:
    open_pg().insert_job(job("a"))
    read_only = open_pg(f"{url}%20-c%20default_transaction_read_only%3Don")
    assert read_only.get_job("a") == job("a")
    with pytest.raises(StoreUnavailable, match="read-only"):
        read_only.insert_job(job("b"))
    with pytest.raises(StoreUnavailable, match="read-only"):
        read_only.update_jobs([(moved(job("a"), S.ASSIGNED, 1), S.QUEUED, 0)])
    with pytest.raises(StoreUnavailable, match="read-only"):
        read_only.save_agent(AgentRecord("x", 1.0, {}))
    assert read_only.get_job("a") == job("a") and read_only.get_job("b") is None


def test_disk_full_rolls_back_the_whole_batch(
    open_pg: Callable[..., PostgresStore], pg_cluster: Cluster, schema: str
) -> None:
    # A trigger raises SQLSTATE 53100 (disk_full), exactly as PostgreSQL does when a file
    # cannot be extended, for rows whose state mentions "no-space-left".
    store = open_pg()
    for name in "ab":
        store.insert_job(job(name))
    sql_in(
        pg_cluster,
        schema,
        "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.state LIKE '%no-space-left%' THEN "
        "RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END IF; "
        "RETURN NEW; END $$",
    )
    sql_in(
        pg_cluster,
        schema,
        "CREATE TRIGGER full_disk BEFORE INSERT OR UPDATE ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION full_disk()",
    )
    huge = moved(job("b"), S.ASSIGNED, 1)
    huge.outputs = [{"blob": "no-space-left"}]
    with pytest.raises(StoreUnavailable, match="disk full"):
        store.update_jobs([(moved(job("a"), S.ASSIGNED, 1), S.QUEUED, 0), (huge, S.QUEUED, 0)])
    with pytest.raises(StoreUnavailable, match="disk full"):
        store.insert_job(dataclasses.replace(huge, id="c", idempotency_key="k"))
    assert store.get_job("a") == job("a") and store.get_job("b") == job("b")  # nothing of it
    assert store.get_job("c") is None
    sql_in(pg_cluster, schema, "DROP TRIGGER full_disk ON jobs")
    assert store.update_jobs([(huge, S.QUEUED, 0)]) == [True]  # and the store recovers
    assert store.insert_job(job("c", idempotency_key="k"))[1]


def test_a_write_blocked_by_a_lock_times_out_instead_of_hanging(
    open_pg: Callable[..., PostgresStore], pg_cluster: Cluster, schema: str
) -> None:
    store = open_pg(statement_timeout_ms=300)
    store.insert_job(job("a"))
    with psycopg.connect(pg_cluster.url(search_path=schema)) as holder:
        holder.execute("SELECT 1 FROM jobs WHERE id = 'a' FOR UPDATE")
        with pytest.raises(StoreUnavailable, match="statement timed out"):
            store.update_job(moved(job("a"), S.ASSIGNED, 1), S.QUEUED, 0)
        holder.rollback()
    assert store.update_job(moved(job("a"), S.ASSIGNED, 1), S.QUEUED, 0)


def test_statements_are_our_own_constants() -> None:
    """Nothing from a caller is spliced into SQL text: values travel as parameters, statuses
    as JobStatus literals."""
    query, params = pg_sql.list_query([S.QUEUED], "t'); DROP TABLE jobs; --", 5, None)
    text = query.as_string(None)
    assert "DROP TABLE" not in text and "'QUEUED'" in text
    assert params == ["t'); DROP TABLE jobs; --", 6]
