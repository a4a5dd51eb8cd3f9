"""Who may take an agent's jobs away over HTTP (issue 12.2, 12.7): a token bound to the agent
proves its host; a fleet-wide token may register and heartbeat for it, but a registration from
another instance that would release its jobs gets 409 naming `instance_id`, and its heartbeats
take no job."""

from __future__ import annotations

from comfyfleet.shared import protocol as p
from tests.api.test_auth import Fleet, fleet  # noqa: F401 - the fixture
from tests.helpers.protocol_agent import ProtocolError


async def running_job(fleet: Fleet) -> tuple[str, p.Assignment]:  # noqa: F811
    host = fleet.agent("gpu-1", "gpu1")
    host.instance_id = "first-run"
    await host.register()
    job_id = await fleet.submit("acme")
    (leased,) = (await host.lease(2.0)).jobs
    await host.started(leased)
    return job_id, leased


async def attempt_1_ended(fleet: Fleet, job_id: str) -> str | None:  # noqa: F811
    """Why attempt 1 of the job ended (None: it did not; the scheduler may have placed the
    job again since)."""
    resp = await fleet.client.get(f"/v1/jobs/{job_id}", headers=fleet.auth("admin"))
    history = (await resp.json())["history"]
    ends = [t["reason"] for t in history if t["attempt"] == 1 and t["event"] == "requeue"]
    return ends[0] if ends else None


async def test_a_fleet_token_cannot_release_another_instances_jobs(fleet: Fleet) -> None:  # noqa: F811
    job_id, _ = await running_job(fleet)
    other = fleet.agent("gpu-1", "fleet")
    other.instance_id = "someone-else"
    try:
        await other.register([])
        raise AssertionError("a registration that releases jobs was accepted")
    except ProtocolError as exc:
        assert exc.status == 409, exc.body
        assert exc.body["error"]["field"] == "instance_id", exc.body
    await other.heartbeat([])  # accepted (liveness), but it proves no host: no job moves
    await other.heartbeat([])
    assert await attempt_1_ended(fleet, job_id) is None


async def test_the_agents_own_token_may_restart_it_and_its_jobs_are_requeued(fleet: Fleet) -> None:  # noqa: F811
    job_id, _ = await running_job(fleet)
    restarted = fleet.agent("gpu-1", "gpu1")
    restarted.instance_id = "second-run"
    await restarted.register([])
    assert await attempt_1_ended(fleet, job_id) == "agent restarted without this job"


async def test_a_bound_heartbeat_that_omits_a_running_job_requeues_it(fleet: Fleet) -> None:  # noqa: F811
    job_id, leased = await running_job(fleet)
    host = fleet.agent("gpu-1", "gpu1")
    held = p.RunningJob(
        job_id=leased.job_id, attempt=1, instance_id="0", prompt_id="prompt-1", started=True
    )
    await host.heartbeat([held])
    assert await attempt_1_ended(fleet, job_id) is None
    await host.heartbeat([])  # built after reading the answer above: it lost the job
    assert await attempt_1_ended(fleet, job_id) == "agent gpu-1 no longer reports this job"
