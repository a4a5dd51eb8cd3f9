"""docs/api.md documents every route and every field of the OpenAPI document the coordinator
serves (request bodies, answers, agent protocol messages, SSE events, parameters), and names no
route that does not exist. The fields of each object are named together, in one section."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.api.conftest import MakeHarness

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def normalised(path: str) -> str:
    return re.sub(r"\{(\w+)\}", "{}", path)


def routes_in_doc(text: str) -> set[tuple[str, str]]:
    headings = re.findall(r"^### `(GET|POST|PUT|DELETE|PATCH) ([^`]+)`", text, re.M)
    return {(m, normalised(p)) for m, p in headings}


def words_in_code_spans(text: str) -> set[str]:
    """Every identifier inside `code spans` and fenced blocks of the page."""
    spans = re.findall(r"```.*?```|`[^`]+`", text, re.S)
    return {w for span in spans for w in re.findall(r"[A-Za-z_][A-Za-z0-9_-]*", span)}


def sections(text: str) -> list[tuple[str, set[str]]]:
    """(heading, identifiers in its code spans) for every ##, ### and #### section."""
    parts = re.split(r"^(#{2,4} .*)$", text, flags=re.M)
    return [
        (parts[i], words_in_code_spans(parts[i] + parts[i + 1])) for i in range(1, len(parts), 2)
    ]


def objects(node: Any, where: str = "") -> list[tuple[str, set[str]]]:
    """(where, property names) of every object schema in the document, at any depth."""
    out: list[tuple[str, set[str]]] = []
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict) and node["properties"]:
            out.append((where, set(node["properties"])))
        for key, value in node.items():
            out += objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += objects(value, f"{where}/{i}")
    return out


def field_names(node: Any) -> set[str]:
    """Property names of every schema in the document, at any depth, and parameter names."""
    out: set[str] = set()
    if isinstance(node, dict):
        for key in ("properties",):
            if isinstance(node.get(key), dict):
                out |= set(node[key])
        if node.get("in") in ("query", "header", "path") and isinstance(node.get("name"), str):
            out.add(node["name"])
        for value in node.values():
            out |= field_names(value)
    elif isinstance(node, list):
        for value in node:
            out |= field_names(value)
    return out


async def served_spec(harness: MakeHarness) -> dict[str, Any]:
    h = await harness()
    resp = await h.client.get("/openapi.json")
    assert resp.status == 200
    spec: dict[str, Any] = await resp.json()
    return spec


async def test_every_served_route_is_documented_and_no_other(harness: MakeHarness) -> None:
    spec = await served_spec(harness)
    served = {(m.upper(), normalised(p)) for p, ops in spec["paths"].items() for m in ops}
    assert len(served) > 20, "no routes found: the check itself is broken"
    doc = routes_in_doc(DOC.read_text())
    assert served - doc == set(), f"undocumented routes: {sorted(served - doc)}"
    assert doc - served == set(), f"documented but not served: {sorted(doc - served)}"


async def test_every_field_and_event_is_documented(harness: MakeHarness) -> None:
    spec = await served_spec(harness)
    names = field_names(spec["paths"]) | field_names(spec["components"])
    for ops in spec["paths"].values():
        for op in ops.values():
            names |= set(op.get("x-events", {}))  # SSE event kinds
    assert {"eta", "profile", "shape_hash", "vram_peak_mb", "inputs", "instance_id"} <= names
    missing = sorted(names - words_in_code_spans(DOC.read_text()))
    assert not missing, f"fields docs/api.md does not name (in `code`): {missing}"


async def test_the_fields_of_each_object_are_documented_together(harness: MakeHarness) -> None:
    """Not just somewhere on the page: one section names all fields of each object (the job
    spec's `inputs` beside `workflow`, a job's `eta` beside `status`)."""
    spec = await served_spec(harness)
    secs = sections(DOC.read_text())
    gaps = []
    for where, fields in objects(spec):
        best, words = max(secs, key=lambda sec: len(fields & sec[1]))
        if not fields <= words:
            gaps.append(f"{where}: {sorted(fields - words)} (closest: {best})")
    assert not gaps, "objects whose fields no one section names:\n" + "\n".join(gaps)
