"""Access tokens kept for every rotation a process runs, per identity and scope.

A fleet runs each rotation in a thread of its own, each with its own event loop and so
its own azure-identity credential, whose in-memory cache dies with it: every rotation
signed keyshift in again, one token request (and a TLS handshake) more per rotation
than the work needs. `Tokens` keeps keyshift's own tokens across them, as one
credential would: a token is used until five minutes before it expires (azure-identity
refreshes at the same point), and forgotten at once when the API refuses it (401).
Never a token of a rotated credential: those sign in to prove the new value, and must.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

REFRESH_BEFORE_S = 300.0
"""A token is fetched again this long before its expiry."""


class Tokens:
    """Bearer tokens by key (identity and scope), shared by threads."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[Hashable, tuple[str, float]] = {}

    def get(self, key: Hashable) -> str | None:
        """The token held for `key`, unless it expires within `REFRESH_BEFORE_S`."""
        with self._lock:
            found = self._held.get(key)
            if found is None:
                return None
            token, expires_on = found
            if expires_on - REFRESH_BEFORE_S <= self._clock():
                del self._held[key]
                return None
            return token

    def put(self, key: Hashable, token: str, expires_on: float) -> None:
        """Keep `token` for `key` until `expires_on` (seconds since the epoch)."""
        with self._lock:
            self._held[key] = (token, expires_on)

    def forget(self, key: Hashable, token: str) -> None:
        """Drop `token` if it is still the one held for `key` (the API refused it)."""
        with self._lock:
            if self._held.get(key, ("", 0.0))[0] == token:
                del self._held[key]
