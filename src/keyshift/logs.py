"""structlog set-up: JSON lines when not on a terminal, and `Secret` values always redacted."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

from keyshift.domain.secret import Secret
from keyshift.errors import REDACTED


def redact_secrets(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Second line of defence: a `Secret` passed to a log call prints as [REDACTED]."""
    for key, value in list(event_dict.items()):
        if isinstance(value, Secret):
            event_dict[key] = REDACTED
    return event_dict


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write, so a logger set up
    once keeps working when stderr is replaced (test runners, daemonisation)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str | None = None, *, json: bool | None = None) -> None:
    """Log to stderr at `level` (default `KEYSHIFT_LOG_LEVEL` or WARNING)."""
    name = (level or os.environ.get("KEYSHIFT_LOG_LEVEL") or "WARNING").upper()
    numeric = logging.getLevelNamesMapping().get(name, logging.WARNING)
    as_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
