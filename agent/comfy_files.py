"""The files the agent makes ComfyUI create in its own folders, and their removal (the one rule).

ComfyUI's SaveImage lists the output folder on every save, so a folder that only grows slows every
job down (bench/notes.md: 91.7 -> 17 jobs/s with 20,000 files) and fills the disk. The agent
removes what a job made there once the coordinator has the job's report, and at start what an
earlier run left, but never a file it cannot prove it created:

- an output: a file of type `output` reported by a node that *executed* in our prompt (a node
  ComfyUI served from its cache reports a file an earlier prompt, maybe someone else's, wrote);
- an input: a file uploaded by the agent under a name of its own (`cf-<job>-<attempt>-<name>`),
  so an identical file someone else uploaded is never taken for ours.

What an attempt created is kept in a ledger (one small JSON file per attempt under
`DATA_DIR/comfy-files/`) until it is removed, so a restarted agent finds it. Output nodes get a
per-attempt input (`comfyfleet_run`, which ComfyUI ignores but hashes into its cache key) so a
repeated prompt never answers from ComfyUI's cache with a file already removed. All of this only
for an instance whose folders are configured. File I/O blocks: call through asyncio.to_thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from comfyfleet.agent.comfyui.events import OutputRef

log = structlog.get_logger("agent.comfy_files")

RUN_INPUT = "comfyfleet_run"  # the cache-breaking input on output nodes
INPUT_PREFIX = "cf-"


@dataclass(frozen=True, slots=True)
class ComfyFolders:
    """Where one ComfyUI keeps its outputs and inputs (None: not known, nothing is removed)."""

    output: Path | None = None
    input: Path | None = None

    @property
    def any(self) -> bool:
        return self.output is not None or self.input is not None


@dataclass(frozen=True, slots=True)
class Created:
    """What one attempt made ComfyUI create: paths relative to the output / input folder."""

    outputs: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()

    def merged(self, other: Created) -> Created:
        return Created(
            tuple(dict.fromkeys(self.outputs + other.outputs)),
            tuple(dict.fromkeys(self.inputs + other.inputs)),
        )


# -- pure rules -----------------------------------------------------------------------------------


def input_name(job_id: str, attempt: int, name: str) -> str:
    """The name the agent uploads a job's input file under: its own, so provably created."""
    return f"{INPUT_PREFIX}{job_id}-{attempt}-{name.replace('/', '_')}"


def created_outputs(outputs: Iterable[OutputRef], cached: Sequence[str]) -> tuple[str, ...]:
    """Output files our prompt wrote: type `output`, from a node ComfyUI executed (not cached)."""
    from_cache = set(cached)
    out: list[str] = []
    for ref in outputs:
        if ref.type != "output" or ref.node_id in from_cache or not ref.filename:
            continue
        rel = f"{ref.subfolder}/{ref.filename}" if ref.subfolder else ref.filename
        if rel not in out:
            out.append(rel)
    return tuple(out)


def uncached_outputs(graph: Mapping[str, Any], run: str) -> dict[str, Any]:
    """The graph with `comfyfleet_run: run` on every node that saves files (has a
    `filename_prefix` input): its cache key is then this attempt's alone."""
    out: dict[str, Any] = {}
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if isinstance(inputs, Mapping) and "filename_prefix" in inputs:
            out[node_id] = {**node, "inputs": {**inputs, RUN_INPUT: run}}
        else:
            out[node_id] = node
    return out


def inside(root: Path, rel: str) -> Path | None:
    """`root/rel` if it stays inside `root` (no absolute path, no `..`), else None."""
    if not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
        return None
    path = root / rel
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return path


# -- the ledger and the removal (file I/O) --------------------------------------------------


@dataclass
class ComfyFiles:
    """One instance's folders and the agent's ledger of what its attempts created there."""

    folders: ComfyFolders
    ledger_dir: Path
    removed: int = field(default=0)

    def _entry(self, job_id: str, attempt: int) -> Path:
        return self.ledger_dir / f"{job_id}-{attempt}.json"

    def record(self, job_id: str, attempt: int, created: Created) -> None:
        """Add to the attempt's ledger entry (atomically) before the files could be left. Not
        synced: an entry lost with the host's power leaves a file behind, nothing worse, and a
        sync per job costs every job."""
        if not (created.outputs or created.inputs):
            return
        self.ledger_dir.mkdir(parents=True, exist_ok=True)
        entry = self._entry(job_id, attempt)
        whole = read_entry(entry).merged(created)
        tmp = entry.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump({"outputs": list(whole.outputs), "inputs": list(whole.inputs)}, fh)
        os.replace(tmp, entry)

    def release(self, job_id: str, attempt: int, also: Created | None = None) -> int:
        """Remove the attempt's files from ComfyUI's folders (its ledger entry's and `also`,
        what it made but never needed to record), then its ledger entry."""
        entry = self._entry(job_id, attempt)
        created = read_entry(entry)
        count = remove_created(self.folders, created.merged(also) if also else created)
        entry.unlink(missing_ok=True)
        self.removed += count
        return count


def read_entry(entry: Path) -> Created:
    try:
        raw = json.loads(entry.read_text())
        return Created(
            tuple(str(x) for x in raw.get("outputs", [])),
            tuple(str(x) for x in raw.get("inputs", [])),
        )
    except FileNotFoundError:
        return Created()
    except (ValueError, AttributeError, TypeError) as exc:
        log.warning("comfy_files_entry_unreadable", entry=str(entry), error=str(exc))
        return Created()


def remove_created(folders: ComfyFolders, created: Created) -> int:
    """Delete the listed files that are still there (never outside their folder; an input only
    under the agent's own name). Returns how many went."""
    count = 0
    targets: list[Path | None] = []
    if folders.output is not None:
        targets += [inside(folders.output, rel) for rel in created.outputs]
    if folders.input is not None:
        targets += [
            inside(folders.input, rel)
            for rel in created.inputs
            if Path(rel).name.startswith(INPUT_PREFIX)
        ]
    for path in targets:
        if path is None:
            continue
        try:
            path.unlink()
            count += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("comfy_file_not_removed", path=str(path), error=str(exc))
    return count


def sweep(files: ComfyFiles, keep: set[tuple[str, int]]) -> int:
    """At start: remove what attempts the agent no longer holds left behind (their ledger
    entries); attempts in `keep` (still in ComfyUI, or a report not yet acknowledged) stay."""
    if not files.ledger_dir.is_dir():
        return 0
    count = 0
    for entry in sorted(files.ledger_dir.glob("*.json")):
        job_id, _, attempt = entry.stem.rpartition("-")
        if not attempt.isdigit() or (job_id, int(attempt)) in keep:
            continue
        count += files.release(job_id, int(attempt))
    for tmp in files.ledger_dir.glob("*.tmp"):
        tmp.unlink(missing_ok=True)
    return count
