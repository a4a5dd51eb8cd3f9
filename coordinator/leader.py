"""Which coordinator places jobs (DESIGN.md §8): one leader per shared store, by lease.

With one coordinator (SQLite, memory) `SoleLeader` says this process leads, always. On a shared
store (PostgreSQL) `Leadership.run` is one of the daemon's loops: a follower tries to take the
lease every `leader_poll_s`; the coordinator that takes it begins a term (`Coordinator.lead`:
fresh memory, writes fenced by the new epoch, recovery, agents given the restart grace) and runs
the term's loops (scheduler, sweeper, orders and their NOTIFY listener, webhook deliveries from
the outbox, retention). A `LeaseKeeper` thread renews the lease every `leader_renew_s`, apart
from the event loop, so a long recovery or a busy loop does not lose it. The term ends when a
renewal is refused (another epoch began), when the lease could not be renewed before the
holder's own deadline (`lease.believed_until`), or on shutdown, which gives the lease up so that
a follower takes over at once. A term that ends leaves the process a follower: it stops its
loops, drops its memory and sends agents to the new leader.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.errors import StoreUnavailable
from comfyfleet.coordinator.follower import REFRESH_S
from comfyfleet.coordinator.lease import Leader, Term, believed_until
from comfyfleet.coordinator.service import Coordinator
from comfyfleet.coordinator.store.base import SharedStore

log = structlog.get_logger("coordinator")

LOOP_STALL_S = 60.0  # the keeper stops renewing for an event loop silent this long
CHECK_S = 0.2  # how often the leader checks its keeper and its loops


class Role(Protocol):
    def leading(self) -> bool:
        """Whether this coordinator acts as the leader now (places jobs, serves agents)."""
        ...

    def leader_url(self) -> str | None:
        """Where the leader is (None while no leader is known)."""
        ...

    def describe(self) -> dict[str, Any]:
        """For /healthz: role, the leader's URL, the epoch."""
        ...


class SoleLeader:
    """The one coordinator of a store nobody else uses: it leads, always."""

    def __init__(self, url: str) -> None:
        self.url = url

    def leading(self) -> bool:
        return True

    def leader_url(self) -> str | None:
        return self.url

    def describe(self) -> dict[str, Any]:
        return {"role": "leader", "leader": self.url, "epoch": None}


class LeaseKeeper:
    """Renews one epoch's lease from its own thread until told to stop or the lease is lost."""

    def __init__(
        self,
        store: SharedStore,
        epoch: int,
        holder: str,
        config: CoordinatorConfig,
        until: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.epoch = epoch
        self.holder = holder
        self.ttl_s = config.leader_lease_s
        self.every_s = config.leader_renew_s
        self.until = until  # this holder acts as the leader until then (its monotonic clock)
        self.lost: str | None = None  # why the lease is gone
        self.clock = clock
        self.beat = clock()  # the event loop's last sign of life
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{epoch}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def held(self, now: float) -> bool:
        return self.lost is None and now < self.until

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            asked = self.clock()
            if asked - self.beat > LOOP_STALL_S:
                self.lost = f"the event loop was silent for {asked - self.beat:.0f} s"
                return
            try:
                renewed: bool | None = self.store.renew(self.epoch, self.holder, self.ttl_s)
            except StoreUnavailable as exc:
                renewed = None
                log.warning("lease_renew_failed", epoch=self.epoch, error=exc.message)
            if renewed:
                self.until = believed_until(asked, self.ttl_s)
            elif renewed is False:
                self.lost = "the lease was taken or had ended"
                return
            elif self.clock() >= self.until:
                self.lost = "the lease could not be renewed in time"
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.every_s + 15)


