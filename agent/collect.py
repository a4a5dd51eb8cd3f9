"""Fetching a finished prompt's outputs from ComfyUI into the attempt's spool, each under its
stored name (shared/names.py), and the retry policy of the runner's own ComfyUI calls."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from comfyfleet.agent.comfyui import events as ev
from comfyfleet.agent.comfyui.client import ComfyUIClient, OutputMissing
from comfyfleet.agent.comfyui.driver import PromptOutcome
from comfyfleet.shared import names
from comfyfleet.shared import protocol as p
from comfyfleet.shared.retry import RetryPolicy

# The ComfyUI calls the runner makes itself (the driver follows the prompt): fetching outputs
# and uploading inputs ride out brief trouble, then the attempt goes back.
COMFYUI_FETCH = RetryPolicy(deadline_s=30.0, wait_max_s=5.0)


async def collect_outputs(
    outcome: PromptOutcome,
    spool: Path,
    client: ComfyUIClient,
    forward_frames: bool,
    max_output_bytes: int,
) -> list[p.OutputFile]:
    """Fetch each output file into `spool` under its stored name. Text results become text
    files, previews (temp) are left out, unless the ComfyUI facade relays ComfyUI's own frames
    (`forward_frames`): then previews are kept and text is carried in the frames."""
    await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
    seen: set[str] = set()
    files: list[p.OutputFile] = []
    for ref in outcome.outputs:
        if ref.text is not None:
            if not forward_frames:
                files.append(await _text_output(ref, spool))
            continue
        if ref.type != "output" and not forward_frames:
            continue
        if not ref.filename:
            raise OutputMissing(f"node {ref.node_id} reported an output without a name")
        original = names.original_name(ref.subfolder, ref.filename, ref.type)
        if original in seen:
            continue  # one file reported twice
        seen.add(original)
        name = names.stored_name(original)
        got = await COMFYUI_FETCH.call(
            lambda ref=ref, path=spool / name: client.view(ref, path, max_output_bytes),
            "comfyui view",
        )
        files.append(
            p.OutputFile(
                name=name,
                original=original,
                size=got.size,
                sha256=got.sha256,
                content_type=got.content_type,
                node_id=ref.node_id,
                kind=ref.type,
                comfy_ref=p.ComfyRef(filename=ref.filename, subfolder=ref.subfolder, type=ref.type)
                if forward_frames
                else None,
            )
        )
    return files


async def _text_output(ref: ev.OutputRef, spool: Path) -> p.OutputFile:
    original = names.original_name("", ref.filename)
    name = names.stored_name(original)
    size, sha256 = await asyncio.to_thread(_write_text, spool / name, ref.text or "")
    return p.OutputFile(
        name=name,
        original=original,
        size=size,
        sha256=sha256,
        content_type="text/plain; charset=utf-8",
        node_id=ref.node_id,
        kind="text",
    )


def _write_text(path: Path, text: str) -> tuple[int, str]:
    data = text.encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    return len(data), hashlib.sha256(data).hexdigest()
