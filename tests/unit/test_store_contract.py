"""The one Store contract (DESIGN.md §8), run against every backend; then SQLite's own promises."""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyfleet.coordinator.errors import Conflict, StoreUnavailable
from comfyfleet.coordinator.model import AgentRecord, JobRecord
from comfyfleet.coordinator.store import (
    DB_FILE,
    MemoryStore,
    SchemaTooNew,
    SqliteStore,
    Store,
    open_store,
)
from comfyfleet.coordinator.store.codec import STATE_FIELDS, decode_job, encode_job
from comfyfleet.coordinator.store.migrations import LATEST
from comfyfleet.coordinator.store.postgres import PostgresStore
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.history import Transition
from comfyfleet.shared.jobspec import (
    MAX_RAM_MB,
    MAX_TIMEOUT_S,
    MAX_VRAM_MB,
    Constraints,
    JobSpec,
    Resources,
)
from comfyfleet.shared.status import TERMINAL, JobStatus
from tests.helpers.postgres import Cluster

S = JobStatus
Factory = Callable[[], Store]
FIXTURE_SETTINGS = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """A factory of fresh, empty stores of one backend (hypothesis needs one per example).

    PostgreSQL stores each get a new schema in the session's throwaway cluster (`pg_cluster`,
    tests/conftest.py): a test fails, never skips, when PostgreSQL cannot be had."""
    made: list[Store] = []
    schemas: list[str] = []
    numbers = itertools.count()
    cluster: Cluster | None = (
        request.getfixturevalue("pg_cluster") if request.param == "postgres" else None
    )

    def make() -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore()
        elif cluster is None:
            store = SqliteStore(tmp_path / f"store-{next(numbers)}.db")
        else:
            schemas.append(cluster.new_schema())
            store = PostgresStore(cluster.url(search_path=schemas[-1]))
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
    if cluster is not None and schemas:
        cluster.drop_schemas(schemas)


@pytest.fixture
def store(make_store: Factory) -> Store:
    return make_store()


def spec(**kw: Any) -> JobSpec:
    return JobSpec(workflow={"1": {"class_type": "KSampler", "inputs": {"seed": 5}}}, **kw)


def job(job_id: str = "j1", **kw: Any) -> JobRecord:
    kw.setdefault("spec", spec())
    kw.setdefault("created_at", 1000.0)
    kw.setdefault("workflow_hash", "wf")
    return JobRecord(id=job_id, **kw)


def rich_job(job_id: str = "rich") -> JobRecord:
    """A record with every field away from its default."""
    return JobRecord(
        id=job_id,
        spec=JobSpec(
            workflow={"3": {"class_type": "KSampler", "inputs": {"seed": -1, "cfg": 7.5}}},
            resources=Resources(gpus=1, vram_mb=12_000, ram_mb=2048, cpu=1.5),
            constraints=Constraints(labels={"zone": "a"}, gpu_name="RTX", models=["m.ckpt"]),
            priority=-7,
            timeout_s=0.1 + 0.2,
            max_retries=3,
            metadata={"who": "me", "n": [1, 2.5, None, True]},
        ),
        workflow_hash="abc123",
        created_at=1712345678.123456,
        idempotency_key="key-é",
        tenant="acme",
        status=S.RUNNING,
        attempt=2,
        updated_at=1712345679.5,
        timestamps={"QUEUED": 1712345678.2, "RUNNING": 1712345679.5},
        agent_id="agent-1",
        instance_id="inst-0",
        gpu_index=0,
        prompt_id="p-1",
        seeds={"3": 2**64 - 1, "7": 0},
        vram_mb=12_000,
        retries_used=1,
        desired="cancel",
        pending_reason="no agent has a GPU with 40000 MB",
        error={"code": "oom", "message": "CUDA out of memory", "node_id": "3", "extra": [1.0]},
        outputs=[{"name": "a.png", "size": 123, "sha256": "00ff", "meta": {"w": 512}}],
        failed_agents=["agent-0"],
        timings={"queued_s": 0.25, "run_s": 1e-9},
        history=[
            Transition(1712345678.2, "SUBMITTED", "QUEUED", "enqueue", "stored", 0),
            Transition(1712345679.0, "QUEUED", "ASSIGNED", "assign", "best fit", 1, "agent-0"),
        ],
    )


