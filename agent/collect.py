"""Fetching a finished prompt's outputs from ComfyUI into the attempt's spool, each under its
stored name (shared/names.py), and the retry policy of the runner's own ComfyUI calls.

With ComfyUI's output folder known (comfy_files.ComfyFolders) an output file is taken from there
(a hard link, or a copy across file systems) and hashed in one pass, instead of asking ComfyUI
for it with GET /view: no request for ComfyUI to serve, no HTTP body for the agent to read. A
file not found there (or not readable) is fetched with /view as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import shutil
from pathlib import Path

from comfyfleet.agent.comfy_files import inside
from comfyfleet.agent.comfyui import events as ev
from comfyfleet.agent.comfyui.client import (
    ComfyUIClient,
    OutputMissing,
    OutputTooLarge,
    ViewResult,
)
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
    output_dir: Path | None = None,
) -> list[p.OutputFile]:
    """Fetch each output file into `spool` under its stored name (from ComfyUI's `output_dir`
    when known, else /view). Text results become text files, previews (temp) are left out,
    unless the ComfyUI facade relays ComfyUI's own frames (`forward_frames`): then previews are
    kept and text is carried in the frames."""
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
        got = None
        if output_dir is not None and ref.type == "output":
            got = await asyncio.to_thread(
                take_output, output_dir, ref, spool / name, max_output_bytes
            )
        if got is None:
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


def take_output(
    output_dir: Path, ref: ev.OutputRef, dest: Path, max_bytes: int
) -> ViewResult | None:
    """`ref`'s file from ComfyUI's output folder into `dest` (linked, else copied), hashed;
    None when it is not there to take (then /view fetches it). Over `max_bytes`: OutputTooLarge,
    as /view would."""
    rel = f"{ref.subfolder}/{ref.filename}" if ref.subfolder else ref.filename
    src = inside(output_dir, rel)
    if src is None:
        return None
    try:
        size = src.stat().st_size
        if size > max_bytes:
            raise OutputTooLarge(f"{ref.filename}: {size} bytes > {max_bytes}")
        dest.unlink(missing_ok=True)
        try:
            os.link(src, dest)
        except OSError:  # another file system, or not ours to link: a copy
            shutil.copyfile(src, dest)
        digest, size = hashlib.sha256(), 0
        with open(dest, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OutputTooLarge:
        raise
    except OSError:
        dest.unlink(missing_ok=True)
        return None
    kind = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
    return ViewResult(size=size, sha256=digest.hexdigest(), content_type=kind)
