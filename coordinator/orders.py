"""The leader's side of the orders that any coordinator leaves in a shared store (follower.py).

`apply_orders` reads the pending orders oldest first and applies each through the leader's own
client calls: a stored job enters the leader's memory (and so the queue), a cancel and a drain
run as if a client had asked the leader. Applying is idempotent (a job already known, a job
already finished, an agent unknown: nothing to do), so an order applied twice, by a leader that
died before forgetting it and by the next one, does no harm. The applied orders are then deleted,
fenced like every write of the leader.
"""

from __future__ import annotations

import asyncio

import structlog

from comfyfleet.coordinator.errors import Conflict, NotFound
from comfyfleet.coordinator.intake import Intake
from comfyfleet.coordinator.ledger import survive_store_faults
from comfyfleet.coordinator.parts import Part, Parts
from comfyfleet.coordinator.store.postgres_lead import Order
from comfyfleet.shared.status import TERMINAL

log = structlog.get_logger("coordinator")

BATCH = 1000


class Orders(Part):
    def __init__(self, parts: Parts, intake: Intake) -> None:
        super().__init__(parts)
        self.intake = intake
        self.woken = asyncio.Event()  # set by the NOTIFY listener

    def apply_orders(self) -> int:
        """Apply the pending orders (a batch); returns how many were applied."""
        if self.shared is None:
            return 0
        pending = self.shared.orders(BATCH)
        for order in pending:
            self._apply(order)
        if pending:
            self.shared.done_orders([o.seq for o in pending])
        if len(pending) >= BATCH:
            self.woken.set()
        return len(pending)

    def _apply(self, order: Order) -> None:
        if order.kind == "submit" and order.job_id and order.job_id not in self.live.jobs:
            job = self.store.get_job(order.job_id)
            if job is not None and job.status not in TERMINAL:
                self.live.index(None, job)  # the queue now holds it: the scheduler is woken
        elif order.kind == "cancel" and order.job_id:
            try:
                self.intake.cancel(order.job_id)
            except (Conflict, NotFound):
                pass  # finished meanwhile, or already cancelled
        elif order.kind == "drain" and order.agent_id:
            try:
                self.intake.drain(order.agent_id)
            except NotFound:
                log.warning("drain_unknown_agent", agent_id=order.agent_id)
        log.debug("order_applied", kind=order.kind, job_id=order.job_id, agent_id=order.agent_id)

    async def orders_loop(self) -> None:
        while True:
            await survive_store_faults(self.apply_orders)
            try:
                await asyncio.wait_for(self.woken.wait(), self.config.orders_poll_s)
            except TimeoutError:
                pass
            self.woken.clear()

    async def listen_loop(self) -> None:
        """Wake the orders loop on each NOTIFY; reconnect when the listening connection fails
        (the orders loop polls meanwhile)."""
        if self.shared is None:
            return
        delay = 0.5
        while True:
            try:
                await self.shared.listen(self.woken)
            except Exception as exc:  # noqa: BLE001 - any failure: listen again later
                log.warning("orders_listen_failed", error=str(exc), retry_in_s=delay)
            self.woken.set()  # whatever was notified meanwhile: look now
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
