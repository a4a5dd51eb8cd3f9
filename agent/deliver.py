"""Delivering a finished attempt's outputs and finish report: outputs small enough travel inside
the report (`OutputFile.data`, read from the spool at each send, so the outbox keeps the report
without them), the others are uploaded first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import structlog

from comfyfleet.agent.coordinator_client import CoordinatorClient, Refused
from comfyfleet.shared import protocol as p

log = structlog.get_logger("agent.job")


async def send_finish(
    coord: CoordinatorClient,
    spool: Path,
    finish: p.Finish,
    chunk_size: int,
    limit: int,
    budget: int,
) -> p.Ack:
    """Upload the outputs but those of at most `limit` bytes (up to `budget` of them in all),
    which go inside the report; then send the report. Refused for an inline file (a coordinator
    that no longer takes it, e.g. restarted with another setting): the report is sent again with
    every output uploaded."""
    try:
        return await _send(
            coord, spool, finish, chunk_size, inline_names(finish.outputs, limit, budget)
        )
    except Refused as exc:
        if not str(exc.error.get("field") or "").endswith(".data"):
            raise
        log.warning("inline_outputs_refused", error=exc.error)
        return await _send(coord, spool, finish, chunk_size, set())


async def _send(
    coord: CoordinatorClient, spool: Path, finish: p.Finish, chunk_size: int, inline: set[str]
) -> p.Ack:
    ref = p.JobRef(job_id=finish.job_id, attempt=finish.attempt)
    for f in finish.outputs:
        if f.name not in inline:
            await coord.upload(ref, f.name, spool / f.name, f.size, f.sha256, chunk_size)
    if inline:
        outputs = await asyncio.to_thread(with_data, spool, finish.outputs, inline)
        finish = msgspec.structs.replace(finish, outputs=outputs)
    return await coord.finish(finish)


def with_data(spool: Path, outputs: list[p.OutputFile], inline: set[str]) -> list[p.OutputFile]:
    """`outputs`, those named in `inline` with their bytes read from `spool` (blocking). A file
    that no longer holds its reported size is OSError (the spool is damaged)."""
    out = []
    for f in outputs:
        if f.name in inline:
            data = (spool / f.name).read_bytes()
            if len(data) != f.size:
                raise OSError(f"{f.name}: {len(data)} bytes in the spool, {f.size} reported")
            f = msgspec.structs.replace(f, data=data)
        out.append(f)
    return out


def inline_names(outputs: list[p.OutputFile], limit: int, budget: int) -> set[str]:
    """The outputs to send inside the finish report: each of at most `limit` bytes, together at
    most `budget`, smallest first (the rest are uploaded)."""
    chosen: set[str] = set()
    for f in sorted(outputs, key=lambda f: f.size):
        if f.size > limit or f.size > budget:
            break
        chosen.add(f.name)
        budget -= f.size
    return chosen
