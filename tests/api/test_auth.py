"""Auth and tenants over HTTP: who may call what, and whose jobs they see."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from comfyfleet.coordinator.api.auth import KEYRING
from comfyfleet.coordinator.app import create_app
from comfyfleet.coordinator.keyring import new_credential, write_keys
from comfyfleet.shared import protocol as p
from comfyfleet.shared.logs import configure
from tests.api.conftest import WORKFLOW, Harness, fast_config
from tests.helpers.protocol_agent import ProtocolAgent, ProtocolError


class AuthSession:
    """Adds one credential to every request of a session (what the real agent does)."""

    def __init__(self, session: Any, credential: str) -> None:
        self.session = session
        self.header = {"Authorization": f"Bearer {credential}"}

    def _with(self, kw: dict[str, Any]) -> dict[str, Any]:
        kw["headers"] = {**(kw.get("headers") or {}), **self.header}
        return kw

    def post(self, url: str, **kw: Any) -> Any:
        return self.session.post(url, **self._with(kw))

    def put(self, url: str, **kw: Any) -> Any:
        return self.session.put(url, **self._with(kw))

    def get(self, url: str, **kw: Any) -> Any:
        return self.session.get(url, **self._with(kw))


class Fleet:
    """An app with keys: tenants acme and beta, an admin, a fleet token, a token for gpu-1."""

    def __init__(self, harness: Harness, creds: dict[str, str]) -> None:
        self.h = harness
        self.client = harness.client
        self.creds = creds

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.creds[who]}"}

    async def submit(self, who: str) -> str:
        resp = await self.client.post(
            "/v1/jobs", json={"workflow": WORKFLOW}, headers=self.auth(who)
        )
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])

    def agent(self, agent_id: str, who: str) -> ProtocolAgent:
        base = str(self.client.make_url("/"))
        return ProtocolAgent(AuthSession(self.client.session, self.creds[who]), base, agent_id)


@pytest.fixture
async def fleet(aiohttp_client: Any, tmp_path: Path) -> Fleet:
    config = fast_config(tmp_path)
    creds: dict[str, str] = {}
    entries = {}
    for who, kind, tenant, agent_id in (
        ("acme", "client", "acme", None),
        ("beta", "client", "beta", None),
        ("admin", "admin", "ops", None),
        ("fleet", "agent", None, None),  # a fleet token: any_agent below
        ("gpu1", "agent", None, "gpu-1"),
    ):
        cred, entry = new_credential(
            kind,
            tenant=tenant,
            agent_id=agent_id,
            any_agent=kind == "agent" and agent_id is None,
        )  # type: ignore[arg-type]
        creds[who] = cred
        entries[entry.id] = entry
    write_keys(config.keys_path, entries)
    app = create_app(config)

    async def later_route(request: web.Request) -> web.Response:  # as another module adds
        return web.json_response({"leaked": request.match_info["job_id"]})

    app.router.add_get("/v1/jobs/{job_id}/added-later", later_route)
    client = await aiohttp_client(app)
    return Fleet(Harness(client), creds)


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    body = await resp.json()
    assert resp.status == status, body
    return dict(body["error"])


async def test_missing_or_wrong_credential_is_401(fleet: Fleet) -> None:
    c = fleet.client
    err = await error_of(await c.get("/v1/jobs"), 401)
    assert err["field"] == "Authorization" and "Bearer" in err["message"]
    wrong = fleet.creds["acme"][:-2] + "xx"
    for headers in (
        {"Authorization": f"Bearer {wrong}"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer not-a-key"},
    ):
        resp = await c.get("/v1/jobs", headers=headers)
        await error_of(resp, 401)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    await error_of(await c.post("/agent/v1/register", data=b"x"), 401)
    await error_of(await c.get("/v1/no-such-route"), 401)  # no route probing without a key


async def test_public_paths_need_no_credential(fleet: Fleet) -> None:
    resp = await fleet.client.get("/healthz")
    assert resp.status == 200


async def test_metrics_is_admin_only(fleet: Fleet) -> None:
    c = fleet.client
    await error_of(await c.get("/metrics"), 401)
    await error_of(await c.get("/metrics", headers=fleet.auth("acme")), 403)
    await error_of(await c.get("/metrics", headers=fleet.auth("fleet")), 403)
    resp = await c.get("/metrics", headers=fleet.auth("admin"))
    assert resp.status == 200
    assert "comfyfleet_queue_depth" in await resp.text()


async def test_public_dashboard_page_needs_no_credential(fleet: Fleet) -> None:
    resp = await fleet.client.get("/")
    assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]


async def sse_job_ids(resp: Any, until: str) -> list[str]:
    """The job ids of the events on an SSE stream, read up to the first event about `until`."""
    seen: list[str] = []
    async with asyncio.timeout(10):
        while until not in seen:
            line = (await resp.content.readline()).decode()
            if line.startswith("data: "):
                job_id = json.loads(line[6:]).get("job_id")
                if job_id:
                    seen.append(job_id)
    return seen


async def test_fleet_stream_shows_a_tenant_only_its_own_jobs(fleet: Fleet) -> None:
    c = fleet.client
    await error_of(await c.get("/v1/events"), 401)
    mine_stream = await c.get("/v1/events", headers=fleet.auth("acme"))
    admin_stream = await c.get("/v1/events", headers=fleet.auth("admin"))
    assert mine_stream.status == 200 and admin_stream.status == 200
    theirs = await fleet.submit("beta")
    mine = await fleet.submit("acme")
    assert set(await sse_job_ids(admin_stream, until=mine)) == {theirs, mine}
    assert set(await sse_job_ids(mine_stream, until=mine)) == {mine}
    mine_stream.close()
    admin_stream.close()


async def sse_agent_event(resp: Any, what: str) -> dict[str, Any]:
    """The data of the next agent event of kind `what` (registered, heartbeat…) on a stream."""
    kind = ""
    async with asyncio.timeout(10):
        while True:
            line = (await resp.content.readline()).decode()
            if line.startswith("event: "):
                kind = line[7:].strip()
            elif line.startswith("data: ") and kind == "agent":
                data: dict[str, Any] = json.loads(line[6:])
                if data["event"] == what:
                    return data


async def test_tenants_see_the_fleet_but_only_their_own_job_ids(fleet: Fleet) -> None:
    """/v1/agents, /v1/agents/{id} and the fleet stream's agent events show every agent and
    GPU, and of the jobs running on them only the caller's own (an admin: all)."""
    c = fleet.client
    agent = fleet.agent("gpu-0", "fleet")
    agent.gpus.append(p.GpuInfo(index=1, name="Sim GPU", vram_total_mb=24576, vram_free_mb=24576))
    agent.instances.append(p.InstanceInfo(instance_id="1", gpu_index=1))
    await agent.register()
    streams = {who: await c.get("/v1/events", headers=fleet.auth(who)) for who in ("acme", "admin")}
    mine, theirs = await fleet.submit("acme"), await fleet.submit("beta")
    leased = []
    while len(leased) < 2:
        leased += (await agent.lease(2.0)).jobs
    assert {j.job_id for j in leased} == {mine, theirs}
    expect = {"acme": [mine], "beta": [theirs], "admin": sorted([mine, theirs])}
    for who, ids in expect.items():
        listed = await (await c.get("/v1/agents", headers=fleet.auth(who))).json()
        assert [a["jobs"] for a in listed["agents"]] == [ids], who
        assert len(listed["agents"][0]["gpus"]) == 2  # the fleet itself is not hidden
        one = await (await c.get("/v1/agents/gpu-0", headers=fleet.auth(who))).json()
        assert one["jobs"] == ids, who
    await agent.heartbeat()  # an agent event naming both jobs
    for who, resp in streams.items():
        assert (await sse_agent_event(resp, "heartbeat"))["jobs"] == expect[who], who
        resp.close()


