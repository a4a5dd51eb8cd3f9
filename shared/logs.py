"""structlog set-up: JSON lines when not on a terminal, readable key=value on one."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(
    level: str = "info",
    json: bool | None = None,
    *,
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """`stream` (default stderr) and `cache=False` let a test capture what a daemon logs."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=cache,
    )
