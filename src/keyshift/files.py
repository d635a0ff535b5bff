"""Reading an input file an operator names (an estate file, agent.yaml, an evidence bundle): a
missing, unreadable, oversized or non-UTF-8 file is a ConfigError naming the file and
what is wrong with it (the byte offset and line of a bad byte), never an internal error."""

from __future__ import annotations

import os
from pathlib import Path

from keyshift.errors import ConfigError

MAX_BYTES_ENV = "KEYSHIFT_MAX_INPUT_BYTES"
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
"""The largest input file read (8 MiB: an estate of tens of thousands of credentials);
KEYSHIFT_MAX_INPUT_BYTES raises or lowers it."""


def max_bytes() -> int:
    configured = os.environ.get(MAX_BYTES_ENV)
    if not configured:
        return DEFAULT_MAX_BYTES
    try:
        limit = int(configured)
    except ValueError:
        raise ConfigError(MAX_BYTES_ENV, "must be a number of bytes") from None
    if limit < 1:
        raise ConfigError(MAX_BYTES_ENV, "must be at least 1")
    return limit


def read_text(path: Path) -> str:
    """The UTF-8 text of `path`, refused before it is read when larger than `max_bytes`."""
    limit = max_bytes()
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ConfigError(str(path), "is a directory, not a file")
        if size > limit:
            raise ConfigError(
                str(path),
                f"is {size:,} bytes, over the {limit:,}-byte limit for an input file "
                f"(set {MAX_BYTES_ENV} to raise it)",
            )
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            str(path),
            f"is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} (line {line})",
        ) from None
