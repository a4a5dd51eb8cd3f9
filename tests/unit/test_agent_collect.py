"""Outputs into the spool: from ComfyUI's output folder when the agent knows it (no /view for
ComfyUI to serve), else with /view (agent/collect.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.agent.collect import collect_outputs
from comfyfleet.agent.comfyui.client import OutputTooLarge, ViewResult
from comfyfleet.agent.comfyui.events import OutputRef
from comfyfleet.agent.comfyui.outcome import PromptOutcome


class Viewer:
    """A ComfyUI client that serves /view from a dict and counts the requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.views: list[str] = []

    async def view(self, ref: OutputRef, dest: Any, max_bytes: int) -> ViewResult:
        self.views.append(ref.filename)
        data = self.files[ref.filename]
        Path(dest).write_bytes(data)  # noqa: ASYNC240
        return ViewResult(len(data), hashlib.sha256(data).hexdigest(), "image/png")


def outcome(*refs: OutputRef) -> PromptOutcome:
    return PromptOutcome(status="succeeded", prompt_id="p", outputs=list(refs))


async def test_outputs_come_from_the_known_folder_without_a_view(tmp_path: Path) -> None:
    out = tmp_path / "comfy-out"
    (out / "sub").mkdir(parents=True)
    data = os.urandom(5000)
    (out / "sub" / "a_00001_.png").write_bytes(data)
    client = Viewer({})
    files = await collect_outputs(
        outcome(OutputRef("a_00001_.png", "sub", "output", "9")),
        tmp_path / "spool",
        client,  # type: ignore[arg-type]
        False,
        1 << 20,
        out,
    )
    assert client.views == []
    [f] = files
    assert (f.size, f.sha256, f.content_type) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
        "image/png",
    )
    assert f.original == "sub/a_00001_.png"
    assert (tmp_path / "spool" / f.name).read_bytes() == data
    (out / "sub" / "a_00001_.png").unlink()  # ComfyUI's copy goes; the spool keeps its own
    assert (tmp_path / "spool" / f.name).read_bytes() == data


async def test_outputs_not_in_the_folder_temp_ones_and_unknown_folders_use_view(
    tmp_path: Path,
) -> None:
    out = tmp_path / "comfy-out"
    out.mkdir()
    client = Viewer({"gone.png": b"x" * 10, "prev.png": b"y" * 20, "b.png": b"z" * 30})
    refs = (
        OutputRef("gone.png", "", "output", "1"),  # not where the agent was told
        OutputRef("prev.png", "", "temp", "2"),  # a preview: kept when forwarding frames
        OutputRef("../b.png", "", "output", "3"),  # outside the folder: never read from disk
    )
    client.files["../b.png"] = b"z" * 30
    files = await collect_outputs(outcome(*refs), tmp_path / "spool", client, True, 1 << 20, out)  # type: ignore[arg-type]
    assert client.views == ["gone.png", "prev.png", "../b.png"]
    assert [f.size for f in files] == [10, 20, 30]
    client.views.clear()
    (out / "c.png").write_bytes(b"c")  # there, but the folder is not known: /view
    client.files["c.png"] = b"c"
    await collect_outputs(
        outcome(OutputRef("c.png", "", "output", "4")), tmp_path / "s2", client, False, 99, None
    )  # type: ignore[arg-type]
    assert client.views == ["c.png"]


async def test_an_output_over_the_limit_in_the_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "comfy-out"
    out.mkdir()
    (out / "big.png").write_bytes(b"b" * 100)
    with pytest.raises(OutputTooLarge):
        await collect_outputs(
            outcome(OutputRef("big.png", "", "output", "1")),
            tmp_path / "spool",
            Viewer({}),  # type: ignore[arg-type]
            False,
            99,
            out,
        )