async def test_tenants_see_only_their_own_jobs(fleet: Fleet) -> None:
    c = fleet.client
    mine = await fleet.submit("acme")
    theirs = await fleet.submit("beta")
    listed = await (await c.get("/v1/jobs", headers=fleet.auth("acme"))).json()
    assert [j["id"] for j in listed["jobs"]] == [mine]
    ok = await c.get(f"/v1/jobs/{mine}", headers=fleet.auth("acme"))
    assert ok.status == 200
    # Another tenant's job answers exactly like a job that does not exist.
    hidden = await error_of(await c.get(f"/v1/jobs/{theirs}", headers=fleet.auth("acme")), 404)
    absent = await error_of(await c.get("/v1/jobs/01NOSUCHJOB", headers=fleet.auth("acme")), 404)
    assert hidden["code"] == absent["code"] == "not_found"
    assert hidden["message"].replace(theirs, "ID") == absent["message"].replace("01NOSUCHJOB", "ID")
    for path in (f"/v1/jobs/{theirs}/preview", f"/v1/jobs/{theirs}/outputs/out_00001_.png"):
        await error_of(await c.get(path, headers=fleet.auth("acme")), 404)
    await error_of(await c.post(f"/v1/jobs/{theirs}/cancel", headers=fleet.auth("acme")), 404)
    # A route added later under /v1/jobs/{job_id} is covered with no work of its own.
    await error_of(await c.get(f"/v1/jobs/{theirs}/added-later", headers=fleet.auth("acme")), 404)
    own = await c.get(f"/v1/jobs/{mine}/added-later", headers=fleet.auth("acme"))
    assert own.status == 200
    still = await (await c.get(f"/v1/jobs/{theirs}", headers=fleet.auth("beta"))).json()
    assert still["status"] != "CANCELLED"
    cancelled = await c.post(f"/v1/jobs/{mine}/cancel", headers=fleet.auth("acme"))
    assert cancelled.status in (200, 202)


