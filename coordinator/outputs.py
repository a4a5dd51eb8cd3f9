"""Output files: chunked, resumable by offset, verified by size and SHA-256.

Files of attempt N of job J live in `outputs/J/N/`; a part file grows by appended chunks and is
renamed to its final name only once its size and checksum match what the agent declared.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.coordinator.errors import Conflict, StoreUnavailable
from comfyfleet.shared import names
from comfyfleet.shared.errors import InvalidInput


def check_name(name: str, field: str = "name") -> str:
    """An output file name must be a safe stored name (shared/names.py holds the rule)."""
    return names.check_stored(name, field)


@dataclass(frozen=True, slots=True)
class ChunkResult:
    received: int
    complete: bool


class OutputFiles:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # (job, attempt, name) -> (size, sha256) checked at upload, so finish need not re-hash;
        # after a restart the map is empty and verify() hashes the file instead.
        self.verified: dict[tuple[str, int, str], tuple[int, str]] = {}
        # (job, attempt, name) -> (running sha256, bytes it covers) of a part file being
        # received, so the last chunk needs no second read of the whole file; rebuilt from the
        # part file when missing (after a restart) or out of step.
        self.partial: dict[tuple[str, int, str], tuple[Any, int]] = {}
        root.mkdir(parents=True, exist_ok=True)

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        return self.root / job_id / str(attempt)

    def final_path(self, job_id: str, attempt: int, name: str) -> Path:
        return self.attempt_dir(job_id, attempt) / check_name(name)

    def received(self, job_id: str, attempt: int, name: str) -> int:
        final = self.final_path(job_id, attempt, name)
        if final.exists():
            return final.stat().st_size
        part = final.with_name(final.name + ".part")
        return part.stat().st_size if part.exists() else 0

    def write_chunk(
        self, job_id: str, attempt: int, name: str, offset: int, size: int, sha256: str, data: bytes
    ) -> ChunkResult:
        sink = self.open_chunk(job_id, attempt, name, offset, size, sha256, len(data))
        if isinstance(sink, ChunkResult):
            return sink
        try:
            sink.write([data])
        except BaseException:
            sink.abort()
            raise
        return sink.close()

    def open_chunk(
        self,
        job_id: str,
        attempt: int,
        name: str,
        offset: int,
        size: int,
        sha256: str,
        length: int | None,
    ) -> ChunkSink | ChunkResult:
        """Check a chunk before its bytes arrive; a ChunkResult when the file is already stored.

        `length` is the chunk's length when known (Content-Length), checked against `size` here;
        a sink also refuses bytes past `size` as they come.
        """
        if size < 0 or size > self.max_bytes:
            raise InvalidInput("size", f"must be between 0 and {self.max_bytes}", "out_of_range")
        final = self.final_path(job_id, attempt, name)
        key = (job_id, attempt, name)
        if final.exists():
            if self._stored(key, final) == (size, sha256):
                return ChunkResult(size, True)
            raise Conflict(f"output {name} was already stored with other content", "name")
        part = final.with_name(final.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if offset != have:
            raise Conflict(f"offset {offset} does not match the {have} bytes received", "offset")
        if length is not None and offset + length > size:
            raise InvalidInput("offset", "chunk runs past the declared size", "out_of_range")
        final.parent.mkdir(parents=True, exist_ok=True)
        digest, covered = self.partial.pop(key, (None, -1))
        if digest is None or covered != have:
            digest = _sha256_of(part) if have else hashlib.sha256()
        try:
            fh = open(part, "ab", buffering=0)  # noqa: SIM115 - the sink closes it
        except OSError as exc:
            raise StoreUnavailable(f"cannot write output {name}: {exc.strerror}") from exc
        return ChunkSink(self, key, part, final, fh, digest, have, size, sha256)

    def warm(self, job_id: str, attempt: int, name: str) -> None:
        """Hash what is already on disk for one file, so that `open_chunk` and `verify` need
        not: the stored file's checksum (after a restart, or for a retried PUT of a stored
        file) and a part file's running checksum (after a restart). Blocking: callers on an
        event loop run it in a worker thread, holding the file's upload lock."""
        final = self.final_path(job_id, attempt, name)
        key = (job_id, attempt, name)
        if final.exists():
            self._stored(key, final)
            return
        part = final.with_name(final.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have and self.partial.get(key, (None, -1))[1] != have:
            self.partial[key] = (_sha256_of(part), have)

    def stored(self, job_id: str, attempt: int, name: str) -> tuple[int, str]:
        """(size, sha256) of a stored file (blocking: it may hash the file)."""
        return self._stored((job_id, attempt, name), self.final_path(job_id, attempt, name))

    def _stored(self, key: tuple[str, int, str], final: Path) -> tuple[int, str]:
        """(size, sha256) of a stored file: as checked at upload or by `warm`, else hashed now."""
        known = self.verified.get(key)
        if known is None:
            known = (final.stat().st_size, file_sha256(final))
            self.verified[key] = known
        return known

    def verify(self, job_id: str, attempt: int, name: str, size: int, sha256: str) -> bool:
        final = self.final_path(job_id, attempt, name)
        key = (job_id, attempt, name)
        if key not in self.verified and not final.exists():
            return False
        return self._stored(key, final) == (size, sha256)

    def forget(self, job_id: str, attempt: int) -> None:
        """Drop the upload checks of an attempt once its job has completed (bounded memory)."""
        for key in [k for k in self.verified if k[0] == job_id and k[1] == attempt]:
            del self.verified[key]
        for key in [k for k in self.partial if k[0] == job_id and k[1] == attempt]:
            del self.partial[key]

    def drop_attempt(self, job_id: str, attempt: int) -> None:
        self.forget(job_id, attempt)
        shutil.rmtree(self.attempt_dir(job_id, attempt), ignore_errors=True)

    def drop_other_attempts(self, job_id: str, keep: int) -> None:
        """Remove what earlier attempts left (a crash between requeue and cleanup)."""
        job_dir = self.root / job_id
        if not job_dir.is_dir():
            return
        for attempt_dir in job_dir.iterdir():
            if attempt_dir.name != str(keep):
                shutil.rmtree(attempt_dir, ignore_errors=True)


class ChunkSink:
    """One chunk being received: bytes are appended and hashed as they come, in one pass.

    `write` does blocking file I/O and hashing (both release the GIL) so a caller may run it in a
    worker thread while it receives the next bytes; calls must not overlap. Then exactly one of
    `close` (the chunk is whole) or `abort` (the body broke off: what was written stays in the
    part file, and the next chunk resumes from the part file's size).
    """

    def __init__(
        self,
        files: OutputFiles,
        key: tuple[str, int, str],
        part: Path,
        final: Path,
        fh: Any,
        digest: Any,
        have: int,
        size: int,
        sha256: str,
    ) -> None:
        self.files = files
        self.key = key
        self.part = part
        self.final = final
        self.fh = fh
        self.digest = digest
        self.have = have
        self.size = size
        self.sha256 = sha256

    def write(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            if self.have + len(piece) > self.size:
                raise InvalidInput("offset", "chunk runs past the declared size", "out_of_range")
            view = memoryview(piece)
            try:
                while view:
                    view = view[self.fh.write(view) :]
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot write output {self.key[2]}: {exc.strerror}"
                ) from exc
            self.digest.update(piece)
            self.have += len(piece)

    def abort(self) -> None:
        """Keep what was written; remember the running checksum only if it covers the file."""
        self.fh.close()
        try:
            on_disk = self.part.stat().st_size
        except OSError:
            return
        if on_disk == self.have:
            self.files.partial[self.key] = (self.digest, self.have)

    def close(self) -> ChunkResult:
        name = self.key[2]
        complete = self.have >= self.size
        try:
            if complete:  # one fsync per file; the checksum below guards what was written
                os.fsync(self.fh.fileno())
        except OSError as exc:
            self.fh.close()
            raise StoreUnavailable(f"cannot write output {name}: {exc.strerror}") from exc
        self.fh.close()
        if not complete:
            self.files.partial[self.key] = (self.digest, self.have)
            return ChunkResult(self.have, False)
        if self.digest.hexdigest() != self.sha256:
            self.part.unlink(missing_ok=True)
            raise InvalidInput("sha256", f"checksum of {name} does not match; upload it again")
        try:
            os.replace(self.part, self.final)
        except OSError as exc:
            raise StoreUnavailable(f"cannot store output {name}: {exc.strerror}") from exc
        self.files.verified[self.key] = (self.size, self.sha256)
        return ChunkResult(self.size, True)


def file_sha256(path: Path) -> str:
    return str(_sha256_of(path).hexdigest())


def _sha256_of(path: Path) -> Any:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest
