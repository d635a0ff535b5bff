"""`capture_logs`: structlog events captured, and a failure if one holds a secret value."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final

import structlog.testing
from structlog.typing import EventDict

from keyshift.domain.secret import Secret

_MIN_CONTAINED: Final = 4
"""Secrets at least this long count as leaked when a longer text contains them (as `scrub`)."""


def holds(text: str, secret: str) -> bool:
    return text == secret or (len(secret) >= _MIN_CONTAINED and secret in text)


def _leak(obj: object, secrets: list[str], path: str, seen: set[int]) -> str | None:
    """The path of the first place in `obj` that holds a secret, or None."""
    if isinstance(obj, str | bytes):
        text = obj if isinstance(obj, str) else obj.decode(errors="replace")
        return path if any(holds(text, s) for s in secrets) else None
    if isinstance(obj, Secret) or id(obj) in seen:
        # A Secret object prints redacted; the logs' redact processor replaces it.
        return None
    seen.add(id(obj))
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            found = _leak(key, secrets, f"{path} key", seen) or _leak(
                value, secrets, f"{path}[{key!r}]", seen
            )
            if found:
                return found
        return None
    if isinstance(obj, list | tuple | set | frozenset):
        for i, item in enumerate(obj):
            found = _leak(item, secrets, f"{path}[{i}]", seen)
            if found:
                return found
        return None
    if isinstance(obj, BaseException):
        return _leak(str(obj), secrets, f"{path} (exception text)", seen)
    if obj is None or isinstance(obj, int | float | bool):
        return None
    return _leak(repr(obj), secrets, f"{path} (repr)", seen)


@contextmanager
def capture_logs(secrets: Iterable[str] = ()) -> Iterator[list[EventDict]]:
    """Capture structlog events (as `structlog.testing.capture_logs`) and raise
    AssertionError on exit if any event holds a registered secret value.

    A string holds a secret if it equals it or, for secrets of 4 characters or more,
    contains it. Nested dicts, lists and exception texts are searched. `secrets` is
    read on exit, so a list filled inside the block works. The failure names the
    event and key, never the value.
    """
    # capture_logs swaps the processors but keeps the configured wrapper class; a
    # level filter set earlier (the CLI configures WARNING) would hide debug and
    # info events from the capture, so every level is let through while it runs.
    previous = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with structlog.testing.capture_logs() as events:
        try:
            yield events
        finally:
            structlog.configure(wrapper_class=previous)
            known = [s for s in secrets if s]
            for i, event in enumerate(events):
                where = _leak(event, known, f"event {i}", set())
                if where:
                    raise AssertionError(f"a secret value was logged: {where}")
