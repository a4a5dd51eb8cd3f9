"""The client's exceptions: one base, and the API's `{"error": {code, message, field}}` as one."""

from __future__ import annotations


class ClientError(Exception):
    """Base of everything the client raises on purpose."""


class APIError(ClientError):
    """The coordinator answered with an error status."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"HTTP {status} {code}{where}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class UIFormatWorkflow(ClientError):
    """The file holds a ComfyUI UI-format workflow (nodes/links), not the API format."""

    def __init__(self) -> None:
        super().__init__(
            "this is a ComfyUI UI-format workflow (it has 'nodes' and 'links'); comfyfleet needs "
            "the API format: in ComfyUI enable Settings > Dev mode, then use "
            "'Save (API Format)' (newer versions: Workflow > Export (API))"
        )
