"""ComfyUI's own web UI (the stock `comfyui-frontend-package`) served by the coordinator's
`--comfy-listen` listener, in a real headless Chromium, over a fleet of two simulated GPUs.

A person opens the page, opens a workflow file (Workflow > Open: the page's file input),
presses Run, watches the sampler's progress and its previews, and gets the image in the
Save Image node; the settings the page wrote are kept on the server. Screenshots are kept
under test-artifacts/comfy-ui/.
"""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Page, Response, WebSocket, expect

from tests.helpers import procs
from tests.helpers.fleet import running_fleet, txt2img

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "comfy-ui"


@pytest.fixture
def comfy_url(tmp_path: Path) -> Iterator[str]:
    port = procs.free_port()
    args = ["--heartbeat-interval", "0.5", "--comfy-listen", f"127.0.0.1:{port}"]
    with running_fleet(tmp_path, args) as fleet:
        for name in ("g1", "g2"):
            fleet.add_sim(name, 24576, "--step-ms", "120", "--preview-every", "2")
            fleet.add_agent(name, name)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # both GPUs have described their ComfyUI
            try:
                with urllib.request.urlopen(f"{url}/system_stats", timeout=5) as resp:
                    if len(json.loads(resp.read())["devices"]) == 2:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, fleet.logs()
            time.sleep(0.2)
        yield url


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


class Frames:
    """What the page's WebSocket received: binary frames (previews) and text frame types."""

    def __init__(self) -> None:
        self.binary = 0
        self.types: list[str] = []

    def follow(self, ws: WebSocket) -> None:
        ws.on("framereceived", self.received)

    def received(self, payload: Any) -> None:
        if isinstance(payload, bytes | bytearray):
            self.binary += 1
        else:
            self.types.append(json.loads(payload).get("type", ""))


def test_a_person_runs_a_workflow_in_comfyuis_own_ui(
    comfy_url: str, page: Page, tmp_path: Path
) -> None:
    frames = Frames()
    page.on("websocket", frames.follow)
    images: list[Response] = []
    page.on("response", lambda r: images.append(r) if "/view?" in r.url else None)

    page.goto(comfy_url + "/")
    page.wait_for_selector("#comfy-file-input", state="attached")
    templates = page.get_by_role("dialog", name="Get Started with a Template")
    expect(templates).to_be_visible()  # a first visit offers templates (the fleet has none)
    shot(page, "01-opened")
    templates.get_by_role("button", name="Close dialog").click()
    expect(templates).to_be_hidden()
    expect(page.get_by_role("button", name="Run", exact=True)).to_be_visible()

    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(txt2img(448, 320, steps=30, prefix="ui", seed=3)))
    page.set_input_files("#comfy-file-input", str(workflow))  # Workflow > Open
    expect(page.get_by_role("tab", name="workflow", exact=True)).to_have_attribute(
        "aria-selected", "true"
    )
    expect(page.get_by_role("textbox", name="text").first).to_have_value("ui")  # the prompt
    assert page.evaluate("window.app.graph.nodes.length") == 7  # the graph is on the canvas
    shot(page, "02-loaded")

    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_function("document.title.includes('KSampler')")  # "[..%][40%] KSampler"
    page.wait_for_function(
        "() => Object.keys(window.app?.nodePreviewImages || {}).length > 0"
    )  # the sampler shows its preview
    expect(page.get_by_text("1 active")).to_be_visible()
    shot(page, "03-running")

    page.wait_for_function(
        "() => !document.title.includes('%')", timeout=90_000
    )  # the prompt ended
    expect(page.get_by_text("0 active")).to_be_visible()
    page.mouse.click(700, 750)
    page.keyboard.press(".")  # fit the whole graph in view: the Save Image node shows the image
    page.wait_for_timeout(1000)
    shot(page, "04-done")

    assert frames.binary > 0, frames.types  # previews came over the WebSocket
    assert frames.types.count("execution_start") == 1
    assert "progress" in frames.types and "execution_success" in frames.types
    outputs = [r for r in images if "filename=ui_" in r.url and r.status == 200]
    assert outputs, [r.url for r in images]
    with Image.open(io.BytesIO(outputs[-1].body())) as img:
        assert img.size == (448, 320)
    with urllib.request.urlopen(f"{comfy_url}/api/settings", timeout=5) as resp:
        settings = json.loads(resp.read())
    assert settings.get("Comfy.InstalledVersion")  # the page keeps its settings on the server
