"""A webhook receiver on loopback for tests: checks every signature with the independent
`standardwebhooks` package, records what arrived, and can answer 500 for a while."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import standardwebhooks
from aiohttp import web


@dataclass
class Received:
    at: float
    msg_id: str
    body: dict[str, Any]
    verified: bool
    answered: int


@dataclass
class Receiver:
    secret: str
    fail_first: int = 0  # answer 500 to this many requests first
    got: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            standardwebhooks.Webhook(self.secret).verify(raw, dict(request.headers))
            verified = True
        except standardwebhooks.webhooks.WebhookVerificationError:
            verified = False
        status = 500 if len(self.got) < self.fail_first else 200
        if not verified:
            status = 401
        self.got.append(
            Received(
                time.time(),
                request.headers.get("webhook-id", ""),
                json.loads(raw),
                verified,
                status,
            )
        )
        self.arrived.set()
        return web.Response(status=status, text="no" if status != 200 else "ok")

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        bound = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def accepted(self) -> list[Received]:
        return [r for r in self.got if r.answered == 200]

    async def wait_for(self, n_accepted: int, timeout_s: float = 20.0) -> list[Received]:
        """Until `n_accepted` requests were answered 200."""
        deadline = time.monotonic() + timeout_s
        while len(self.accepted()) < n_accepted:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{len(self.accepted())} webhooks accepted, wanted {n_accepted}: {self.got}"
                )
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.5))
            except TimeoutError:
                pass
        return self.accepted()