# ---- strategies ---------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)
specs = st.builds(
    JobSpec,
    workflow=json_objects,
    resources=st.builds(
        Resources,
        gpus=st.integers(0, 1),
        vram_mb=st.none() | st.integers(0, MAX_VRAM_MB),
        ram_mb=st.integers(0, MAX_RAM_MB),
        cpu=st.floats(0, 4096),
    ),
    constraints=st.builds(
        Constraints,
        labels=st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=256), max_size=3),
        gpu_name=st.none() | st.text(min_size=1, max_size=128),
        models=st.lists(st.text(min_size=1, max_size=64), max_size=3),
    ),
    priority=st.integers(-1000, 1000),
    timeout_s=st.floats(min_value=0, max_value=MAX_TIMEOUT_S, exclude_min=True),
    max_retries=st.integers(0, 20),
    metadata=st.dictionaries(st.text(max_size=128), json_values, max_size=3),
)
status_names = st.sampled_from([s.value for s in JobStatus])
transitions = st.builds(
    Transition,
    at=finite,
    from_status=st.none() | status_names,
    to_status=status_names,
    event=texts,
    reason=texts,
    attempt=st.integers(0, 100),
    agent_id=st.none() | texts,
)
# Ids, tenants and idempotency keys never hold NUL: every store refuses it (see below); nor a
# lone surrogate, which no JSON or msgpack body decodes to.
key_text = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
records = st.builds(
    JobRecord,
    id=st.text(key_text, min_size=1, max_size=40),
    spec=specs,
    workflow_hash=texts,
    created_at=finite,
    idempotency_key=st.none() | st.text(key_text, min_size=1, max_size=40),
    tenant=st.text(key_text, min_size=1, max_size=20),
    status=st.sampled_from(JobStatus),
    attempt=st.integers(0, 2**31),
    updated_at=finite,
    timestamps=st.dictionaries(status_names, finite, max_size=3),
    agent_id=st.none() | texts,
    instance_id=st.none() | texts,
    gpu_index=st.none() | st.integers(0, 16),
    prompt_id=st.none() | texts,
    seeds=st.dictionaries(texts, st.integers(0, 2**64 - 1), max_size=3),
    vram_mb=st.integers(0, MAX_VRAM_MB),
    retries_used=st.integers(0, 20),
    desired=st.sampled_from(["run", "cancel"]),
    pending_reason=st.none() | texts,
    error=st.none() | json_objects,
    outputs=st.lists(json_objects, max_size=3),
    failed_agents=st.lists(texts, max_size=3),
    timings=st.dictionaries(texts, finite, max_size=3),
    history=st.lists(transitions, max_size=4),
)


# ---- round trip ---------------------------------------------------------------------------------


def test_codec_state_holds_every_other_field() -> None:
    names = {f.name for f in dataclasses.fields(JobRecord)}
    columns = {
        "id",
        "spec",
        "created_at",
        "idempotency_key",
        "tenant",
        "status",
        "attempt",
        "updated_at",
    }
    derived = {"facts"}  # recomputed from the spec's workflow, never stored
    assert set(STATE_FIELDS) == names - columns - derived
    assert decode_job(encode_job(rich_job())) == rich_job()
    with_facts = dataclasses.replace(rich_job(), facts=rich_job().workflow_facts)
    back = decode_job(encode_job(with_facts))
    assert back.facts is None and back.workflow_facts == with_facts.facts


def test_schema_version_is_latest(store: Store) -> None:
    assert store.schema_version() == LATEST


def test_insert_get_round_trip_is_exact(store: Store) -> None:
    original = rich_job()
    stored, created = store.insert_job(original)
    assert created and stored == original
    assert store.get_job(original.id) == original
    assert store.get_job("missing") is None


def test_get_specs_reads_the_specs_of_the_jobs_that_exist(store: Store) -> None:
    rich = rich_job()
    store.insert_job(rich)
    store.insert_job(job("plain"))
    assert store.get_specs([]) == {}
    found = store.get_specs(["missing", "rich", "plain", "rich", "x\x00y"])
    assert found == {"rich": rich.spec, "plain": spec()}
    found["rich"].workflow.clear()  # a copy: the stored spec is untouched
    assert store.get_specs(["rich"]) == {"rich": rich_job().spec}


