"""Webhooks from a real coordinator process: deliveries pending when it is SIGKILLed are
delivered after its restart (the outbox is durable), every signature checked by the
independent `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from comfyfleet.coordinator.webhooks.signing import new_secret
from tests.helpers import procs
from tests.helpers.protocol_agent import ProtocolAgent
from tests.helpers.webhook_receiver import Receiver
from tests.integration.test_coordinator_process import get, submit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def coordinator_args(secret: str) -> list[str]:
    return [
        "--heartbeat-interval", "0.3",
        "--restart-grace", "2",
        "--set", f"webhook_secret={secret}",
        "--set", "webhook_allow_private_addresses=true",
        "--set", "webhook_retry_first_s=0.2",
        "--set", "webhook_retry_cap_s=0.5",
    ]  # fmt: skip


async def test_deliveries_pending_at_sigkill_are_delivered_after_restart(tmp_path: Path) -> None:
    secret = new_secret()
    receiver = await Receiver(secret, fail_first=10**6).start()  # 500 until told otherwise
    data, port = tmp_path / "data", procs.free_port()
    coord = procs.coordinator(data, tmp_path, port, coordinator_args(secret)).start()
    url = coord.url  # type: ignore[attr-defined]
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            agent = ProtocolAgent(s, url, "a1")
            await agent.register()
            jobs = [(await submit(s, url, webhook_url=receiver.url))["id"] for _ in range(3)]
            for _ in jobs:
                await agent.run_one()
            deadline = time.monotonic() + 20
            while {r.body["data"]["job_id"] for r in receiver.got} != set(jobs):
                assert time.monotonic() < deadline, receiver.got
                await asyncio.sleep(0.05)
            coord.kill(signal.SIGKILL)  # every message tried, none delivered
            tried_before = len(receiver.got)
            receiver.fail_first = tried_before  # from now on the receiver accepts
            coord = procs.coordinator(data, tmp_path, port, coordinator_args(secret)).start()
            accepted = await receiver.wait_for(3)
            assert sorted(r.body["data"]["job_id"] for r in accepted) == sorted(jobs)
            assert all(r.verified for r in receiver.got)
            for job_id in jobs:
                view = await get(s, url, job_id)
                [hook] = view["webhooks"]
                assert hook["state"] == "delivered", hook
                statuses = [t["status"] for t in hook["tries"]]
                assert statuses[-1] == 200 and 500 in statuses
                ids = {r.msg_id for r in receiver.got if r.body["data"]["job_id"] == job_id}
                assert ids == {hook["id"]}  # one message, the same webhook-id on every try
    except BaseException:
        print(coord.log()[-6000:])
        raise
    finally:
        coord.kill(signal.SIGKILL)
        await receiver.stop()
