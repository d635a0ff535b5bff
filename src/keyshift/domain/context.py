"""What every plugin receives from the engine: a clock, a sleep and the environment.

Injecting these keeps plugins testable without wall time (a test passes a fake
clock and a sleep that records instead of waiting).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PluginContext:
    """Clock, sleep and environment shared by providers, targets and checks."""

    now: Callable[[], datetime] = utcnow
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