def test_get_specs_reads_more_ids_than_one_statement_binds(store: Store) -> None:
    ids = [f"j{i:04d}" for i in range(1200)]
    for i in ids[::100]:
        store.insert_job(job(i, spec=spec(metadata={"n": i})))
    found = store.get_specs(ids)
    assert {i: s.metadata for i, s in found.items()} == {i: {"n": i} for i in ids[::100]}


@FIXTURE_SETTINGS
@given(record=records)
def test_round_trip_of_any_record(make_store: Factory, record: JobRecord) -> None:
    store = make_store()
    try:
        assert store.insert_job(record) == (record, True)
        assert store.get_job(record.id) == record
    finally:
        store.close()


def test_store_shares_no_mutable_object_with_callers(store: Store) -> None:
    original = rich_job()
    inserted, _ = store.insert_job(original)
    for rec in (original, inserted):
        rec.history.append(Transition(1.0, None, "QUEUED", "x", "x", 9))
        rec.outputs[0]["name"] = "evil.png"
        rec.timestamps.clear()
        rec.spec.workflow["3"]["inputs"]["seed"] = 42
    fetched = store.get_job(original.id)
    assert fetched == rich_job()
    assert fetched is not None
    fetched.seeds["3"] = 1
    fetched.spec.workflow.clear()
    assert store.get_job(original.id) == rich_job()


# ---- idempotency --------------------------------------------------------------------------------


def test_same_idempotency_key_gives_one_job_the_first(store: Store) -> None:
    first, created = store.insert_job(job("a", idempotency_key="k", created_at=1.0))
    assert created
    again, created = store.insert_job(job("b", idempotency_key="k", created_at=2.0))
    assert not created
    assert again == first
    assert store.get_job("b") is None
    assert sum(store.count_by_status().values()) == 1


def test_idempotency_keys_are_per_tenant(store: Store) -> None:
    assert store.insert_job(job("a", idempotency_key="k", tenant="t1"))[1]
    assert store.insert_job(job("b", idempotency_key="k", tenant="t2"))[1]
    found, created = store.insert_job(job("c", idempotency_key="k", tenant="t2"))
    assert not created and found.id == "b"


def test_jobs_without_key_are_never_deduplicated(store: Store) -> None:
    assert store.insert_job(job("a"))[1]
    assert store.insert_job(job("b"))[1]
    assert sum(store.count_by_status().values()) == 2


def test_duplicate_id_is_a_conflict_and_stores_nothing(store: Store) -> None:
    store.insert_job(job("a", created_at=1.0))
    with pytest.raises(Conflict):
        store.insert_job(job("a", created_at=2.0, idempotency_key="new"))
    assert store.get_job("a") == job("a", created_at=1.0)
    # the key of the refused insert was not taken
    assert store.insert_job(job("b", idempotency_key="new"))[1]


@pytest.mark.parametrize("field", ["id", "tenant", "idempotency_key"])
def test_nul_in_a_key_is_invalid_input_and_stores_nothing(store: Store, field: str) -> None:
    bad = dataclasses.replace(job("a", idempotency_key="k"), **{field: "x\x00y"})
    with pytest.raises(InvalidInput) as info:
        store.insert_job(bad)
    assert info.value.field == field
    assert sum(store.count_by_status().values()) == 0
    assert store.get_job("x\x00y") is None and store.get_job("a") is None
    assert store.list_jobs(tenant="x\x00y") == ([], None)
    with pytest.raises(InvalidInput) as info:
        store.save_agent(AgentRecord("a\x00", 1.0, {}))
    assert info.value.field == "agent_id" and store.load_agents() == []


# ---- guarded updates ----------------------------------------------------------------------------


def moved(record: JobRecord, status: JobStatus, attempt: int, at: float) -> JobRecord:
    new = dataclasses.replace(record, status=status, attempt=attempt, updated_at=at)
    new.history = [*record.history, Transition(at, record.status, status, "e", "r", attempt)]
    return new


