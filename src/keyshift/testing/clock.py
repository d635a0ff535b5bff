"""`FakeClock`: a clock and a sleep for plugins that never wait."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from keyshift.context import PluginContext

FAKE_CLOCK_START: Final = datetime(2024, 1, 1, tzinfo=UTC)
"""Where a `FakeClock` starts unless told otherwise."""


class FakeClock:
    """A clock that moves only when told. `sleep` records the delay and moves the clock by
    it instead of waiting, so retries and backoff run instantly and stay observable."""

    def __init__(self, start: datetime = FAKE_CLOCK_START) -> None:
        if start.tzinfo is None:
            raise ValueError("a FakeClock starts at a timezone-aware datetime")
        self._now = start
        self.sleeps: list[float] = []
        """Every delay passed to `sleep`, in order."""

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += timedelta(seconds=seconds)
        # Yield to the loop as a real sleep would, so concurrent tasks still interleave.
        await asyncio.sleep(0)

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by `delta`; returns the new time."""
        if delta < timedelta(0):
            raise ValueError("a FakeClock does not go backwards")
        self._now += delta
        return self._now

    def context(self, env: Mapping[str, str] | None = None) -> PluginContext:
        """A plugin context on this clock, with `env` (empty by default, not os.environ)."""
        return PluginContext(now=self.now, sleep=self.sleep, env=dict(env or {}))