async def test_admin_sees_all_and_tenant_downloads_own_outputs(fleet: Fleet) -> None:
    c = fleet.client
    job_id = await fleet.submit("acme")
    agent = fleet.agent("gpu-0", "fleet")
    await agent.register()
    done = await agent.run_one(data=b"acme-png")
    assert done.job_id == job_id
    everyone = await (await c.get("/v1/jobs", headers=fleet.auth("admin"))).json()
    assert [j["id"] for j in everyone["jobs"]] == [job_id]
    url = f"/v1/jobs/{job_id}/outputs/out_00001_.png"
    own = await c.get(url, headers=fleet.auth("acme"))
    assert own.status == 200 and await own.read() == b"acme-png"
    admin = await c.get(url, headers=fleet.auth("admin"))
    assert admin.status == 200
    await error_of(await c.get(url, headers=fleet.auth("beta")), 404)


async def test_idempotency_keys_are_per_tenant(fleet: Fleet) -> None:
    c = fleet.client
    ids = []
    for who in ("acme", "beta"):
        resp = await c.post(
            "/v1/jobs",
            json={"workflow": WORKFLOW},
            headers={**fleet.auth(who), "Idempotency-Key": "same"},
        )
        assert resp.status == 201
        ids.append((await resp.json())["id"])
    assert ids[0] != ids[1]


async def test_only_admins_drain_agents(fleet: Fleet) -> None:
    c = fleet.client
    await fleet.agent("gpu-0", "fleet").register()
    listed = await c.get("/v1/agents", headers=fleet.auth("acme"))
    assert listed.status == 200
    await error_of(await c.post("/v1/agents/gpu-0/drain", headers=fleet.auth("acme")), 403)
    resp = await c.post("/v1/agents/gpu-0/drain", headers=fleet.auth("admin"))
    assert resp.status == 202


async def test_credentials_stay_on_their_side(fleet: Fleet) -> None:
    c = fleet.client
    err = await error_of(await c.get("/v1/jobs", headers=fleet.auth("fleet")), 403)
    assert "agent token" in err["message"]
    await error_of(
        await c.post("/v1/jobs", json={"workflow": WORKFLOW}, headers=fleet.auth("gpu1")), 403
    )
    for who in ("acme", "admin"):
        with pytest.raises(ProtocolError) as refused:
            await fleet.agent("gpu-0", who).register()
        assert refused.value.status == 403


async def test_agent_bound_token_speaks_only_for_its_agent(fleet: Fleet) -> None:
    await fleet.agent("gpu-1", "gpu1").register()
    with pytest.raises(ProtocolError) as refused:
        await fleet.agent("gpu-2", "gpu1").register()
    assert refused.value.status == 403
    await fleet.agent("gpu-2", "fleet").register()  # the fleet token speaks for any agent


async def test_revoked_key_stops_working_after_reload(fleet: Fleet) -> None:
    c = fleet.client
    ring = c.server.app[KEYRING]
    key_id = fleet.creds["beta"].split("_")[1]
    entries = dict(ring.entries)
    del entries[key_id]
    write_keys(ring.path, entries)
    ring.reload()
    await error_of(await c.get("/v1/jobs", headers=fleet.auth("beta")), 401)
    assert (await c.get("/v1/jobs", headers=fleet.auth("acme"))).status == 200


async def test_secrets_never_reach_the_logs(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    """Every log line written while good, wrong and misplaced credentials are used, rendered
    as the daemons render them, holds no credential nor its secret part."""
    stream = io.StringIO()
    configure("debug", json=True, stream=stream, cache=False)
    caplog.set_level(logging.DEBUG)
    try:
        c = fleet.client
        job_id = await fleet.submit("acme")
        agent = fleet.agent("gpu-1", "gpu1")
        await agent.register()
        await agent.run_one()
        wrong = fleet.creds["acme"][:-3] + "abc"
        await c.get("/v1/jobs", headers={"Authorization": f"Bearer {wrong}"})
        await c.get("/v1/jobs", headers=fleet.auth("fleet"))
        await c.get(f"/v1/jobs/{job_id}", headers=fleet.auth("beta"))
        await c.post("/v1/agents/gpu-1/drain", headers=fleet.auth("admin"))
        with pytest.raises(ProtocolError):
            await fleet.agent("gpu-2", "gpu1").register()
    finally:
        structlog.reset_defaults()
    logged = stream.getvalue() + "\n".join(r.getMessage() for r in caplog.records)
    assert "agent_drain" in logged and "gpu-1" in logged  # the logs were captured
    for cred in [*fleet.creds.values(), wrong]:
        assert cred not in logged
        assert cred.split("_", 2)[2] not in logged
