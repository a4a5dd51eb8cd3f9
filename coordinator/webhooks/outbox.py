"""The webhook outbox: the messages each job change causes (written by the ledger in the same
transaction as the change), and the loop that delivers them, at least once.

A message stays "pending" in the store until a receiver answered 2xx; a coordinator killed in
the middle of a try sends it again after its restart, with the same `webhook-id`. Failed tries
are retried with capped exponential backoff and jitter (retry.py) until `webhook_retry_for_s`
has passed, then the message is "failed". Every try is kept on the message: the job's view
shows them.
"""

from __future__ import annotations

import asyncio
import functools
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from yarl import URL

from comfyfleet.coordinator.config import CoordinatorConfig
from comfyfleet.coordinator.errors import StoreUnavailable
from comfyfleet.coordinator.metrics import Metrics
from comfyfleet.coordinator.model import DeliveryTry, JobRecord, WebhookMessage
from comfyfleet.coordinator.store import Store
from comfyfleet.coordinator.tenants import Tenants
from comfyfleet.coordinator.webhooks import guard
from comfyfleet.coordinator.webhooks.messages import messages_for
from comfyfleet.coordinator.webhooks.retry import RetryPolicy, retry_at
from comfyfleet.coordinator.webhooks.signing import secret_key, signed_headers

log = structlog.get_logger("coordinator.webhooks")

MAX_TRIES_KEPT = 50  # the newest tries of a message stay in its log
IDLE_POLL_S = 1.0  # the store is looked at at least this often (restarts, other coordinators)
STORE_RETRY_S = 1.0


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


class Outbox:
    def __init__(
        self,
        config: CoordinatorConfig,
        store: Store,
        tenants: Tenants,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.store = store
        self.tenants = tenants
        self.metrics = metrics
        self.clock = clock
        self.draw = draw
        self.policy = RetryPolicy(
            config.webhook_retry_first_s, config.webhook_retry_cap_s, config.webhook_retry_for_s
        )
        self.wake = asyncio.Event()
        self.inflight: dict[str, asyncio.Task[None]] = {}

    # --- for the ledger -----------------------------------------------------------------------

    def messages(self, old: JobRecord | None, new: JobRecord) -> list[WebhookMessage]:
        """What the change from `old` to `new` sends (pure apart from the clock and ids)."""
        subscriptions = self.tenants.get(new.tenant).webhooks
        return messages_for(old, new, subscriptions, self.clock(), new_message_id)

    def written(self) -> None:
        """Messages were committed: deliver them now rather than at the next poll."""
        self.wake.set()

    # --- the delivery loop --------------------------------------------------------------------

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=guard.resolver(self.config.webhook_allow_private_addresses),
            limit=self.config.webhook_concurrency,
        )
        timeout = aiohttp.ClientTimeout(total=self.config.webhook_timeout_s)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers={"User-Agent": "comfyfleet-webhooks"}
        ) as session:
            try:
                while True:
                    await self.step(session)
            finally:
                tasks = list(self.inflight.values())
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def step(self, session: aiohttp.ClientSession) -> None:
        """Start the tries that are due, then wait for a new message, a finished try or the
        next due time (at most IDLE_POLL_S)."""
        self.wake.clear()
        free = self.config.webhook_concurrency - len(self.inflight)
        try:
            due = self.store.due_messages(self.clock(), free, self.inflight) if free > 0 else []
            soonest = None if self.inflight else self.store.next_message_at()
        except StoreUnavailable as exc:
            log.warning("store_unavailable", step="webhooks", error=exc.message)
            await asyncio.sleep(STORE_RETRY_S)
            return
        for msg in due:
            task = asyncio.create_task(self.deliver(session, msg), name=f"webhook:{msg.id}")
            self.inflight[msg.id] = task
            task.add_done_callback(functools.partial(self._done, msg.id))
        if due and len(self.inflight) < self.config.webhook_concurrency:
            return  # more may be due right away
        wait_s = IDLE_POLL_S
        if soonest is not None:
            wait_s = min(IDLE_POLL_S, max(0.0, soonest - self.clock()))
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.wake.wait())]
        waiters.extend(self.inflight.values())
        try:
            await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiters[0].cancel()

    def _done(self, msg_id: str, _task: asyncio.Task[None]) -> None:
        self.inflight.pop(msg_id, None)
        self.wake.set()

    async def deliver(self, session: aiohttp.ClientSession, msg: WebhookMessage) -> None:
        """One try of one message, recorded in the store whatever happens."""
        started = self.clock()
        t0 = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            status, error = await self._post(session, msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a try that breaks is a failed try
            error = f"{type(exc).__name__}: {exc}"
        entry = DeliveryTry(started, status, error, round((time.monotonic() - t0) * 1000, 1))
        self._record(msg, entry)

    async def _post(
        self, session: aiohttp.ClientSession, msg: WebhookMessage
    ) -> tuple[int | None, str | None]:
        secret = self.tenants.secret(msg.tenant, self.config.webhook_secret)
        if secret is None:
            return None, "no webhook secret to sign with (webhook_secret)"
        url = URL(msg.url)
        allow = self.config.webhook_allow_private_addresses
        host = url.host or ""
        ip = guard.literal_ip(host)
        if not allow and ip is not None and (why := guard.blocked_reason(ip)) is not None:
            return None, f"refused: {why}"
        body = msg.payload.encode()
        headers = signed_headers([secret_key(secret)], msg.id, int(self.clock()), body)
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as r:
                await r.content.read(4096)  # a short answer is read; the rest is dropped
                if 200 <= r.status < 300:
                    return r.status, None
                return r.status, f"HTTP {r.status} {r.reason or ''}".strip()
        except aiohttp.ClientConnectorDNSError as exc:
            cause = exc.os_error
            if isinstance(cause, guard.BlockedAddress):
                return None, f"refused: {cause}"
            return None, f"cannot resolve {host}: {cause}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            return None, what[:500]

    def _record(self, msg: WebhookMessage, entry: DeliveryTry) -> None:
        attempts = msg.attempts + 1
        tries = (*msg.tries, entry)[-MAX_TRIES_KEPT:]
        now = self.clock()
        ok = entry.status is not None and 200 <= entry.status < 300
        if ok:
            state, next_at = "delivered", msg.next_at
            self.metrics.webhook_tries.labels("delivered").inc()
            self.metrics.webhook_latency.observe(max(0.0, now - msg.created_at))
        else:
            retry = retry_at(self.policy, attempts, msg.created_at, now, self.draw())
            state, next_at = ("pending", retry) if retry is not None else ("failed", msg.next_at)
            self.metrics.webhook_tries.labels("failed" if retry is not None else "gave_up").inc()
        saved = WebhookMessage(
            id=msg.id,
            job_id=msg.job_id,
            tenant=msg.tenant,
            url=msg.url,
            event=msg.event,
            payload=msg.payload,
            created_at=msg.created_at,
            next_at=next_at,
            attempts=attempts,
            state=state,
            tries=tries,
        )
        try:
            self.store.save_message(saved)
        except StoreUnavailable as exc:  # stays pending as it was: tried again (at least once)
            log.warning("webhook_not_recorded", job_id=msg.job_id, id=msg.id, error=exc.message)
            return
        log.info(
            "webhook_try",
            job_id=msg.job_id,
            id=msg.id,
            event=msg.event,
            host=URL(msg.url).host,
            attempt=attempts,
            status=entry.status,
            error=entry.error,
            state=state,
        )
