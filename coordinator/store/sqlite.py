"""The SQLite Store (DESIGN.md §8): one file in the data directory, WAL, versioned schema."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from comfyfleet.coordinator.errors import Conflict, StoreUnavailable
from comfyfleet.coordinator.model import (
    AgentRecord,
    Doomed,
    JobRecord,
    WebhookMessage,
    output_bytes,
)
from comfyfleet.coordinator.store import codec
from comfyfleet.coordinator.store import results_sql as sql
from comfyfleet.coordinator.store.base import (
    DEFAULT_PAGE,
    RECOVERY_PAGE,
    GuardedUpdate,
    SchemaTooNew,
)
from comfyfleet.coordinator.store.codec import JobRow
from comfyfleet.coordinator.store.migrations import SQLITE as MIGRATIONS
from comfyfleet.shared.errors import InvalidInput
from comfyfleet.shared.jobspec import JobSpec
from comfyfleet.shared.status import TERMINAL, JobStatus

BUSY_TIMEOUT_S = 5.0
_COLUMNS = (
    "id, tenant, status, attempt, created_at, updated_at, priority, idempotency_key, spec, state"
)
_SELECT = f"SELECT {_COLUMNS} FROM jobs"
_IDS_PER_READ = 500  # ids bound in one IN (...) read, well under SQLite's variable limit
_INSERT = f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE = (
    "UPDATE jobs SET status = ?, attempt = ?, updated_at = ?, state = ? "
    "WHERE id = ? AND status = ? AND attempt = ?"
)
_NON_TERMINAL = tuple(s.value for s in JobStatus if s not in TERMINAL)

# Primary result codes that mean the medium failed, not the caller: sqlite3.h.
_UNAVAILABLE = {
    5: "database is locked",  # SQLITE_BUSY, after busy_timeout
    6: "database table is locked",  # SQLITE_LOCKED
    8: "database is read-only",  # SQLITE_READONLY
    10: "disk I/O error",  # SQLITE_IOERR
    11: "database file is corrupt",  # SQLITE_CORRUPT
    13: "disk full",  # SQLITE_FULL
    14: "cannot open database file",  # SQLITE_CANTOPEN
    26: "file is not a database",  # SQLITE_NOTADB
}


@contextmanager
def _translated(path: str) -> Iterator[None]:
    """Turn SQLite's faults of the medium into StoreUnavailable naming the problem."""
    try:
        yield
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        problem = _UNAVAILABLE.get(code & 0xFF) if isinstance(code, int) else None
        if problem is None:
            raise
        raise StoreUnavailable(f"job store {path}: {problem} ({exc})") from exc