class Leadership:
    """This coordinator's role on a shared store: follower, or leader for one term at a time."""

    def __init__(
        self,
        config: CoordinatorConfig,
        store: SharedStore,
        coord: Coordinator,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.coord = coord
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.url = config.url
        self.clock = clock
        self.term: Term | None = None
        self.keeper: LeaseKeeper | None = None
        self.known: Leader | None = None  # the leader as last read from the store
        self.tasks: dict[str, asyncio.Task[None]] = {}  # the term's loops
        self.chores: set[asyncio.Task[Any]] = set()  # the term's one-off work
        self.refreshed_at = float("-inf")

    # ---------------------------------------------------------------- Role

    def leading(self) -> bool:
        return self.keeper is not None and self.keeper.held(self.clock())

    def leader_url(self) -> str | None:
        if self.leading():
            return self.url
        return self.known.url if self.known is not None else None

    def describe(self) -> dict[str, Any]:
        leading = self.leading()
        return {
            "role": "leader" if leading else "follower",
            "leader": self.leader_url(),
            "epoch": self.term.epoch if leading and self.term else None,
        }

    # ---------------------------------------------------------------- the loop

    def start(self) -> None:
        """Begin as a follower (before the loop runs, so the first requests are answered)."""
        self._follow()

    async def run(self) -> None:
        try:
            while True:
                await self.tick()
                await asyncio.sleep(CHECK_S if self.term else self.config.leader_poll_s)
        finally:
            await self.close()

    async def tick(self) -> None:
        if self.term is not None and self.keeper is not None:
            self.keeper.beat = self.clock()
            self._check_loops()
            if not self.keeper.held(self.clock()):
                await self.step_down(self.keeper.lost or "the lease ran out before its renewal")
            return
        asked = self.clock()
        try:
            epoch = self.store.try_lead(self.holder, self.url, self.config.leader_lease_s)
            if epoch is None:
                self.known = self.store.leader()
        except StoreUnavailable as exc:
            log.warning("lease_check_failed", error=exc.message)
            return
        if epoch is not None:
            await self.take_over(epoch, asked)
        elif self.clock() - self.refreshed_at >= REFRESH_S:
            self._refresh()

    async def take_over(self, epoch: int, asked: float) -> None:
        until = believed_until(asked, self.config.leader_lease_s)
        self.term = Term(epoch, until)
        self.keeper = LeaseKeeper(self.store, epoch, self.holder, self.config, until, self.clock)
        self.keeper.start()
        started = time.perf_counter()
        try:
            self.coord.lead(self.store.as_leader(epoch), epoch)
        except StoreUnavailable as exc:
            log.warning("leader_recovery_failed", epoch=epoch, error=exc.message)
            await self.step_down("recovery failed")
            return
        self.known = Leader(epoch, self.holder, self.url)
        coord = self.coord
        self._start_loop("scheduler", coord.scheduler_loop)
        self._start_loop("sweeper", coord.sweeper_loop)
        self._start_loop("orders", coord.orders.orders_loop)
        self._start_loop("orders-listener", coord.orders.listen_loop)
        self._start_loop("webhooks", coord.outbox.run)
        self._start_loop("retention", coord.retention.loop)
        self._chore(self._sweep(epoch))
        log.info(
            "leader_elected",
            epoch=epoch,
            holder=self.holder,
            url=self.url,
            recovery_s=round(time.perf_counter() - started, 3),
            jobs=len(coord.jobs),
            agents=len(coord.agents),
        )

    async def step_down(self, why: str) -> None:
        term, keeper = self.term, self.keeper
        self.term, self.keeper = None, None  # from now on agents are sent elsewhere
        if keeper is not None:
            keeper.stop()
        await self._stop_loops()
        self._follow()
        log.warning("leader_stepped_down", epoch=term.epoch if term else None, reason=why)

    async def close(self) -> None:
        """Shutdown: stop the term's loops, then give the lease up for a follower to take."""
        term, keeper = self.term, self.keeper
        self.term, self.keeper = None, None
        if keeper is not None:
            keeper.stop()
        await self._stop_loops()
        if term is not None:
            try:
                self.store.release(term.epoch, self.holder)
                log.info("lease_released", epoch=term.epoch)
            except StoreUnavailable as exc:
                log.warning("lease_release_failed", epoch=term.epoch, error=exc.message)

    # ---------------------------------------------------------------- helpers

    def _follow(self) -> None:
        self.coord.follow(self.store.as_follower())
        self._refresh()

    def _refresh(self) -> None:
        self.refreshed_at = self.clock()
        try:
            self.coord.refresh()
        except StoreUnavailable as exc:
            log.warning("follower_refresh_failed", error=exc.message)

    def _start_loop(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        async def loop() -> None:
            await fn()

        self.tasks[name] = asyncio.create_task(loop(), name=f"leader:{name}")

    def _chore(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self.chores.add(task)
        task.add_done_callback(self.chores.discard)

    async def _sweep(self, epoch: int) -> None:
        try:
            swept = await self.coord.sweep_attempt_files()
        except StoreUnavailable as exc:  # the next leader sweeps again
            log.warning("attempt_folders_not_swept", epoch=epoch, error=exc.message)
            return
        log.info("attempt_folders_swept", epoch=epoch, count=swept)

    def _check_loops(self) -> None:
        """A term's loop that died stops the daemon, as any background loop does."""
        for name, task in self.tasks.items():
            if task.done() and not task.cancelled():
                exc = task.exception()
                raise RuntimeError(f"leader loop {name} ended: {exc!r}") from exc

    async def _stop_loops(self) -> None:
        tasks, self.tasks = [*self.tasks.values(), *self.chores], {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
