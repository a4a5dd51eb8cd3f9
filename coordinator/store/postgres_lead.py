"""Several coordinators on one PostgreSQL store: the lease, the fence and the orders, in SQL.

The lease follows the rules of `coordinator/lease.py`, on the server's clock (`clock_timestamp()`),
so the coordinators' own clocks never decide who leads. Every write of the leader carries, in its
own statement, `(SELECT comfyfleet_fence(epoch))` (`fenced`; the function is migrations.POSTGRES
v2): the server evaluates it once before the statement touches a row, takes a share lock on the
lease row and raises unless the epoch still holds. A coordinator that takes the lease must update
that row, so it waits for the writes in flight of the old epoch to commit, and every later write
of the old epoch fails: the epochs' writes never interleave. A holder paused in the middle
of a transaction (SIGSTOP) cannot keep the row locked: its session is ended after
`idle_in_transaction_session_timeout`.

Orders are what any coordinator leaves for the leader: a job it stored (`submit`), a `cancel`,
a `drain`. Each is a row (durable until the leader has applied it) and a NOTIFY on the store's
channel (a hint: the leader also polls).
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from comfyfleet.coordinator.lease import Leader

LEASE_LOCK_TIMEOUT_MS = 500  # taking or renewing the lease never waits longer than this for a lock

_TAKE = """
WITH won AS (
    UPDATE comfyfleet_leader
       SET epoch = epoch + 1, holder = %(holder)s, url = %(url)s,
           expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
     WHERE id = 1 AND expires_at <= clock_timestamp()
    RETURNING epoch, holder, url
)
INSERT INTO comfyfleet_terms (epoch, holder, url, began_at)
SELECT epoch, holder, url, clock_timestamp() FROM won
RETURNING epoch
"""
_RENEW = """
UPDATE comfyfleet_leader SET expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
 WHERE id = 1 AND epoch = %(epoch)s AND holder = %(holder)s AND expires_at > clock_timestamp()
RETURNING epoch
"""
_RELEASE = """
UPDATE comfyfleet_leader SET expires_at = clock_timestamp()
 WHERE id = 1 AND epoch = %(epoch)s AND holder = %(holder)s AND expires_at > clock_timestamp()
