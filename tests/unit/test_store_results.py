"""The Store contract for results that leave the coordinator (issue 17): the webhook outbox,
tenant settings and retention's deletions, run against every backend like the rest."""

from __future__ import annotations

import dataclasses

from comfyfleet.coordinator.model import DeliveryTry, Doomed, JobRecord, WebhookMessage
from comfyfleet.coordinator.store import Store
from comfyfleet.shared.status import JobStatus
from tests.unit import test_store_contract as contract
from tests.unit.test_store_contract import job, moved

S = JobStatus
make_store = contract.make_store  # the contract's fixtures: every backend
store = contract.store


def message(msg_id: str, job_id: str = "j1", next_at: float = 10.0, **kw: object) -> WebhookMessage:
    base = WebhookMessage(
        id=msg_id,
        job_id=job_id,
        tenant="acme",
        url="https://example.com/hook",
        event="job.completed",
        payload='{"type":"job.completed"}',
        created_at=5.0,
        next_at=next_at,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def finished(
    store: Store, job_id: str, at: float, status: JobStatus = S.COMPLETED, **kw: object
) -> JobRecord:
    record, _ = store.insert_job(job(job_id, status=S.RUNNING, attempt=1, updated_at=1.0, **kw))
    done = dataclasses.replace(record, status=status, updated_at=at)
    assert store.update_job(done, S.RUNNING, 1)
    return done


def test_messages_are_written_only_with_a_change_that_went_through(store: Store) -> None:
    a, _ = store.insert_job(job("a", status=S.RUNNING, attempt=1))
    b, _ = store.insert_job(job("b", status=S.RUNNING, attempt=1))
    ok = store.update_jobs(
        [
            (moved(a, S.COMPLETED, 1, 2.0), S.RUNNING, 1),
            (moved(b, S.COMPLETED, 1, 2.0), S.QUEUED, 0),
        ],
        [[message("m-a", "a")], [message("m-b", "b")]],
    )
    assert ok == [True, False]
    assert [m.id for m in store.messages_of_job("a")] == ["m-a"]
    assert store.messages_of_job("b") == []


def test_due_messages_soonest_first_excluding_in_flight(store: Store) -> None:
    a, _ = store.insert_job(job("a", status=S.RUNNING, attempt=1))
    msgs = [message("m3", "a", 30.0), message("m1", "a", 10.0), message("m2", "a", 20.0)]
    store.update_jobs([(moved(a, S.COMPLETED, 1, 2.0), S.RUNNING, 1)], [msgs])
    assert [m.id for m in store.due_messages(25.0, 10)] == ["m1", "m2"]
    assert [m.id for m in store.due_messages(25.0, 10, exclude={"m1"})] == ["m2"]
    assert [m.id for m in store.due_messages(99.0, 1)] == ["m1"]
    assert store.next_message_at() == 10.0
    assert store.due_messages(99.0, 10)[0] == message("m1", "a", 10.0)  # exact round trip


def test_save_message_records_tries_and_state(store: Store) -> None:
    a, _ = store.insert_job(job("a", status=S.RUNNING, attempt=1))
    store.update_jobs([(moved(a, S.COMPLETED, 1, 2.0), S.RUNNING, 1)], [[message("m1", "a")]])
    tried = dataclasses.replace(
        message("m1", "a"),
        attempts=1,
        next_at=40.0,
        tries=(DeliveryTry(11.0, 500, "HTTP 500", 3.5),),
    )
    store.save_message(tried)
    assert store.messages_of_job("a") == [tried]
    assert store.next_message_at() == 40.0
    done = dataclasses.replace(tried, state="delivered", attempts=2)
    store.save_message(done)
    assert store.due_messages(1e9, 10) == []
    assert store.next_message_at() is None
    assert store.messages_of_job("a") == [done]
    store.save_message(message("gone"))  # a message that no longer exists: nothing happens
    assert store.messages_of_job("j1") == []


def test_tenant_settings_save_and_replace(store: Store) -> None:
    assert store.load_tenants() == {}
    store.save_tenant("b", '{"retention_s": 5}')
    store.save_tenant("a", "{}")
    store.save_tenant("b", '{"retention_s": 9}')
    assert store.load_tenants() == {"a": "{}", "b": '{"retention_s": 9}'}


def test_finished_jobs_oldest_first_by_tenant_and_never_open_ones(store: Store) -> None:
    finished(store, "old", 10.0, tenant="acme")
    finished(store, "failed", 20.0, S.FAILED, tenant="other")
    finished(store, "new", 30.0, S.CANCELLED, tenant="acme")
    store.insert_job(job("running", status=S.RUNNING, attempt=1, updated_at=1.0))
    store.insert_job(job("queued", status=S.QUEUED, updated_at=1.0))
    assert [j.id for j in store.finished_jobs(25.0, 10)] == ["old", "failed"]
    assert [j.id for j in store.finished_jobs(1e9, 2)] == ["old", "failed"]
    assert [j.id for j in store.finished_jobs(1e9, 10, tenant="acme")] == ["old", "new"]
    assert [j.id for j in store.finished_jobs(1e9, 10, other_than={"acme"})] == ["failed"]


def test_a_job_with_a_pending_webhook_is_kept(store: Store) -> None:
    a, _ = store.insert_job(job("a", status=S.RUNNING, attempt=1))
    store.update_jobs([(moved(a, S.COMPLETED, 1, 2.0), S.RUNNING, 1)], [[message("m1", "a")]])
    assert store.finished_jobs(1e9, 10) == []
    store.save_message(dataclasses.replace(message("m1", "a"), state="failed"))
    assert [j.id for j in store.finished_jobs(1e9, 10)] == ["a"]


def test_delete_jobs_leaves_a_doomed_entry_and_spares_open_jobs(store: Store) -> None:
    outputs = [{"name": "a.png", "size": 100, "sha256": "0" * 64}, {"name": "b.mp4", "size": 23}]
    done = finished(store, "done", 10.0, outputs=outputs, idempotency_key="k")
    running, _ = store.insert_job(job("running", status=S.RUNNING, attempt=1))
    store.update_jobs(
        [(done, S.COMPLETED, 1)], [[dataclasses.replace(message("m1", "done"), state="delivered")]]
    )
    doomed = store.delete_jobs([done, running])
    assert doomed == [Doomed("done", "default", 123)]
    assert store.get_job("done") is None
    assert store.get_job("running") is not None
    assert store.messages_of_job("done") == []
    assert store.doomed(10) == doomed
    assert store.delete_jobs([done]) == []  # already gone
    again, created = store.insert_job(job("again", idempotency_key="k"))
    assert created, "the deleted job's idempotency key is free again"
    store.forget_doomed(["done"])
    assert store.doomed(10) == []