def test_guarded_update_needs_matching_status_and_attempt(store: Store) -> None:
    queued = job("a", status=S.QUEUED)
    store.insert_job(queued)
    assigned = moved(queued, S.ASSIGNED, 1, 5.0)
    assigned.agent_id = "agent-1"
    assert not store.update_job(assigned, S.RUNNING, 0)  # wrong status
    assert not store.update_job(assigned, S.QUEUED, 1)  # wrong attempt
    assert store.get_job("a") == queued  # a failed guard writes nothing
    assert store.update_job(assigned, S.QUEUED, 0)
    assert store.get_job("a") == assigned
    assert not store.update_job(moved(assigned, S.RUNNING, 1, 6.0), S.QUEUED, 0)  # stale now
    assert store.get_job("a") == assigned


@pytest.mark.parametrize("stale_attempt", [0, 1, 3])
def test_attempt_is_the_fencing_token(store: Store, stale_attempt: int) -> None:
    current = job("a", status=S.RUNNING, attempt=2, agent_id="new-agent")
    store.insert_job(current)
    stale = moved(current, S.COMPLETED, stale_attempt, 9.0)
    assert not store.update_job(stale, S.RUNNING, stale_attempt)
    assert store.update_jobs([(stale, S.RUNNING, stale_attempt)]) == [False]
    assert store.get_job("a") == current


def test_update_of_missing_job_is_false(store: Store) -> None:
    assert not store.update_job(job("ghost"), S.SUBMITTED, 0)
    assert store.get_job("ghost") is None


def test_update_never_changes_identity_fields(store: Store) -> None:
    original = job("a", tenant="t1", idempotency_key="k", created_at=10.0)
    store.insert_job(original)
    changed = dataclasses.replace(
        original,
        spec=spec(priority=9),
        created_at=99.0,
        idempotency_key="other",
        tenant="t2",
        status=S.QUEUED,
        updated_at=11.0,
    )
    assert store.update_job(changed, S.SUBMITTED, 0)
    got = store.get_job("a")
    assert got == dataclasses.replace(original, status=S.QUEUED, updated_at=11.0)


def test_update_jobs_batch_with_mixed_guards(store: Store) -> None:
    for name in "abc":
        store.insert_job(job(name, status=S.QUEUED))
    a, b, c = (store.get_job(n) for n in "abc")
    assert a is not None and b is not None and c is not None
    results = store.update_jobs(
        [
            (moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0),
            (moved(b, S.ASSIGNED, 1, 2.0), S.RUNNING, 0),  # wrong status
            (moved(c, S.ASSIGNED, 1, 2.0), S.QUEUED, 3),  # wrong attempt
            (job("ghost"), S.QUEUED, 0),  # missing
        ]
    )
    assert results == [True, False, False, False]
    assert store.get_job("a") == moved(a, S.ASSIGNED, 1, 2.0)
    assert store.get_job("b") == b and store.get_job("c") == c
    assert store.update_jobs([]) == []


def test_update_jobs_applies_items_in_order(store: Store) -> None:
    a = job("a", status=S.QUEUED)
    store.insert_job(a)
    assigned = moved(a, S.ASSIGNED, 1, 2.0)
    running = moved(assigned, S.RUNNING, 1, 3.0)
    results = store.update_jobs(
        [
            (assigned, S.QUEUED, 0),
            (running, S.ASSIGNED, 1),  # sees the first item's write
            (moved(a, S.CANCELLED, 0, 4.0), S.QUEUED, 0),  # stale after the first
        ]
    )
    assert results == [True, True, False]
    assert store.get_job("a") == running


# ---- listing ------------------------------------------------------------------------------------


def ids(records: list[JobRecord]) -> list[str]:
    return [r.id for r in records]


def test_list_is_newest_first_with_ties_by_id(store: Store) -> None:
    for name, at in [("a", 1.0), ("b", 3.0), ("c", 2.0), ("d", 3.0), ("e", 2.0)]:
        store.insert_job(job(name, created_at=at))
    page, cursor = store.list_jobs(limit=10)
    assert ids(page) == ["d", "b", "e", "c", "a"]
    assert cursor is None


