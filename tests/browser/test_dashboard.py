"""The dashboard in a real headless Chromium against a real fleet (coordinator, sim, agent).

The page loads, shows the agent, follows a job submitted by dropping a workflow file to
COMPLETED with its image, shows a running job's progress and preview, its cancel button cancels
that job, and the drain button drains the agent. Screenshots are kept
under test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from comfyfleet.client import Client
from tests.helpers.fleet import Fleet, running_fleet, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with running_fleet(tmp_path) as f:
        f.add_sim("g1", 24576, "--step-ms", "60", "--preview-every", "2")
        f.add_agent("b1", "g1")
        yield f


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_dashboard_follows_a_job_and_cancels_one(fleet: Fleet, page: Page, tmp_path: Path) -> None:
    answer = page.goto(fleet.url + "/")
    assert answer is not None and "script-src 'self'" in answer.headers["content-security-policy"]
    agent = page.locator('.agent[data-agent="b1"]')
    expect(agent).to_have_attribute("data-status", "ONLINE")
    expect(agent.locator(".vram")).to_have_count(1)
    expect(agent).to_contain_text("ComfyUI 1/1 healthy")
    expect(page.locator("#live")).to_have_text("live")
    shot(page, "01-fleet")

    # a UI-format export is refused with advice, before anything is sent
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    page.set_input_files("#workflow-file", str(ui))
    expect(page.locator("#message")).to_contain_text("API Format")

    # submit by "dropping" a workflow file (the file input is the drop zone's own input)
    wf = tmp_path / "workflow.json"
    wf.write_text(json.dumps(txt2img(384, 256, steps=8, prefix="dash")))
    page.fill("#vram", "4000")
    page.set_input_files("#workflow-file", str(wf))
    expect(page.locator("#message")).to_contain_text("submitted ")
    job_id = page.locator("#message").inner_text().split()[-1]
    row = page.locator(f"#job-{job_id}")
    expect(row).to_have_attribute("data-status", "COMPLETED", timeout=90_000)
    thumb = row.locator("img.output-thumb")
    expect(thumb).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    row.click()
    image = page.locator("#detail img.output")
    expect(image).to_be_visible()
    size = image.evaluate(
        "img => new Promise(ok => img.complete ? ok([img.naturalWidth, "
        "img.naturalHeight]) : img.onload = () => ok([img.naturalWidth, "
        "img.naturalHeight]))"
    )
    assert size == [384, 256]
    expect(page.locator("#detail .history")).to_contain_text("COMPLETED")
    shot(page, "02-completed")

    # a long job: the page shows it running with live progress, and its cancel button cancels it
    with Client(fleet.url) as client:
        long_job = client.submit(txt2img(512, 512, steps=400, prefix="long"), vram_mb=4000)
        row = page.locator(f"#job-{long_job.id}")
        expect(row).to_have_attribute("data-status", "RUNNING", timeout=60_000)
        expect(row.locator(".step")).to_contain_text("KSampler")
        preview = row.locator("img.preview")
        expect(preview).to_be_visible()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=preview.element_handle()
        )
        expect(agent).to_contain_text("jobs 1")  # the fleet view follows: the job's reservation
        expect(agent.locator(".gpu")).to_contain_text("reserved 3.9 GB")
        # the VRAM bar's widths are styles the CSP lets through (set through the CSSOM)
        for part in (".used", ".reserved"):
            width = agent.locator(f".vram {part}").evaluate("e => e.style.width")
            assert width.endswith("%"), (part, width)
        shot(page, "03-running")
        row.locator("button.cancel").click()
        expect(row).to_have_attribute("data-status", "CANCELLED", timeout=60_000)
        assert client.get(long_job.id).status == "CANCELLED"
        assert client.get(job_id).status == "COMPLETED"
    shot(page, "04-cancelled")

    # the drain button drains the agent
    agent.locator("button.drain").click()
    expect(agent).to_have_attribute("data-status", "DRAINING")
    shot(page, "05-drained")

    # with an API key set, requests, the live stream and images carry it as a Bearer header
    seen_auth: list[str] = []
    page.on("request", lambda req: seen_auth.append(req.headers.get("authorization", "")))
    page.evaluate("localStorage.setItem('comfyfleet.apiKey', 'key-123')")
    page.reload()
    expect(page.locator("#live")).to_have_text("live")
    page.locator(f"#job-{job_id}").click()
    keyed = page.locator("#detail img.output")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth === 384", arg=keyed.element_handle()
    )
    assert seen_auth.count("Bearer key-123") >= 3, seen_auth


def test_dashboard_shows_managed_instances_and_their_restarts(page: Page, tmp_path: Path) -> None:
    """An agent that runs its ComfyUI: the card shows the instance's state and uptime; after a
    crash, its restart count and reason (refreshed by the comfyui_restarted event)."""
    import os
    import re
    import signal
    import time

    from tests.helpers.managed import add_managed_agent, instance_record, managed_fleet, sim_command

    (tmp_path / "managed").mkdir()
    with managed_fleet(tmp_path / "managed") as f:
        add_managed_agent(f, "m1", sim_command(f.tmp, "m1"))
        page.goto(f.url + "/")
        line = page.locator('.agent[data-agent="m1"] .instance[data-instance="0"]')
        expect(line).to_have_attribute("data-state", "ready")
        expect(line).to_contain_text("ComfyUI 0 (process): ready, up")
        expect(line).to_contain_text("restarts 0")
        first = instance_record(f, "m1")
        assert first is not None
        os.kill(int(first["pid"]), signal.SIGKILL)
        # (an idle instance dying within seconds of its start counts as a failed start)
        expect(line).to_contain_text(re.compile(r"restarts 1 · last: (exited|start_failed)"))
        expect(line).to_have_attribute("data-state", "ready")
        deadline = time.monotonic() + 10
        while (rec := instance_record(f, "m1")) is None or rec["pid"] == first["pid"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        shot(page, "managed-instance-restarted")
