"""The one base exception of the shared package, and the faults it raises."""

from __future__ import annotations


class SharedError(Exception):
    """Base of every exception raised by comfyfleet.shared."""


class IllegalTransition(SharedError):
    """A job was asked to make a move the transition table does not allow."""

    def __init__(self, status: str, event: str) -> None:
        super().__init__(f"illegal transition: {event} from {status}")
        self.status = status
        self.event = event


class InvalidInput(SharedError):
    """Input that breaks a rule; `field` names where (dotted path), `code` what kind."""

    def __init__(self, field: str | None, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code
