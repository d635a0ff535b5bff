"""Durations written the way operators write them: `30d`, `12h`, `2m`, `30s`, `1500ms`, `0s`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse `1h30m`, `30d`, `0s`; a bare number is seconds. Raises ValueError on anything else."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError("must be a duration such as 30s, 10m, 12h or 30d")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("must not be negative")
        return timedelta(seconds=text)
    if not isinstance(text, str):
        raise ValueError("must be a duration such as 30s, 10m, 12h or 30d")
    compact = text.strip().replace(" ", "")
    if not compact or _PART.sub("", compact):
        raise ValueError(f"'{text}' is not a duration such as 30s, 10m, 12h or 30d")
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(compact))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling: `30d`, `90s`, `1h30m`, `0s`."""
    total = value.total_seconds()
    if total == 0:
        return "0s"
    if total != int(total):
        return f"{round(total * 1000)}ms"
    out, rest = [], int(total)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A pydantic field type that accepts `30d`-style text and serialises back to it."""
