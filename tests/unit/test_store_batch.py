"""`Store.batch()`: one transaction around several calls, on every backend (the contract suite's
`make_store` fixture: memory, SQLite, PostgreSQL); then each backend's faults inside a batch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.errors import Conflict, NotLeader, StoreUnavailable
from comfyfleet.coordinator.model import AgentRecord, WebhookMessage
from comfyfleet.coordinator.store import SqliteStore, Store
from comfyfleet.coordinator.store.postgres import PostgresStore
from comfyfleet.shared.status import JobEvent, JobStatus
from tests.helpers.postgres import Cluster
from tests.unit import test_store_contract as contract
from tests.unit.test_store_contract import S, conn_of, integrity, job, moved

make_store = contract.make_store  # the contract suite's backends: memory, SQLite, PostgreSQL
store = contract.store


class Boom(Exception):
    pass


def message(job_id: str, n: int) -> WebhookMessage:
    return WebhookMessage(f"msg_{job_id}_{n}", job_id, "default", "https://h/x", "e", "{}", 1, 1)


def three(store: Store) -> list[Any]:
    for name in "abc":
        store.insert_job(job(name, status=S.QUEUED))
    return [store.get_job(n) for n in "abc"]


def test_a_batch_commits_every_write_together_and_reads_see_them(store: Store) -> None:
    a, b, _ = three(store)
    with store.batch():
        assigned = moved(a, S.ASSIGNED, 1, 2.0)
        assert store.update_jobs([(assigned, S.QUEUED, 0)], [[message("a", 1)]]) == [True]
        assert store.get_job("a") == assigned  # a read inside sees the batch's write
        running = moved(assigned, S.RUNNING, 1, 3.0)
        assert store.update_job(running, S.ASSIGNED, 1)  # a guard sees the earlier write
        assert store.update_jobs([(moved(b, S.ASSIGNED, 1, 2.0), S.RUNNING, 0)]) == [False]
        assert store.insert_job(job("d", status=S.QUEUED))[1]
    assert store.get_job("a") == running
    assert store.get_job("b") == b
    assert store.get_job("d") is not None
    assert [m.id for m in store.messages_of_job("a")] == ["msg_a_1"]


def test_a_batch_that_raises_leaves_nothing_of_itself(store: Store) -> None:
    a, b, c = three(store)
    store.save_agent(AgentRecord("ag", 1.0, {"v": 1}))
    with pytest.raises(Boom), store.batch():
        assert store.update_jobs(
            [
                (moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0),
                (moved(b, S.CANCELLED, 0, 2.0), S.QUEUED, 0),
            ],
            [[message("a", 1)], [message("b", 1)]],
        ) == [True, True]
        store.insert_job(job("d", idempotency_key="k"))
        store.save_agent(AgentRecord("ag", 2.0, {"v": 2}))
        store.save_agent(AgentRecord("ag2", 2.0, {}))
        store.save_tenant("t", "{}")
        raise Boom
    assert [store.get_job(n) for n in "abc"] == [a, b, c]
    assert store.get_job("d") is None
    assert store.messages_of_job("a") == [] and store.messages_of_job("b") == []
    assert store.load_agents() == [AgentRecord("ag", 1.0, {"v": 1})]
    assert store.load_tenants() == {}
    assert store.insert_job(job("e", idempotency_key="k"))[1]  # the key was never taken
    with store.batch():  # and the next batch works
        assert store.update_job(moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
    assert store.get_job("a").status == S.ASSIGNED  # type: ignore[union-attr]


def test_a_batch_inside_a_batch_joins_it(store: Store) -> None:
    a, _, _ = three(store)
    with pytest.raises(Boom), store.batch():
        with store.batch():
            assert store.update_job(moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
        assert store.get_job("a").status == S.ASSIGNED  # type: ignore[union-attr]
        raise Boom  # the outer batch fails: the inner one's write goes with it
    assert store.get_job("a") == a


def test_a_refused_write_inside_a_batch_leaves_the_rest_of_it(store: Store) -> None:
    a, _, _ = three(store)
    with store.batch():
        with pytest.raises(Conflict):
            store.insert_job(job("b"))  # a duplicate id: refused, nothing of it written
        assert store.update_job(moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
    assert store.get_job("a").status == S.ASSIGNED  # type: ignore[union-attr]


def test_a_batch_on_a_closed_store_is_unavailable(store: Store) -> None:
    store.close()
    with pytest.raises(StoreUnavailable), store.batch():
        pass


def test_sqlite_disk_full_inside_a_batch_fails_all_of_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        a, b, _ = three(store)
        conn = conn_of(store)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        with pytest.raises(StoreUnavailable, match="disk full"), store.batch():
            assert store.update_job(moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
            conn.execute(f"PRAGMA max_page_count = {pages}")
            huge = moved(b, S.ASSIGNED, 1, 2.0)
            huge.outputs = [{"blob": "x" * 200_000}]
            store.update_job(huge, S.QUEUED, 0)
        assert not conn.in_transaction
        assert store.get_job("a") == a and store.get_job("b") == b
        conn.execute("PRAGMA max_page_count = 1073741823")
        with store.batch():
            assert store.update_job(moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
        assert store.get_job("a").status == S.ASSIGNED  # type: ignore[union-attr]
    finally:
        store.close()
    assert integrity(path) == "ok"


def test_sqlite_a_batch_whose_transaction_vanished_does_not_go_on_in_autocommit(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        a, b, _ = three(store)
        with pytest.raises(StoreUnavailable, match="transaction was lost"), store.batch():
            assert store.update_job(moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
            conn_of(store).execute("ROLLBACK")  # what SQLite does itself on some I/O faults
            store.update_job(moved(b, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
        assert store.get_job("a") == a and store.get_job("b") == b
    finally:
        store.close()


def test_sqlite_a_batch_that_writes_nothing_takes_no_write_lock(tmp_path: Path) -> None:
    """The transaction begins at the batch's first write: a batch of progress reports only
    (reads, no writes) neither waits for nor takes SQLite's write lock."""
    import sqlite3

    path = tmp_path / "s.db"
    store = SqliteStore(path)
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    try:
        a, _, _ = three(store)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with store.batch():  # (BEGIN IMMEDIATE here would fail: the database is locked)
            assert store.get_job("a") == a
            assert not conn_of(store).in_transaction
        other.execute("ROLLBACK")
        with store.batch():  # the first write begins it
            assert store.update_job(moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
            assert conn_of(store).in_transaction
        assert store.get_job("a").status == S.ASSIGNED  # type: ignore[union-attr]
    finally:
        other.close()
        store.close()


def test_postgres_a_leaders_batch_stays_fenced(pg_cluster: Cluster) -> None:
    """A leader whose epoch ended writes nothing of its batch."""
    schema = pg_cluster.new_schema()
    store = PostgresStore(pg_cluster.url(search_path=schema))
    try:
        now = time.time()
        jobs = [moves.created(job(f"p{i}", created_at=now), now) for i in range(2)]
        for j in jobs:
            store.insert_job(j)
        epoch = store.try_lead("a", "http://a", 0.3)
        assert epoch is not None
        leader = store.as_leader(epoch)
        placed = [moves.assigned(j, now, "ag", "0", 0) for j in jobs]
        with leader.batch():
            assert leader.update_job(placed[0], JobStatus.QUEUED, 0)
        time.sleep(0.4)
        assert store.try_lead("b", "http://b", 30) is not None
        running = moves.advance(placed[0], JobEvent.START, now, "s")
        with pytest.raises(NotLeader), leader.batch():
            leader.update_job(placed[1], JobStatus.QUEUED, 0)
            leader.update_job(running, JobStatus.ASSIGNED, 1)
        assert store.get_job("p0") == placed[0]
        assert store.get_job("p1").status == JobStatus.QUEUED  # type: ignore[union-attr]
    finally:
        store.close()
        pg_cluster.drop_schemas([schema])


def test_postgres_a_batch_holds_one_connection(pg_cluster: Cluster) -> None:
    schema = pg_cluster.new_schema()
    store = PostgresStore(pg_cluster.url(search_path=schema))
    try:
        a, _, _ = three(store)
        with store.batch():
            with store._conn() as c1, store._conn() as c2:
                assert c1 is c2  # every call of the batch: its transaction's connection
            store.update_job(moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
            other = PostgresStore(pg_cluster.url(search_path=schema))
            try:
                assert other.get_job("a") == a  # not committed yet: others do not see it
            finally:
                other.close()
        assert store.get_job("a").status == S.ASSIGNED  # type: ignore[union-attr]
    finally:
        store.close()
        pg_cluster.drop_schemas([schema])