def test_list_filters_by_status_and_tenant(store: Store) -> None:
    store.insert_job(job("a", created_at=1.0, status=S.QUEUED, tenant="t1"))
    store.insert_job(job("b", created_at=2.0, status=S.RUNNING, tenant="t1"))
    store.insert_job(job("c", created_at=3.0, status=S.QUEUED, tenant="t2"))
    store.insert_job(job("d", created_at=4.0, status=S.FAILED, tenant="t2"))
    assert ids(store.list_jobs(statuses={S.QUEUED})[0]) == ["c", "a"]
    assert ids(store.list_jobs(statuses=[S.QUEUED, S.FAILED])[0]) == ["d", "c", "a"]
    assert ids(store.list_jobs(tenant="t1")[0]) == ["b", "a"]
    assert ids(store.list_jobs(tenant="t2", statuses={S.QUEUED})[0]) == ["c"]
    assert store.list_jobs(statuses=set()) == ([], None)
    assert store.list_jobs(tenant="nobody") == ([], None)


def test_list_returns_exact_records(store: Store) -> None:
    store.insert_job(rich_job())
    assert store.list_jobs(tenant="acme")[0] == [rich_job()]


def test_list_limit_must_be_positive(store: Store) -> None:
    with pytest.raises(InvalidInput) as info:
        store.list_jobs(limit=0)
    assert info.value.field == "limit"


def test_paging_is_stable_while_new_jobs_arrive(store: Store) -> None:
    for i in range(5):
        store.insert_job(job(f"j{i}", created_at=float(i)))
    page, cursor = store.list_jobs(limit=2)
    seen = ids(page)
    store.insert_job(job("newer", created_at=100.0))
    while cursor is not None:
        page, cursor = store.list_jobs(limit=2, cursor=cursor)
        seen += ids(page)
    assert seen == ["j4", "j3", "j2", "j1", "j0"]


@FIXTURE_SETTINGS
@given(
    jobs=st.lists(
        st.tuples(
            st.text(alphabet="abcdefXYZ019é", min_size=1, max_size=4),
            st.sampled_from([0.0, 1.5, 2.0, 1e9, -3.0]),
            st.sampled_from(JobStatus),
            st.sampled_from(["t1", "t2"]),
        ),
        unique_by=lambda t: t[0],
        max_size=25,
    ),
    page_size=st.integers(1, 7),
    statuses=st.none() | st.sets(st.sampled_from(JobStatus), max_size=3),
    tenant=st.none() | st.sampled_from(["t1", "t2"]),
)
def test_cursor_paging_visits_every_job_once_in_order(
    make_store: Factory,
    jobs: list[tuple[str, float, JobStatus, str]],
    page_size: int,
    statuses: set[JobStatus] | None,
    tenant: str | None,
) -> None:
    store = make_store()
    try:
        for job_id, at, status, owner in jobs:
            store.insert_job(job(job_id, created_at=at, status=status, tenant=owner))
        expected = [
            job_id
            for job_id, at, status, owner in sorted(jobs, key=lambda t: (t[1], t[0]), reverse=True)
            if (statuses is None or status in statuses) and (tenant is None or owner == tenant)
        ]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page, cursor = store.list_jobs(
                statuses=statuses, tenant=tenant, limit=page_size, cursor=cursor
            )
            pages += 1
            assert len(page) <= page_size
            seen += ids(page)
            if cursor is None:
                break
            assert len(page) == page_size
        assert seen == expected
        assert pages == max(1, -(-len(expected) // page_size))
    finally:
        store.close()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!!",
        "abc",
        "é",
        "W10",
        "eyJhIjoxfQ",
        "WzFd",
        "WyJ4IiwieSJd",
        "x" * 5000,
        "WzEsMl0",
        "WzEuMCwgImFcdTAwMDAiXQ",  # [1.0, "a\u0000"]: an id no job can have
    ],
)
def test_malformed_cursor_is_invalid_input(store: Store, cursor: str) -> None:
    store.insert_job(job("a"))
    with pytest.raises(InvalidInput) as info:
        store.list_jobs(cursor=cursor)
    assert info.value.field == "cursor"


# ---- recovery, counts, agents, closing ----------------------------------------------------------