class SqliteStore:
    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        with _translated(self._path):
            conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            try:
                self._configure(conn)
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
        self._conn: sqlite3.Connection | None = conn
        self._batched = False  # inside batch(): writes are savepoints of its transaction
        self._begun = False  # ... and its transaction has begun (at its first write)

    @staticmethod
    def _configure(conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = _user_version(conn)
        if version > len(MIGRATIONS):
            raise SchemaTooNew(
                f"job store {self._path} has schema version {version}, but this comfyfleet knows "
                f"versions up to {len(MIGRATIONS)}: upgrade comfyfleet, or use another data dir"
            )
        for target in range(version + 1, len(MIGRATIONS) + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if _user_version(conn) < target:  # another process may have migrated meanwhile
                    for statement in MIGRATIONS[target - 1]:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"job store {self._path} is closed")
        return self._conn

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for every write inside, begun at the first write (a batch that
        writes nothing, e.g. progress reports only, costs no BEGIN and COMMIT)."""
        if self._batched:  # joins the open batch
            yield
            return
        conn = self._live()
        self._batched, self._begun = True, False
        try:
            with _translated(self._path):
                try:
                    yield
                    if self._begun:
                        self._still_in_batch(conn)
                        conn.execute("COMMIT")
                except BaseException:
                    if self._begun:
                        _rollback(conn)
                    raise
        finally:
            self._batched = self._begun = False

    def _still_in_batch(self, conn: sqlite3.Connection) -> None:
        """SQLite rolls a whole transaction back on some faults (disk full, I/O): the batch
        has then lost its writes and must fail, not go on in autocommit."""
        if not conn.in_transaction:
            raise StoreUnavailable(f"job store {self._path}: the batch's transaction was lost")

    @contextmanager
    def _write(self, refusable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any exception. Inside a
        batch it joins the batch's transaction, in a savepoint when the write may be refused
        (`refusable`: a Conflict the batch goes on after); a fault fails the whole batch."""
        conn = self._live()
        if self._batched:
            if self._begun:
                self._still_in_batch(conn)
            else:  # the batch's first write begins its transaction
                with _translated(self._path):
                    conn.execute("BEGIN IMMEDIATE")
                self._begun = True
            if not refusable:
                with _translated(self._path):
                    yield conn
                return
            with _translated(self._path), _step(conn, "SAVEPOINT w", "RELEASE w", _rollback_to):
                yield conn
            return
        with _translated(self._path), _step(conn, "BEGIN IMMEDIATE", "COMMIT", _rollback):
            yield conn

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[JobRow]:
        conn = self._live()
        with _translated(self._path):
            return [JobRow(*r) for r in conn.execute(sql, params).fetchall()]

    def schema_version(self) -> int:
        with _translated(self._path):
            return _user_version(self._live())

    def insert_job(self, job: JobRecord) -> tuple[JobRecord, bool]:
        row = codec.encode_job(job)
        with self._write() as conn:
            if row.idempotency_key is not None:
                found = conn.execute(
                    f"{_SELECT} WHERE tenant = ? AND idempotency_key = ?",
                    (row.tenant, row.idempotency_key),
                ).fetchone()
                if found is not None:
                    return codec.decode_job(JobRow(*found)), False
            try:
                conn.execute(_INSERT, codec.row_values(row))
            except sqlite3.IntegrityError as exc:
                if "jobs.id" in str(exc):
                    raise Conflict(f"job {job.id} already exists", field="id") from None
                raise Conflict(
                    f"idempotency key {row.idempotency_key!r} was taken meanwhile",
                    field="idempotency_key",
                ) from None
        return codec.decode_job(row), True

    def update_job(self, job: JobRecord, expect_status: JobStatus, expect_attempt: int) -> bool:
        return self.update_jobs([(job, expect_status, expect_attempt)])[0]

    def update_jobs(
        self,
        items: Sequence[GuardedUpdate],
        outbox: Sequence[Sequence[WebhookMessage]] = (),
    ) -> list[bool]:
        params = [codec.update_values(*item) for item in items]
        if not params:
            return []
        with self._write(refusable=False) as conn:  # a guard that fails is a result
            oks = [conn.execute(_UPDATE, p).rowcount == 1 for p in params]
            for ok, messages in zip(oks, outbox, strict=False):
                if ok:
                    conn.executemany(
                        sql.INSERT_MESSAGE, [codec.encode_message(m) for m in messages]
                    )
            return oks

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._rows(f"{_SELECT} WHERE id = ?", (job_id,))
        return codec.decode_job(rows[0]) if rows else None

    def get_specs(self, job_ids: Sequence[str]) -> dict[str, JobSpec]:
        conn = self._live()
        found: dict[str, JobSpec] = {}
        ids = list(dict.fromkeys(job_ids))
        with _translated(self._path):
            for start in range(0, len(ids), _IDS_PER_READ):
                chunk = ids[start : start + _IDS_PER_READ]
                marks = ", ".join("?" * len(chunk))
                query = f"SELECT id, spec FROM jobs WHERE id IN ({marks})"
                for job_id, spec in conn.execute(query, chunk).fetchall():
                    found[job_id] = codec.decode_spec(spec)
        return found

    def list_jobs(
        self,
        *,
        statuses: Collection[JobStatus] | None = None,
        tenant: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        if limit < 1:
            raise InvalidInput("limit", "limit must be at least 1")
        where: list[str] = []
        params: list[object] = []
        if cursor is not None:
            where.append("(created_at, id) < (?, ?)")
            params.extend(codec.decode_cursor(cursor))
        if statuses is not None:
            wanted = sorted({JobStatus(s).value for s in statuses})
            where.append(f"status IN ({', '.join('?' * len(wanted))})" if wanted else "0")
            params.extend(wanted)
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"{_SELECT}{clause} ORDER BY created_at DESC, id DESC LIMIT ?"
        return codec.page_of(self._rows(sql, [*params, limit + 1]), limit)

    def non_terminal_jobs(self, page: int = RECOVERY_PAGE) -> Iterator[JobRecord]:
        marks = ", ".join("?" * len(_NON_TERMINAL))
        first = f"{_SELECT} WHERE status IN ({marks}) ORDER BY created_at, id LIMIT ?"
        after = (
            f"{_SELECT} WHERE status IN ({marks}) AND (created_at, id) > (?, ?) "
            "ORDER BY created_at, id LIMIT ?"
        )
        return codec.keyset_pages(
            lambda: self._rows(first, [*_NON_TERMINAL, page]),
            lambda last: self._rows(after, [*_NON_TERMINAL, last.created_at, last.id, page]),
            page,
        )

    def count_by_status(self) -> dict[JobStatus, int]:
        conn = self._live()
        with _translated(self._path):
            return codec.status_counts(
                conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
            )

    def save_agent(self, agent: AgentRecord) -> None:
        info = codec.encode_agent_info(agent)
        with self._write() as conn:
            conn.execute(
                "INSERT INTO agents (agent_id, registered_at, info) VALUES (?, ?, ?) "
                "ON CONFLICT (agent_id) DO UPDATE SET "
                "registered_at = excluded.registered_at, info = excluded.info",
                (agent.agent_id, float(agent.registered_at), info),
            )

    def load_agents(self) -> list[AgentRecord]:
        conn = self._live()
        with _translated(self._path):
            rows = conn.execute(
                "SELECT agent_id, registered_at, info FROM agents ORDER BY agent_id"
            ).fetchall()
        return [codec.decode_agent(*r) for r in rows]

    def _select(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        conn = self._live()
        with _translated(self._path):
            return conn.execute(sql, params).fetchall()

    def due_messages(
        self, now: float, limit: int, exclude: Collection[str] = ()
    ) -> list[WebhookMessage]:
        query, params = sql.due_messages(now, limit, exclude)
        return [codec.decode_message(r) for r in self._select(query, params)]

    def next_message_at(self) -> float | None:
        rows = self._select(sql.NEXT_MESSAGE_AT)
        return rows[0][0] if rows and rows[0][0] is not None else None

    def save_message(self, msg: WebhookMessage) -> None:
        with self._write() as conn:
            conn.execute(sql.SAVE_MESSAGE, sql.save_message_values(msg))

    def messages_of_job(self, job_id: str) -> list[WebhookMessage]:
        rows = self._select(sql.MESSAGES_OF_JOB, (job_id,))
        return [codec.decode_message(r) for r in rows]

    def load_tenants(self) -> dict[str, str]:
        return dict(self._select(sql.LOAD_TENANTS))

    def save_tenant(self, tenant: str, settings: str) -> None:
        with self._write() as conn:
            conn.execute(sql.SAVE_TENANT, (tenant, settings))

    def finished_jobs(
        self,
        before: float,
        limit: int,
        *,
        tenant: str | None = None,
        other_than: Collection[str] = (),
    ) -> list[JobRecord]:
        query, params = sql.finished_jobs(_SELECT, before, limit, tenant, other_than)
        return [codec.decode_job(r) for r in self._rows(query, params)]

    def delete_jobs(self, jobs: Sequence[JobRecord]) -> list[Doomed]:
        doomed: list[Doomed] = []
        with self._write() as conn:
            for job in jobs:
                if conn.execute(sql.DELETE_FINISHED_JOB, (job.id,)).rowcount != 1:
                    continue
                conn.execute(sql.DELETE_MESSAGES_OF_JOB, (job.id,))
                entry = Doomed(job.id, job.tenant, output_bytes(job))
                conn.execute(sql.INSERT_DOOMED, sql.doomed_values(entry))
                doomed.append(entry)
        return doomed

    def doomed(self, limit: int) -> list[Doomed]:
        return [Doomed(*r) for r in self._select(sql.DOOMED, (limit,))]

    def forget_doomed(self, job_ids: Sequence[str]) -> None:
        with self._write() as conn:
            for job_id in job_ids:
                conn.execute(sql.FORGET_DOOMED, (job_id,))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


@contextmanager
def _step(
    conn: sqlite3.Connection, begin: str, end: str, undo: Callable[[sqlite3.Connection], None]
) -> Iterator[None]:
    """`begin`, the block, `end`; `undo` if anything raises."""
    conn.execute(begin)
    try:
        yield
        conn.execute(end)
    except BaseException:
        undo(conn)
        raise


def _rollback_to(conn: sqlite3.Connection) -> None:
    """Undo savepoint `w` (a write inside a batch)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK TO w")
            conn.execute("RELEASE w")
        except sqlite3.Error:
            pass  # SQLite has rolled the whole transaction back; the batch fails with it


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite has already rolled back (it does on some I/O and full errors)
