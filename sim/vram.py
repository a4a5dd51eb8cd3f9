"""Simulated VRAM: resident models (kept, evicted least-recently-used) plus working memory."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["OutOfVram", "Vram", "oom_message"]

MB = 1024 * 1024
OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\n"
    "TIPS: If the workflow worked before you might have accidentally set the batch_size to a "
    "large number."
)


class OutOfVram(Exception):
    """What torch.OutOfMemoryError is in the simulation."""

    def __init__(self, requested_mb: int, used_mb: int, total_mb: int) -> None:
        self.requested_mb = requested_mb
        self.used_mb = used_mb
        self.total_mb = total_mb
        super().__init__(oom_message(requested_mb, used_mb, total_mb))


def oom_message(requested_mb: int, used_mb: int, total_mb: int) -> str:
    gib = 1024.0
    free_bytes = max(0, total_mb - used_mb) * MB
    return (
        "Allocation on device 0 would exceed allowed memory. (out of memory)\n"
        f"Currently allocated     : {used_mb / gib:.2f} GiB\n"
        f"Requested               : {requested_mb / gib:.2f} GiB\n"
        f"Device limit            : {total_mb / gib:.2f} GiB\n"
        f"Free (according to CUDA): {free_bytes} bytes\n"
        "PyTorch limit (set by user-supplied memory fraction)\n"
        "                        : 17179869184.00 GiB"
    )


class Vram:
    def __init__(self, total_mb: int) -> None:
        self.total_mb = total_mb
        self._models: OrderedDict[str, int] = OrderedDict()  # least recently used first
        self._working: dict[str, int] = {}
        self.peak_mb = 0
        self.leaked_mb = 0  # the leak fault: held whatever POST /free says

    @property
    def used_mb(self) -> int:
        return sum(self._models.values()) + sum(self._working.values()) + self.leaked_mb

    @property
    def free_mb(self) -> int:
        return max(0, self.total_mb - self.used_mb)

    @property
    def loaded_models(self) -> list[str]:
        return list(self._models)

    def is_loaded(self, name: str) -> bool:
        return name in self._models

    def _make_room(self, needed_mb: int, keep: Iterable[str]) -> None:
        keep = set(keep)
        for name in list(self._models):
            if self.free_mb >= needed_mb:
                return
            if name not in keep:
                del self._models[name]
        if self.free_mb < needed_mb:
            raise OutOfVram(needed_mb, self.used_mb, self.total_mb)

    def _note_peak(self) -> None:
        self.peak_mb = max(self.peak_mb, self.used_mb)

    def load_model(self, name: str, size_mb: int, keep: Iterable[str] = ()) -> bool:
        """Make `name` resident; True when it had to be loaded (False: already there)."""
        if name in self._models:
            self._models.move_to_end(name)
            return False
        self._make_room(size_mb, [*keep, name])
        self._models[name] = size_mb
        self._note_peak()
        return True

    def allocate(self, tag: str, size_mb: int, keep: Iterable[str] = ()) -> None:
        """Working memory for a running node, freed with `release(tag)`."""
        self._make_room(size_mb, keep)
        self._working[tag] = self._working.get(tag, 0) + size_mb
        self._note_peak()

    def release(self, tag: str) -> None:
        self._working.pop(tag, None)

    def release_all_working(self) -> None:
        self._working.clear()

    def unload_all(self) -> None:
        self._models.clear()