def test_non_terminal_jobs_oldest_first(store: Store) -> None:
    for i, status in enumerate(JobStatus):
        store.insert_job(job(f"j{i}", created_at=100.0 - i, status=status))
    got = list(store.non_terminal_jobs())
    assert all(r.status not in TERMINAL for r in got)
    assert [r.status for r in got] == [S.RUNNING, S.ASSIGNED, S.QUEUED, S.SUBMITTED]
    assert next(iter(store.non_terminal_jobs())) == store.get_job(got[0].id)


@given(statuses=st.lists(st.sampled_from(list(JobStatus)), max_size=12), page=st.integers(1, 5))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_non_terminal_jobs_in_pages_see_each_job_once(
    store: Store, statuses: list[JobStatus], page: int
) -> None:
    """Recovery reads in pages and updates jobs as it goes (SUBMITTED -> QUEUED): every
    non-terminal job comes exactly once, in order, whatever the page size."""
    prefix = f"p{uuid.uuid4().hex[:8]}-"  # the store outlives one example
    for i, status in enumerate(statuses):
        store.insert_job(job(f"{prefix}{i:02d}", created_at=1000.0 + i // 2, status=status))
    seen = []
    for rec in store.non_terminal_jobs(page=page):
        if not rec.id.startswith(prefix):
            continue
        seen.append(rec.id)
        if rec.status == S.SUBMITTED:
            moved = dataclasses.replace(rec, status=S.QUEUED, updated_at=rec.updated_at + 1)
            assert store.update_job(moved, S.SUBMITTED, rec.attempt)
    expected = [f"{prefix}{i:02d}" for i, s in enumerate(statuses) if s not in TERMINAL]
    assert seen == expected


def test_count_by_status_covers_every_status(store: Store) -> None:
    assert store.count_by_status() == dict.fromkeys(JobStatus, 0)
    store.insert_job(job("a", status=S.QUEUED))
    store.insert_job(job("b", status=S.QUEUED))
    store.insert_job(job("c", status=S.FAILED))
    counts = store.count_by_status()
    assert counts[S.QUEUED] == 2 and counts[S.FAILED] == 1
    assert sum(counts.values()) == 3 and set(counts) == set(JobStatus)


def test_agents_save_load_replace(store: Store) -> None:
    assert store.load_agents() == []
    info: dict[str, Any] = {"gpus": [{"index": 0, "vram_mb": 24576}], "labels": {"z": "a"}}
    store.save_agent(AgentRecord("b", 2.0, info))
    store.save_agent(AgentRecord("a", 1.0, {}))
    info["labels"]["z"] = "mutated"  # the store kept its own copy
    assert store.load_agents() == [
        AgentRecord("a", 1.0, {}),
        AgentRecord("b", 2.0, {"gpus": [{"index": 0, "vram_mb": 24576}], "labels": {"z": "a"}}),
    ]
    store.save_agent(AgentRecord("a", 5.0, {"version": "2"}))
    assert store.load_agents()[0] == AgentRecord("a", 5.0, {"version": "2"})
    assert len(store.load_agents()) == 2


def test_closed_store_refuses_calls(store: Store) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreUnavailable):
        store.get_job("a")
    with pytest.raises(StoreUnavailable):
        store.insert_job(job("a"))


# ---- SQLite only --------------------------------------------------------------------------------


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def conn_of(store: SqliteStore) -> sqlite3.Connection:
    conn = store._conn  # the store's own connection: pragmas there are per connection
    assert conn is not None
    return conn


def integrity(path: Path) -> str:
    with raw(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_open_store_creates_dir_and_data_survives_reopen(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "data"
    store = open_store(data_dir)
    assert (data_dir / DB_FILE).is_file()
    store.insert_job(rich_job())
    store.insert_job(job("q", status=S.QUEUED, idempotency_key="k"))
    queued = store.get_job("q")
    assert queued is not None
    assert store.update_job(moved(queued, S.ASSIGNED, 1, 7.0), S.QUEUED, 0)
    store.save_agent(AgentRecord("a", 1.0, {"x": 1}))
    store.close()

    again = open_store(data_dir)
    try:
        assert again.get_job("rich") == rich_job()
        assert again.get_job("q") == moved(queued, S.ASSIGNED, 1, 7.0)
        assert again.insert_job(job("other", idempotency_key="k"))[0].id == "q"
        assert again.load_agents() == [AgentRecord("a", 1.0, {"x": 1})]
        assert again.schema_version() == LATEST
    finally:
        again.close()


def test_schema_and_pragmas_after_open(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        conn = conn_of(store)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {
            "jobs",
            "agents",
            "jobs_idempotency",
            "jobs_status_created",
            "jobs_created_id",
        } <= names
    finally:
        store.close()


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    with raw(path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(SchemaTooNew, match=f"schema version {LATEST + 1}.*upgrade comfyfleet"):
        SqliteStore(path)
    assert isinstance(SchemaTooNew("x"), StoreUnavailable)
    with raw(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST + 1


def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite, just some bytes " * 200)
    with pytest.raises(StoreUnavailable, match="not a database"):
        SqliteStore(path)


def test_read_only_database_refuses_writes_without_damage(tmp_path: Path) -> None:
    # Runs as root here, where chmod does not bite; query_only makes SQLite itself refuse every
    # write with SQLITE_READONLY, the same result code a read-only file or mount gives.
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        store.insert_job(job("a", status=S.QUEUED))
        before = store.get_job("a")
        assert before is not None
        conn_of(store).execute("PRAGMA query_only = ON")
        with pytest.raises(StoreUnavailable, match="read-only"):
            store.insert_job(job("b"))
        with pytest.raises(StoreUnavailable, match="read-only"):
            store.update_job(moved(before, S.ASSIGNED, 1, 2.0), S.QUEUED, 0)
        with pytest.raises(StoreUnavailable, match="read-only"):
            store.save_agent(AgentRecord("x", 1.0, {}))
        assert not conn_of(store).in_transaction
        assert store.get_job("a") == before and store.get_job("b") is None  # reads still work
        conn_of(store).execute("PRAGMA query_only = OFF")
        assert store.insert_job(job("b"))[1]  # and the store recovers
    finally:
        store.close()
    assert integrity(path) == "ok"


def test_disk_full_rolls_back_the_whole_batch(tmp_path: Path) -> None:
    # max_page_count makes SQLite hit SQLITE_FULL, exactly as a full disk does.
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        for name in "ab":
            store.insert_job(job(name, status=S.QUEUED))
        a, b = store.get_job("a"), store.get_job("b")
        assert a is not None and b is not None
        conn = conn_of(store)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        huge = moved(b, S.ASSIGNED, 1, 2.0)
        huge.outputs = [{"blob": "x" * 200_000}]
        with pytest.raises(StoreUnavailable, match="disk full"):
            store.update_jobs([(moved(a, S.ASSIGNED, 1, 2.0), S.QUEUED, 0), (huge, S.QUEUED, 0)])
        with pytest.raises(StoreUnavailable, match="disk full"):
            store.insert_job(dataclasses.replace(huge, id="c", idempotency_key="k"))
        assert not conn.in_transaction
        assert store.get_job("a") == a and store.get_job("b") == b  # nothing of the batch
        assert store.get_job("c") is None
        conn.execute("PRAGMA max_page_count = 1073741823")
        assert store.update_jobs([(huge, S.QUEUED, 0)]) == [True]
        assert store.insert_job(job("c", idempotency_key="k"))[1]
    finally:
        store.close()
    assert integrity(path) == "ok"


def test_integrity_after_many_updates(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    try:
        records = {f"j{i:03}": job(f"j{i:03}", created_at=float(i)) for i in range(200)}
        for record in records.values():
            store.insert_job(record)
        cycle = [S.QUEUED, S.ASSIGNED, S.RUNNING, S.QUEUED]
        for step in range(12):
            batch = []
            for job_id, record in records.items():
                new = moved(record, cycle[step % 4], record.attempt + 1, float(step))
                new.outputs = [{"step": step, "pad": "y" * (step * 37 % 500)}]
                batch.append((new, record.status, record.attempt))
                records[job_id] = new
            if step % 2:
                assert all(store.update_job(*item) for item in batch)
            else:
                assert store.update_jobs(batch) == [True] * len(batch)
        for job_id, record in records.items():
            assert store.get_job(job_id) == record
    finally:
        store.close()
    assert integrity(path) == "ok"