"""
_LEADER = (
    "SELECT epoch, holder, url FROM comfyfleet_leader "
    "WHERE id = 1 AND expires_at > clock_timestamp()"
)
FENCE = "(SELECT comfyfleet_fence(%s))"  # a condition: true, or the statement fails
_ORDER = (
    "WITH o AS (INSERT INTO comfyfleet_orders (kind, job_id, agent_id, at) "
    "VALUES (%s, %s, %s, %s) RETURNING seq) SELECT pg_notify(%s, '') FROM o"
)
_ORDERS = "SELECT seq, kind, job_id, agent_id, at FROM comfyfleet_orders ORDER BY seq LIMIT %s"
DONE = "DELETE FROM comfyfleet_orders WHERE seq = ANY(%s)"
_TERMS = (
    "SELECT epoch, holder, url, extract(epoch FROM began_at) FROM comfyfleet_terms ORDER BY epoch"
)


def fenced(statement: str) -> str:
    """`statement` (ending in a WHERE clause, then maybe RETURNING or ON CONFLICT) written only
    while the epoch given as its last parameter holds the lease."""
    for tail in (" ON CONFLICT", " RETURNING"):
        at = statement.find(tail)
        if at >= 0:
            return f"{statement[:at]} AND {FENCE}{statement[at:]}"
    return f"{statement} AND {FENCE}"


@dataclass(frozen=True, slots=True)
class Order:
    """Something the leader must apply: `submit` (job_id was stored), `cancel` (job_id) or
    `drain` (agent_id)."""

    seq: int
    kind: str
    job_id: str | None
    agent_id: str | None
    at: float


@dataclass(frozen=True, slots=True)
class TermRecord:
    epoch: int
    holder: str
    url: str
    began_at: float  # the server's clock, seconds since the epoch


def channel_of(schema: str) -> str:
    """The NOTIFY channel of the store in `schema` (channels are per database, not per schema)."""
    return f"comfyfleet.{schema}"[:63]


def _lease_statement(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> Any:
    """One lease statement in its own transaction, waiting at most LEASE_LOCK_TIMEOUT_MS for the
    row (a lock it cannot get now means: not this time)."""
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {LEASE_LOCK_TIMEOUT_MS}")
            return conn.execute(query, params).fetchone()  # type: ignore[call-overload]
    except psycopg.errors.LockNotAvailable:
        return None


def take_lease(conn: psycopg.Connection[Any], holder: str, url: str, ttl_s: float) -> int | None:
    row = _lease_statement(conn, _TAKE, {"holder": holder, "url": url, "ttl": ttl_s})
    return int(row[0]) if row else None


def renew_lease(conn: psycopg.Connection[Any], epoch: int, holder: str, ttl_s: float) -> bool:
    row = _lease_statement(conn, _RENEW, {"epoch": epoch, "holder": holder, "ttl": ttl_s})
    return row is not None


def release_lease(conn: psycopg.Connection[Any], epoch: int, holder: str) -> None:
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = {LEASE_LOCK_TIMEOUT_MS}")
        conn.execute(_RELEASE, {"epoch": epoch, "holder": holder})


def current_leader(conn: psycopg.Connection[Any]) -> Leader | None:
    row = conn.execute(_LEADER).fetchone()
    return Leader(int(row[0]), str(row[1]), str(row[2])) if row else None


def all_terms(conn: psycopg.Connection[Any]) -> list[TermRecord]:
    return [TermRecord(int(e), str(h), str(u), float(b)) for e, h, u, b in conn.execute(_TERMS)]


def read_orders(conn: psycopg.Connection[Any], limit: int) -> list[Order]:
    rows = conn.execute(_ORDERS, (limit,))
    return [Order(int(s), str(k), j, a, float(t)) for s, k, j, a, t in rows]


def add_order(
    conn: psycopg.Connection[Any],
    channel: str,
    kind: str,
    job_id: str | None,
    agent_id: str | None,
    at: float,
) -> None:
    conn.execute(_ORDER, (kind, job_id, agent_id, at, channel))


async def listen(conninfo: str, channel: str, woken: asyncio.Event, timeout_s: float) -> None:
    """Set `woken` on every NOTIFY of `channel` until the connection fails (the caller reconnects;
    the leader polls meanwhile)."""
    async with await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, connect_timeout=max(1, round(timeout_s))
    ) as conn:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        async for _ in conn.notifies():
            woken.set()


class LeaseAndOrders:
    """The lease and the orders, as methods of PostgresStore (which provides `_conn`)."""

    channel: str

    def _conn(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        raise NotImplementedError

    def try_lead(self, holder: str, url: str, ttl_s: float) -> int | None:
        """Take the lease if it has ended: the new epoch, or None."""
        with self._conn() as conn:
            return take_lease(conn, holder, url, ttl_s)

    def renew(self, epoch: int, holder: str, ttl_s: float) -> bool:
        with self._conn() as conn:
            return renew_lease(conn, epoch, holder, ttl_s)

    def release(self, epoch: int, holder: str) -> None:
        with self._conn() as conn:
            release_lease(conn, epoch, holder)

    def leader(self) -> Leader | None:
        with self._conn() as conn:
            return current_leader(conn)

    def terms(self) -> list[TermRecord]:
        """Every epoch so far and when it began (the server's clock)."""
        with self._conn() as conn:
            return all_terms(conn)

    def put_order(
        self, kind: str, at: float, job_id: str | None = None, agent_id: str | None = None
    ) -> None:
        with self._conn() as conn:
            add_order(conn, self.channel, kind, job_id, agent_id, at)

    def orders(self, limit: int = 1000) -> list[Order]:
        with self._conn() as conn:
            return read_orders(conn, limit)
