"""The browser tests' page: a headless Debian Chromium (no browser download), failing the test
on any JavaScript error or Content-Security-Policy violation the page reports."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    assert shutil.which(CHROMIUM), (
        f"{CHROMIUM} is missing: `make test` installs Debian's chromium when run as root; "
        "otherwise run `apt-get install chromium`"
    )
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # what the page's Content-Security-Policy blocked (Chromium reports it on the console)
            blocked: list[str] = []
            page.on(
                "console",
                lambda msg: (
                    blocked.append(msg.text) if "Content Security Policy" in msg.text else None
                ),
            )
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
            assert not blocked, f"the page breaks its own CSP {len(blocked)} times: {blocked[:3]}"
        finally:
            context.close()
