"""Webhooks through the API: a job's `webhook_url` and tenant subscriptions, signed per Standard
Webhooks (every signature checked by the `standardwebhooks` package), retried with backoff,
the tries shown in the job's view, and the SSRF guard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from comfyfleet.coordinator.model import WebhookMessage
from comfyfleet.coordinator.webhooks import guard
from comfyfleet.coordinator.webhooks.signing import new_secret
from tests.api.conftest import MakeHarness
from tests.helpers.webhook_receiver import Receiver

SECRET = new_secret()
FAST = {
    "webhook_secret": SECRET,
    "webhook_allow_private_addresses": True,  # the receiver is on loopback
    "webhook_retry_first_s": 0.05,
    "webhook_retry_cap_s": 0.2,
}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver(SECRET).start()
    yield r
    await r.stop()


async def wait_view(h: Any, job_id: str, done: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        view = await h.job(job_id)
        if done(view):
            return view
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)


async def test_completed_job_is_told_signed_and_logged(
    harness: MakeHarness, receiver: Receiver
) -> None:
    h = await harness(**FAST)
    job = await h.submit(webhook_url=receiver.url)
    agent = h.agent("a1")
    await agent.register()
    await agent.run_one()
    [got] = await receiver.wait_for(1)
    assert got.verified
    assert got.body["type"] == "job.completed"
    assert got.body["data"]["job_id"] == job["id"] and got.body["data"]["status"] == "COMPLETED"
    assert got.body["data"]["outputs"][0]["name"] == "out_00001_.png"
    view = await wait_view(
        h, job["id"], lambda v: v["webhooks"] and v["webhooks"][0]["state"] == "delivered"
    )
    [hook] = view["webhooks"]
    assert (
        hook["id"] == got.msg_id
        and hook["event"] == "job.completed"
        and hook["url"] == receiver.url
    )
    assert hook["attempts"] == 1 and [t["status"] for t in hook["tries"]] == [200]


async def test_receiver_failing_for_a_while_gets_the_event_and_the_view_shows_each_try(
    harness: MakeHarness, receiver: Receiver
) -> None:
    receiver.fail_first = 3
    h = await harness(**FAST)
    job = await h.submit(webhook_url=receiver.url, webhook_events=["running", "completed"])
    agent = h.agent("a1")
    await agent.register()
    await agent.run_one()
    accepted = await receiver.wait_for(2)
    assert all(r.verified for r in receiver.got)
    assert sorted(r.body["type"] for r in accepted) == ["job.completed", "job.running"]
    view = await wait_view(
        h, job["id"], lambda v: all(w["state"] == "delivered" for w in v["webhooks"])
    )
    tries = [t["status"] for w in view["webhooks"] for t in w["tries"]]
    assert tries.count(500) == 3 and tries.count(200) == 2
    for hook in view["webhooks"]:
        retried = [r for r in receiver.got if r.msg_id == hook["id"]]
        assert len(retried) == hook["attempts"]  # each try carried the same webhook-id
        assert [t["status"] for t in hook["tries"]] == [r.answered for r in retried]
        assert all(t["error"] == "HTTP 500 Internal Server Error" for t in hook["tries"][:-1])


async def test_tenant_subscription_signed_with_the_tenants_own_secret(harness: MakeHarness) -> None:
    own = new_secret()
    receiver = await Receiver(own).start()
    try:
        h = await harness(**FAST)
        resp = await h.client.put(
            "/v1/tenants/default",
            json={"webhooks": [{"url": receiver.url, "events": ["failed"]}], "webhook_secret": own},
        )
        body = await resp.json()
        assert resp.status == 200, body
        assert body["webhook_secret"] == "set" and body["webhooks"][0]["events"] == ["failed"]
        job = await h.submit()
        agent = h.agent("a1")
        await agent.register()
        lease = await agent.lease(5.0)
        await agent.started(lease.jobs[0])
        from comfyfleet.shared import protocol as p

        await agent.finish(
            lease.jobs[0], "failed", error=p.ErrorInfo(code="execution_error", message="boom")
        )
        [got] = await receiver.wait_for(1)
        assert got.verified and got.body["type"] == "job.failed"
        assert (
            got.body["data"]["job_id"] == job["id"]
            and got.body["data"]["error"]["message"] == "boom"
        )
        shown = await (await h.client.get("/v1/tenants/default")).json()
        assert own not in str(shown)  # the secret is never shown back
    finally:
        await receiver.stop()


async def test_cancelled_job_is_told(harness: MakeHarness, receiver: Receiver) -> None:
    h = await harness(**FAST)
    job = await h.submit(webhook_url=receiver.url)
    resp = await h.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status == 200
    [got] = await receiver.wait_for(1)
    assert got.verified and got.body["type"] == "job.cancelled"


@pytest.mark.parametrize(
    "body, field, code",
    [
        ({"webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url", "forbidden_address"),
        ({"webhook_url": "http://10.0.0.8/hook"}, "webhook_url", "forbidden_address"),
        ({"webhook_url": "http://[::1]/hook"}, "webhook_url", "forbidden_address"),
        ({"webhook_url": "gopher://example.com/"}, "webhook_url", "invalid"),
        ({"webhook_url": ""}, "webhook_url", None),
        (
            {"webhook_url": "https://example.com/", "webhook_events": ["exploded"]},
            "webhook_events.0",
            None,
        ),
    ],
)
async def test_bad_webhook_urls_are_refused_at_submit(
    harness: MakeHarness, body: dict[str, Any], field: str, code: str | None
) -> None:
    h = await harness(webhook_secret=SECRET)
    err = (await h.submit(status=400, **body))["error"]
    assert err["field"] == field, err
    if code is not None:
        assert err["code"] == code


async def test_a_webhook_without_any_secret_to_sign_is_refused(harness: MakeHarness) -> None:
    h = await harness()
    err = (await h.submit(status=400, webhook_url="https://example.com/hook"))["error"]
    assert err["code"] == "no_webhook_secret" and err["field"] == "webhook_url"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"webhooks": [{"url": "http://localhost/x"}]}, "webhooks.0.url"),
        ({"webhooks": [{"url": "https://example.com/", "events": []}]}, "webhooks.0.events"),
        ({"webhook_secret": "hunter2"}, "webhook_secret"),
        ({"retention_s": -1}, "retention_s"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_bad_tenant_settings_are_refused(
    harness: MakeHarness, body: dict[str, Any], field: str
) -> None:
    h = await harness()
    resp = await h.client.put("/v1/tenants/default", json=body)
    err = (await resp.json())["error"]
    assert resp.status == 400 and err["field"] == field, err


async def test_a_host_resolving_to_loopback_is_refused_at_delivery(
    harness: MakeHarness, receiver: Receiver
) -> None:
    """DNS is checked on every try: every address a name resolves to must be allowed."""

    class Names(aiohttp.abc.AbstractResolver):
        async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[Any]:
            return [
                {
                    "hostname": host,
                    "host": "127.0.0.1",
                    "port": port,
                    "family": 2,
                    "proto": 0,
                    "flags": 0,
                }
            ]

        async def close(self) -> None:
            pass

    h = await harness(webhook_secret=SECRET)
    outbox = h.coord.outbox
    port = receiver.url.split(":")[2].split("/")[0]
    msg = WebhookMessage(
        "msg_x",
        "j1",
        "default",
        f"http://hooks.example:{port}/hook",
        "job.completed",
        "{}",
        time.time(),
        time.time(),
    )
    connector = aiohttp.TCPConnector(resolver=guard.GuardedResolver(Names()))
    async with aiohttp.ClientSession(connector=connector) as session:
        status, error = await outbox._post(session, msg)
    assert status is None and error is not None
    assert "refused" in error and "127.0.0.1 is a loopback address" in error
    assert receiver.got == []


async def test_tenants_set_their_own_webhooks_but_not_retention(
    aiohttp_client: Any, tmp_path: Any
) -> None:
    from comfyfleet.coordinator.app import create_app
    from comfyfleet.coordinator.keyring import new_credential, write_keys
    from tests.api.conftest import fast_config

    config = fast_config(tmp_path)
    creds, entries = {}, {}
    for who, kind, tenant in (("acme", "client", "acme"), ("admin", "admin", "ops")):
        cred, entry = new_credential(kind, tenant=tenant)  # type: ignore[arg-type]
        creds[who], entries[entry.id] = cred, entry
    write_keys(config.keys_path, entries)
    client = await aiohttp_client(create_app(config))

    def auth(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {creds[who]}"}

    hooks = {"webhooks": [{"url": "https://hooks.example.com/a"}], "webhook_secret": new_secret()}
    resp = await client.put("/v1/tenants/acme", json=hooks, headers=auth("acme"))
    assert resp.status == 200, await resp.text()
    resp = await client.put("/v1/tenants/acme", json={"retention_s": 60}, headers=auth("acme"))
    assert resp.status == 403 and (await resp.json())["error"]["field"] == "retention_s"
    resp = await client.put(
        "/v1/tenants/acme", json={**hooks, "retention_s": 60}, headers=auth("admin")
    )
    assert resp.status == 200 and (await resp.json())["retention_s"] == 60
    resp = await client.put("/v1/tenants/acme", json=hooks, headers=auth("acme"))
    assert (await resp.json())["retention_s"] == 60  # a tenant's PUT keeps what the admin set
    for method in ("get", "put"):
        resp = await getattr(client, method)("/v1/tenants/beta", json={}, headers=auth("acme"))
        assert resp.status == 404  # another tenant's settings are not there for it
