"""The PostgreSQL Store (DESIGN.md §8): for when one coordinator host is not enough.

psycopg 3 with psycopg-pool, used synchronously: the Store interface is synchronous and called
from the event loop, as the SQLite store is. Connections are autocommit; a write is one statement
or one explicit transaction, so a read costs one round trip. The pool checks a connection before
lending it (a connection the server dropped is replaced, not handed out) and reconnects in the
background; a call that still cannot reach the server raises StoreUnavailable within
`connect_timeout_s`, and the loops of the coordinator retry it.

The schema is versioned (migrations.POSTGRES, applied under an advisory lock, so coordinators
starting together migrate once). Open jobs have their own partial index, so finished jobs, however
many, do not slow recovery or the queue's reads.

Several coordinators share one database (store/postgres_lead.py): the store opened here writes
unfenced (tests, tools); a coordinator writes through `as_leader(epoch)`, whose every write is
fenced by the epoch in its own transaction, or `as_follower()`, which refuses the leader's writes
and turns each stored job into an order for the leader.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from comfyfleet.coordinator.errors import Conflict, NotLeader, StoreUnavailable
from comfyfleet.coordinator.model import (
    AgentRecord,
    Doomed,
    JobRecord,
    WebhookMessage,
    output_bytes,
)
from comfyfleet.coordinator.store import codec
from comfyfleet.coordinator.store import postgres_lead as lead
from comfyfleet.coordinator.store import postgres_sql as q
from comfyfleet.coordinator.store import results_sql as results
from comfyfleet.coordinator.store.base import (
    DEFAULT_PAGE,
    RECOVERY_PAGE,
    GuardedUpdate,
    SchemaTooNew,
)
from comfyfleet.coordinator.store.codec import JobRow
from comfyfleet.coordinator.store.dsn import mask_url
from comfyfleet.coordinator.store.migrations import (
    FENCE_SQLSTATE,
    POSTGRES,
)
from comfyfleet.coordinator.store.results_sql import postgres as pg
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.settings import ConfigError
from comfyfleet.shared.status import JobStatus


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    pool_min: int = 1
    pool_max: int = 4
    connect_timeout_s: float = 5.0  # also the longest a call waits for a pooled connection
    statement_timeout_ms: int = 10_000  # no call blocks the event loop on a lock for longer
    # A session idle inside a transaction for this long is ended by the server, with its locks: a
    # paused leader cannot hold the lease row (every transaction here is sent in one go).
    idle_in_transaction_ms: int = 1_000


# What a failure of the server or the network is called in StoreUnavailable; anything else
# (a bug in a statement) propagates as it is.
_MEDIUM = (
    psycopg.OperationalError,  # connection lost or refused, disk full, timeouts, shutdown
    psycopg.InterfaceError,  # the connection is closed
    pg_errors.ReadOnlySqlTransaction,
    pg_errors.InsufficientPrivilege,
    pg_errors.IdleInTransactionSessionTimeout,  # this process was paused inside a transaction
)


def _problem(exc: BaseException) -> str:
    if isinstance(exc, pg_errors.DiskFull):
        return "disk full"
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return "database is read-only"
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return "permission denied"
    if isinstance(exc, pg_errors.QueryCanceled):
        return "statement timed out"
    if isinstance(exc, pg_errors.IdleInTransactionSessionTimeout):
        return "the server ended a transaction left idle (was this process paused?)"
    if isinstance(exc, PoolTimeout):
        return "no connection to PostgreSQL in time"
    return "PostgreSQL unavailable"


RAW, LEADER, FOLLOWER = "raw", "leader", "follower"  # how a store view writes


class PostgresStore(lead.LeaseAndOrders):
    def __init__(self, url: str, options: PostgresOptions | None = None) -> None:
        self._shown = mask_url(url)
        self._options = options or PostgresOptions()
        self._mode = RAW
        self._epoch = 0
        self._owner = True
        self._batch: psycopg.Connection[Any] | None = None  # inside batch(): its connection
        conninfo = self._conninfo(url)
        self._conninfo_str = conninfo
        with self._translated():
            with self._first_connection(conninfo) as conn:
                self._check_encoding(conn)
                self._migrate(conn)
                row = conn.execute("SELECT current_schema()").fetchone()
                self.channel = lead.channel_of(str(row[0]) if row else "public")
            pool: ConnectionPool = ConnectionPool(
                conninfo,
                min_size=self._options.pool_min,
                max_size=self._options.pool_max,
                kwargs={"autocommit": True},
                configure=self._configure,
                check=ConnectionPool.check_connection,
                timeout=self._options.connect_timeout_s,
                name="comfyfleet-store",
                open=False,
            )
            try:
                pool.open(wait=True, timeout=self._options.connect_timeout_s)
            except BaseException:
                pool.close()
                raise
        self._pool: ConnectionPool | None = pool

    def _conninfo(self, url: str) -> str:
        try:
            given = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError("store", f"{self._shown} is not a usable URL: {exc}") from None
        extra: dict[str, Any] = {}
        if "connect_timeout" not in given:
            extra["connect_timeout"] = max(1, round(self._options.connect_timeout_s))
        if "application_name" not in given:
            extra["application_name"] = "comfyfleet-coordinator"
        return make_conninfo(url, **extra)

    def _first_connection(self, conninfo: str) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.ProgrammingError as exc:  # libpq refused a connection parameter
            problem = mask_url(str(exc).strip().splitlines()[0])
            raise ConfigError("store", f"{self._shown}: {problem}") from None

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"SET statement_timeout = {int(self._options.statement_timeout_ms)}")
        idle = int(self._options.idle_in_transaction_ms)
        conn.execute(f"SET idle_in_transaction_session_timeout = {idle}")

    # ------------------------------------------------------------------ leader and followers

    def _view(self, mode: str, epoch: int = 0) -> PostgresStore:
        view = copy.copy(self)
        view._mode, view._epoch, view._owner = mode, epoch, False
        return view

    def as_leader(self, epoch: int) -> PostgresStore:
        """This store, every write fenced by `epoch` (NotLeader once the epoch has ended)."""
        return self._view(LEADER, epoch)

    def as_follower(self) -> PostgresStore:
        """This store for a coordinator that does not lead: the leader's writes raise NotLeader;
        a stored job leaves an order for the leader."""
        return self._view(FOLLOWER)

    @property
    def epoch(self) -> int | None:
        return self._epoch if self._mode == LEADER else None

    def _leader_only(self, what: str) -> None:
        if self._mode == FOLLOWER:
            raise NotLeader(f"{what}: this coordinator is a follower; only the leader writes it")

    def _fence(self, params: Sequence[object]) -> tuple[object, ...]:
        """The parameters of a fenced statement: `params`, then this view's epoch."""
        return (*params, self._epoch)

    def done_orders(self, seqs: Sequence[int]) -> None:
        """Forget orders the leader has applied (fenced: only the leader)."""
        self._leader_only("done_orders")
        if seqs:
            with self._conn() as conn:
                if self._mode == LEADER:
                    conn.execute(lead.fenced(lead.DONE), self._fence([list(seqs)]))
                else:
                    conn.execute(lead.DONE, (list(seqs),))

    async def listen(self, woken: asyncio.Event) -> None:
        """Set `woken` on every order's NOTIFY until the listening connection fails."""
        try:
            await lead.listen(
                self._conninfo_str, self.channel, woken, self._options.connect_timeout_s
            )
        except _MEDIUM as exc:
            raise StoreUnavailable(f"job store {self._shown}: {_problem(exc)}") from exc

    def _check_encoding(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SHOW server_encoding").fetchone()
        value = row[0] if row else "?"
        encoding = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        if encoding.upper() not in ("UTF8", "UTF-8"):
            raise StoreUnavailable(
                f"job store {self._shown}: the database's encoding is {encoding}; comfyfleet "
                "needs UTF8 (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
            )

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        for target in range(1, len(POSTGRES) + 1):
            with conn.transaction():
                schema = conn.execute("SELECT current_schema()").fetchone()
                if schema is None or schema[0] is None:
                    raise StoreUnavailable(
                        f"job store {self._shown}: no schema to create tables in "
                        "(check search_path in the URL's options)"
                    )
                conn.execute(q.MIGRATE_LOCK, (schema[0],))
                version = q.schema_version(conn)
                if version > len(POSTGRES):
                    raise SchemaTooNew(
                        f"job store {self._shown} has schema version {version}, but this "
                        f"comfyfleet knows versions up to {len(POSTGRES)}: upgrade comfyfleet, "
                        "or use another database"
                    )
                if version >= target:  # done already, by us or by another coordinator
                    continue
                if version == 0:
                    conn.execute("CREATE TABLE comfyfleet_schema (version INTEGER NOT NULL)")
                    conn.execute("INSERT INTO comfyfleet_schema (version) VALUES (0)")
                for statement in POSTGRES[target - 1]:
                    conn.execute(statement)  # type: ignore[arg-type]  # our own constant SQL
                conn.execute("UPDATE comfyfleet_schema SET version = %s", (target,))

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            if exc.sqlstate == FENCE_SQLSTATE:
                raise NotLeader(
                    f"job store {self._shown}: leader epoch {self._epoch} has ended; "
                    "nothing was written"
                ) from exc
            if not isinstance(exc, _MEDIUM):
                raise
            detail = mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            raise StoreUnavailable(
                f"job store {self._shown}: {_problem(exc)} ({type(exc).__name__}: {detail})"
            ) from exc

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        if self._batch is not None:  # every call of a batch goes through its transaction
            with self._translated():
                yield self._batch
            return
        pool = self._pool
        if pool is None:
            raise StoreUnavailable(f"job store {self._shown} is closed")
        with self._translated(), pool.connection() as conn:
            yield conn

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction on one pooled connection; a leader's writes in it stay fenced each
        (the first fenced statement's share lock on the lease row holds to the COMMIT)."""
        if self._batch is not None:  # joins the open batch
            yield
            return
        pool = self._pool
        if pool is None:
            raise StoreUnavailable(f"job store {self._shown} is closed")
        with self._translated(), pool.connection() as conn, conn.transaction():
            self._batch = conn
            try:
                yield
            finally:
                self._batch = None

    def _own_step(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        """Inside a batch, a savepoint: a statement that fails (a duplicate id) must not abort
        the batch's transaction."""
        return conn.transaction() if self._batch is not None else nullcontext()

    def _transaction(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[Any]:
        """A transaction of its own, or inside a batch the batch's (a fault fails all of it;
        no savepoint, two round trips fewer)."""
        return conn.transaction() if self._batch is None else nullcontext()

    def _rows(self, query: Any, params: Sequence[object] = ()) -> list[JobRow]:
        with self._conn() as conn:
            return [JobRow(*r) for r in conn.execute(query, params).fetchall()]

    def schema_version(self) -> int:
        with self._conn() as conn:
            return q.schema_version(conn)

    def insert_job(self, job: JobRecord) -> tuple[JobRecord, bool]:
        row = codec.encode_job(job)
        values = codec.row_values(row)
        try:
            with self._conn() as conn, self._own_step(conn):
                if self._mode == LEADER:  # fenced; the leader indexes its own jobs
                    query, params = q.INSERT_FENCED, self._fence(values)
                elif self._mode == FOLLOWER:  # ordering the leader to pick the job up
                    query, params = q.INSERT_ORDERED, (*values, row.created_at, self.channel)
                else:
                    query, params = q.INSERT, values
                inserted = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        except pg_errors.UniqueViolation:
            raise Conflict(f"job {job.id} already exists", field="id") from None
        if inserted is not None:
            return codec.decode_job(row), True
        with self._conn() as conn:
            found = conn.execute(
                f"{q.SELECT} WHERE tenant = %s AND idempotency_key = %s",
                (row.tenant, row.idempotency_key),
            ).fetchone()
        if found is None:  # the key's job vanished between the two statements: nothing deletes
            raise Conflict(f"idempotency key {row.idempotency_key!r} is in use; try again")
        return codec.decode_job(JobRow(*found)), False

    def update_job(self, job: JobRecord, expect_status: JobStatus, expect_attempt: int) -> bool:
        return self.update_jobs([(job, expect_status, expect_attempt)])[0]

    def update_jobs(
        self,
        items: Sequence[GuardedUpdate],
        outbox: Sequence[Sequence[WebhookMessage]] = (),
    ) -> list[bool]:
        self._leader_only("update_jobs")
        params = [codec.update_values(*item) for item in items]
        if not params:
            return []
        query = q.UPDATE
        if self._mode == LEADER:  # each UPDATE fenced; the first one's lock holds to the commit
            query, params = q.UPDATE_FENCED, [self._fence(p) for p in params]
        if len(params) == 1 and not any(outbox):  # one statement is atomic on its own
            with self._conn() as conn:
                return [conn.execute(query, params[0]).fetchone() is not None]
        oks: list[bool] = []
        with self._conn() as conn, self._transaction(conn):
            with conn.pipeline(), conn.cursor() as cur:
                # the UPDATEs in one pipeline; each UPDATE sees the ones before it
                cur.executemany(query, params, returning=True)
                while True:
                    oks.append(cur.fetchone() is not None)
                    if not cur.nextset():
                        break
            written = [
                codec.encode_message(m)
                for ok, messages in zip(oks, outbox, strict=False)
                if ok
                for m in messages
            ]
            if written:  # in the same transaction as the changes that caused them
                with conn.cursor() as cur:
                    cur.executemany(pg(results.INSERT_MESSAGE), written)
        return oks

    def get_job(self, job_id: str) -> JobRecord | None:
        if "\x00" in job_id:  # no job has such an id (codec.check_key_text)
            return None
        rows = self._rows(f"{q.SELECT} WHERE id = %s", (job_id,))
        return codec.decode_job(rows[0]) if rows else None

    def get_specs(self, job_ids: Sequence[str]) -> dict[str, JobSpec]:
        ids = [i for i in dict.fromkeys(job_ids) if "\x00" not in i]  # as get_job
        if not ids:
            return {}
        with self._conn() as conn:
            rows = conn.execute("SELECT id, spec FROM jobs WHERE id = ANY(%s)", (ids,)).fetchall()
        return {job_id: codec.decode_spec(spec) for job_id, spec in rows}

    def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        tenant: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        query, params = q.list_query(statuses, tenant, limit, cursor)
        if tenant is not None and "\x00" in tenant:  # no job has such a tenant
            return [], None
        return codec.page_of(self._rows(query, params), limit)

    def non_terminal_jobs(self, page: int = RECOVERY_PAGE) -> Iterator[JobRecord]:
        return codec.keyset_pages(
            lambda: self._rows(q.OPEN_FIRST, (page,)),
            lambda last: self._rows(q.OPEN_AFTER, (last.created_at, last.id, page)),
            page,
        )

    def count_by_status(self) -> dict[JobStatus, int]:
        with self._conn() as conn:
            return codec.status_counts(
                conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
            )

    def save_agent(self, agent: AgentRecord) -> None:
        self._leader_only("save_agent")
        info = codec.encode_agent_info(agent)
        params: tuple[object, ...] = (agent.agent_id, float(agent.registered_at), info)
        query = q.SAVE_AGENT
        if self._mode == LEADER:
            query, params = q.SAVE_AGENT_FENCED, self._fence(params)
        with self._conn() as conn:
            conn.execute(query, params)

    def load_agents(self) -> list[AgentRecord]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT agent_id, registered_at, info FROM agents ORDER BY agent_id"
            ).fetchall()
        return [codec.decode_agent(*r) for r in rows]

    def _select(self, query: Any, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._conn() as conn:
            return conn.execute(query, params).fetchall()

    def due_messages(
        self, now: float, limit: int, exclude: Collection[str] = ()
    ) -> list[WebhookMessage]:
        query, params = results.due_messages(now, limit, exclude)
        return [codec.decode_message(r) for r in self._select(pg(query), params)]

    def next_message_at(self) -> float | None:
        rows = self._select(results.NEXT_MESSAGE_AT)
        return rows[0][0] if rows and rows[0][0] is not None else None

    def save_message(self, msg: WebhookMessage) -> None:
        with self._conn() as conn:
            conn.execute(pg(results.SAVE_MESSAGE), results.save_message_values(msg))

    def messages_of_job(self, job_id: str) -> list[WebhookMessage]:
        rows = self._select(pg(results.MESSAGES_OF_JOB), (job_id,))
        return [codec.decode_message(r) for r in rows]

    def load_tenants(self) -> dict[str, str]:
        return dict(self._select(results.LOAD_TENANTS))

    def save_tenant(self, tenant: str, settings: str) -> None:
        with self._conn() as conn:
            conn.execute(pg(results.SAVE_TENANT), (tenant, settings))

    def finished_jobs(
        self,
        before: float,
        limit: int,
        *,
        tenant: str | None = None,
        other_than: Collection[str] = (),
    ) -> list[JobRecord]:
        query, params = results.finished_jobs(q.SELECT, before, limit, tenant, other_than)
        return [codec.decode_job(r) for r in self._rows(pg(query), params)]

    def delete_jobs(self, jobs: Sequence[JobRecord]) -> list[Doomed]:
        doomed: list[Doomed] = []
        with self._conn() as conn, conn.transaction():
            for job in jobs:
                if conn.execute(pg(results.DELETE_FINISHED_JOB), (job.id,)).rowcount != 1:
                    continue
                conn.execute(pg(results.DELETE_MESSAGES_OF_JOB), (job.id,))
                entry = Doomed(job.id, job.tenant, output_bytes(job))
                conn.execute(pg(results.INSERT_DOOMED), results.doomed_values(entry))
                doomed.append(entry)
        return doomed

    def doomed(self, limit: int) -> list[Doomed]:
        return [Doomed(*r) for r in self._select(pg(results.DOOMED), (limit,))]

    def forget_doomed(self, job_ids: Sequence[str]) -> None:
        with self._conn() as conn, conn.transaction():
            for job_id in job_ids:
                conn.execute(pg(results.FORGET_DOOMED), (job_id,))

    def close(self) -> None:
        """Close the pool (a view made by as_leader/as_follower only lets go of it)."""
        pool, self._pool = self._pool, None
        if pool is not None and self._owner:
            pool.close()
