"""docs/api.md documents every client route, and only routes that exist."""

from __future__ import annotations

import re
from pathlib import Path

from comfyfleet.coordinator.api import client_routes

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def routes_in_code() -> set[tuple[str, str]]:
    found = set()
    for route in client_routes.routes:
        method = getattr(route, "method", "")
        path = getattr(route, "path", "")
        if method and path:
            found.add((method, re.sub(r"\{(\w+)\}", "{}", path)))
    return found


def routes_in_doc() -> set[tuple[str, str]]:
    headings = re.findall(r"^### `(GET|POST|PUT|DELETE|PATCH) ([^`]+)`", DOC.read_text(), re.M)
    return {(m, re.sub(r"\{(\w+)\}", "{}", p)) for m, p in headings}


def test_every_client_route_is_documented_and_no_other() -> None:
    code = routes_in_code()
    assert code, "no routes found: the check itself is broken"
    doc = routes_in_doc()
    assert code - doc == set(), f"undocumented routes: {sorted(code - doc)}"
    assert doc - code == set(), f"documented but absent: {sorted(doc - code)}"
