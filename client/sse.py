"""A Server-Sent Events parser: lines in, events out (pure, incremental; WHATWG rules)."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from comfyfleet.client.models import StreamEvent


@dataclass(slots=True)
class SSEParser:
    """Feed it decoded lines (without their line ending); it returns complete events."""

    last_id: int | None = None
    _kind: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    retry_ms: int | None = None

    def feed(self, line: str) -> StreamEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._kind = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> StreamEvent | None:
        if self._id is not None:
            try:
                self.last_id = int(self._id)
            except ValueError:
                pass
            self._id = None
        if not self._data:
            self._kind = ""
            return None
        raw = "\n".join(self._data)
        kind = self._kind or "message"
        self._data, self._kind = [], ""
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            data = {"text": raw}
        if not isinstance(data, dict):
            data = {"value": data}
        return StreamEvent(id=self.last_id, kind=kind, data=data)
