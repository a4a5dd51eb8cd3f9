"""Several coordinators on one PostgreSQL store (store/postgres_lead.py): the lease on the server's
clock, the fence on every write of the leader, a paused leader's locks, the followers' orders.

Every test uses the session's throwaway cluster (`pg_cluster`): without PostgreSQL they fail."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from comfyfleet.coordinator import jobs as moves
from comfyfleet.coordinator.errors import NotLeader
from comfyfleet.coordinator.lease import Leader
from comfyfleet.coordinator.model import AgentRecord, JobRecord, WebhookMessage
from comfyfleet.coordinator.store.postgres import PostgresOptions, PostgresStore
from comfyfleet.coordinator.store.postgres_lead import FENCE
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import JobStatus
from tests.helpers.postgres import Cluster

TTL = 0.6


@pytest.fixture
def url(pg_cluster: Cluster) -> Iterator[str]:
    schema = pg_cluster.new_schema()
    yield pg_cluster.url(search_path=schema)
    pg_cluster.drop_schemas([schema])


@pytest.fixture
def open_pg(url: str) -> Iterator[Callable[..., PostgresStore]]:
    made: list[PostgresStore] = []

    def make(**options: Any) -> PostgresStore:
        made.append(PostgresStore(url, PostgresOptions(**options)))
        return made[-1]

    yield make
    for store in made:
        store.close()


def new_job(key: str | None = None) -> JobRecord:
    now = time.time()
    spec = JobSpec(workflow={"1": {"class_type": "SaveImage", "inputs": {}}})
    job = JobRecord(
        id=moves.new_job_id(now), spec=spec, workflow_hash="h", created_at=now, idempotency_key=key
    )
    return moves.created(job, now)


def wait_out(ttl: float = TTL) -> None:
    time.sleep(ttl + 0.05)


def test_the_lease_follows_the_rules_on_the_servers_clock(open_pg: Callable[..., Any]) -> None:
    store = open_pg()
    assert store.leader() is None
    assert store.try_lead("a", "http://a", TTL) == 1
    assert store.try_lead("b", "http://b", TTL) is None  # running: nobody else takes it
    assert store.leader() == Leader(1, "a", "http://a")
    assert not store.renew(1, "b", TTL)  # only the holder renews
    time.sleep(TTL / 2)
    assert store.renew(1, "a", TTL)
    time.sleep(TTL / 2 + 0.05)
    assert store.leader() == Leader(1, "a", "http://a")  # the renewal kept it
    wait_out()
    assert store.leader() is None
    assert not store.renew(1, "a", TTL)  # ran out: gone, even with nobody else around
    assert store.try_lead("b", "http://b", TTL) == 2
    store.release(2, "b")
    assert store.try_lead("a", "http://a", TTL) == 3  # released: taken at once
    assert [(t.epoch, t.holder) for t in store.terms()] == [(1, "a"), (2, "b"), (3, "a")]
    began = [t.began_at for t in store.terms()]
    assert began == sorted(began) and abs(began[-1] - time.time()) < 30


def test_an_ended_epoch_writes_nothing(open_pg: Callable[..., Any]) -> None:
    store = open_pg()
    job = new_job()
    store.insert_job(job)
    first = store.as_leader(store.try_lead("a", "http://a", TTL))
    placed = moves.assigned(job, time.time(), "ag", "0", 0)
    assert first.update_jobs([(placed, JobStatus.QUEUED, 0)]) == [True]
    wait_out()
    second = store.as_leader(store.try_lead("b", "http://b", 30))
    requeued = moves.released(placed, time.time(), "x", spend_retry=False)
    for write in (
        lambda: first.update_jobs([(requeued, JobStatus.ASSIGNED, 1)]),
        lambda: first.update_job(requeued, JobStatus.ASSIGNED, 1),
        lambda: first.save_agent(AgentRecord("ag", 1.0, {})),
        lambda: first.insert_job(new_job()),
        lambda: first.done_orders([1]),
    ):
        with pytest.raises(NotLeader):
            write()
    assert store.get_job(job.id).status == JobStatus.ASSIGNED  # type: ignore[union-attr]
    assert store.load_agents() == []
    assert len(store.list_jobs()[0]) == 1
    assert second.update_jobs([(requeued, JobStatus.ASSIGNED, 1)]) == [True]
    assert store.get_job(job.id).status == JobStatus.QUEUED  # type: ignore[union-attr]


def test_an_ended_epoch_writes_neither_a_change_nor_its_webhook_messages(
    open_pg: Callable[..., Any],
) -> None:
    """A batch with outbox messages is one transaction: the fence refuses all of it."""
    store = open_pg()
    jobs = [new_job(), new_job()]
    for job in jobs:
        store.insert_job(job)
    leader = store.as_leader(store.try_lead("a", "http://a", TTL))
    now = time.time()

    def message(job: JobRecord, n: int) -> WebhookMessage:
        return WebhookMessage(
            f"msg_{job.id}_{n}", job.id, "default", "https://h/x", "e", "{}", now, now
        )

    placed = [moves.assigned(job, now, "ag", "0", 0) for job in jobs]
    items = [(p, JobStatus.QUEUED, 0) for p in placed]
    assert leader.update_jobs(items, [[message(j, 1)] for j in jobs]) == [True, True]
    wait_out()
    store.try_lead("b", "http://b", 30)
    requeued = [moves.released(p, time.time(), "x", spend_retry=False) for p in placed]
    with pytest.raises(NotLeader):
        leader.update_jobs(
            [(r, JobStatus.ASSIGNED, 1) for r in requeued], [[message(j, 2)] for j in jobs]
        )
    for job in jobs:
        assert store.get_job(job.id).status == JobStatus.ASSIGNED  # type: ignore[union-attr]
        assert [m.id for m in store.messages_of_job(job.id)] == [f"msg_{job.id}_1"]


def test_a_follower_refuses_the_leaders_writes_and_orders_the_leader(
    open_pg: Callable[..., Any],
) -> None:
    store = open_pg()
    follower = store.as_follower()
    job = new_job("k1")
    stored, created = follower.insert_job(job)
    assert created and stored.id == job.id
    again, created = follower.insert_job(new_job("k1"))  # idempotent: no second order
    assert not created and again.id == job.id
    follower.put_order("cancel", 2.0, job_id=job.id)
    follower.put_order("drain", 3.0, agent_id="ag")
    orders = store.orders()
    assert [(o.kind, o.job_id, o.agent_id) for o in orders] == [
        ("submit", job.id, None),
        ("cancel", job.id, None),
        ("drain", None, "ag"),
    ]
    with pytest.raises(NotLeader):
        follower.update_jobs([(moves.assigned(job, 1.0, "ag", "0", 0), JobStatus.QUEUED, 0)])
    with pytest.raises(NotLeader):
        follower.save_agent(AgentRecord("ag", 1.0, {}))
    with pytest.raises(NotLeader):
        follower.done_orders([orders[0].seq])
    leader = store.as_leader(store.try_lead("a", "http://a", 30))
    leader.done_orders([o.seq for o in orders[:2]])
    assert [o.kind for o in store.orders()] == ["drain"]
    leader.insert_job(new_job())  # the leader indexes its own jobs: no order
    assert [o.kind for o in store.orders()] == ["drain"]


def test_a_paused_leader_cannot_keep_the_lease_row_locked(open_pg: Callable[..., Any]) -> None:
    """SIGSTOP in the middle of a fenced transaction: the server ends the idle session, the new
    leader takes over, and the paused transaction never commits."""
    store = open_pg(idle_in_transaction_ms=400)
    job = new_job()
    store.insert_job(job)
    epoch = store.try_lead("a", "http://a", TTL)
    assert store._pool is not None
    with store._pool.connection() as conn:
        conn.execute("BEGIN")
        conn.execute(FENCE, (epoch,))  # holds the lease row: a taker must wait for this
        time.sleep(TTL + 0.1)  # "paused" past the lease's end, inside the transaction
        other = open_pg()
        took = other.try_lead("b", "http://b", 30)
        deadline = time.monotonic() + 5
        while took is None and time.monotonic() < deadline:  # waits for the session's end
            time.sleep(0.1)
            took = other.try_lead("b", "http://b", 30)
        assert took == epoch + 1
        placed = moves.assigned(job, time.time(), "ag", "0", 0)
        gone = (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout)
        with pytest.raises(gone):  # "resumed": the session is gone
            conn.execute("UPDATE jobs SET status = %s WHERE id = %s", (placed.status.value, job.id))
            conn.execute("COMMIT")
    assert store.get_job(job.id).status == JobStatus.QUEUED  # type: ignore[union-attr]


def test_orders_wake_a_listener(open_pg: Callable[..., Any]) -> None:
    store = open_pg()

    async def scenario() -> bool:
        woken = asyncio.Event()
        listening = asyncio.ensure_future(store.listen(woken))
        await asyncio.sleep(0.5)  # LISTEN is in place
        woken.clear()
        await asyncio.to_thread(store.as_follower().put_order, "drain", 1.0, None, "ag")
        try:
            await asyncio.wait_for(woken.wait(), 5)
        finally:
            listening.cancel()
        return woken.is_set()

    assert asyncio.run(scenario())


def test_renewing_from_another_thread_while_the_loop_writes(open_pg: Callable[..., Any]) -> None:
    """The leader renews from its keeper thread while its event loop writes through the pool."""
    store = open_pg()
    epoch = store.try_lead("a", "http://a", 1.0)
    leader = store.as_leader(epoch)
    stop = threading.Event()
    renewals: list[bool] = []

    def keep() -> None:
        while not stop.wait(0.1):
            renewals.append(store.renew(epoch, "a", 1.0))

    thread = threading.Thread(target=keep)
    thread.start()
    try:
        for _ in range(30):
            leader.insert_job(new_job())
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert renewals and all(renewals)
    assert len(store.list_jobs(limit=100)[0]) == 30
