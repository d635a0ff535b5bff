"""The request nonces the agent accepted, so that no signed request is acted on twice.

A nonce is kept until its request's timestamp would no longer be accepted (timestamp +
the allowed clock skew); after that the timestamp check alone refuses a replay. With a
`nonce_file` the nonces survive a restart: each is appended and flushed to disk before
the request is acted on, and at start the live ones are read back and the file is
rewritten with only those. Without one they are kept in memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

NONCE: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
"""What a nonce looks like (keyshift sends 32 hex digits); anything else is refused."""
FILE_MODE: Final = 0o600


class NonceLog:
    """Accepted nonces, each with the Unix time until which it must not be accepted again."""

    def __init__(self, path: Path | None, *, now: float) -> None:
        self._path = path
        self._until: dict[str, float] = {}
        if path is not None:
            self._load(path, now)

    def seen(self, nonce: str, now: float) -> bool:
        """Whether `nonce` was accepted and its request could still be replayed."""
        self._until = {n: until for n, until in self._until.items() if until > now}
        return nonce in self._until

    def add(self, nonce: str, until: float) -> None:
        """Remember `nonce` until `until`, on disk first when there is a file."""
        if self._path is not None:
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
            try:
                os.write(fd, f"{until} {nonce}\n".encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
        self._until[nonce] = until

    def _load(self, path: Path, now: float) -> None:
        try:
            text = path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            until, _, nonce = line.partition(" ")
            try:
                expires = float(until)
            except ValueError:
                continue  # a line torn by a crash mid-write: its request was not acted on
            if expires > now and NONCE.fullmatch(nonce):
                self._until[nonce] = expires
        # Rewritten with the live ones only, so the file does not grow across restarts.
        fresh = path.with_name(path.name + ".tmp")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.write(fd, "".join(f"{t} {n}\n" for n, t in self._until.items()).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(fresh, path)
