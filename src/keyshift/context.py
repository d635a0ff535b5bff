"""What every plugin receives from the engine: a clock, a sleep, the environment, the
integrations it connects through, and a way to read secrets that configuration names.

Injecting these keeps plugins testable without wall time (a test passes a fake
clock and a sleep that records instead of waiting) and without a store.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from keyshift.domain.clock import utcnow
from keyshift.domain.secret import Secret
from keyshift.errors import ConfigError
from keyshift.pacing import Pacer
from keyshift.sources import read_source
from keyshift.tokens import Tokens

M = TypeVar("M")

SecretResolver = Callable[[str, str], Secret]
"""(field path, reference such as `env:NAME`, `file:/path`, `credential:NAME`) -> value."""


@dataclass(frozen=True)
class PluginContext:
    """Clock, sleep, environment, integrations and secret references for plugins."""

    now: Callable[[], datetime] = utcnow
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    integrations: Mapping[str, Any] = field(default_factory=dict)
    """Validated integration configs by name (the ones the plan uses)."""
    resolve_secret: SecretResolver | None = None
    """Reads `env:`, `file:` and `credential:` references; set by the engine."""
    agent_id: str | None = None
    """The host agent the action being built runs through (its `agent_id`), set per
    action by the engine; None for everything that runs where keyshift runs."""
    pacer: Pacer | None = None
    """The issuers' request budgets (`keyshift.pacing`), shared by every rotation that
    gets this context or one made from it; made on the context's clock when not given,
    so that its waits pass on `sleep` (a test's fake clock paces in fake time)."""
    tokens: Tokens = field(default_factory=Tokens)
    """keyshift's own access tokens (`keyshift.tokens`), shared like `pacer` by every
    rotation that gets this context or one made from it."""

    def __post_init__(self) -> None:
        if self.pacer is None:
            now = self.now
            object.__setattr__(self, "pacer", Pacer(clock=lambda: now().timestamp()))

    @property
    def pacing(self) -> Pacer:
        """The pacer (always set once the context is made)."""
        if self.pacer is None:  # pragma: no cover (set by __post_init__)
            raise AssertionError("a PluginContext without a pacer")
        return self.pacer

    def secret(self, path: str, ref: str) -> Secret:
        """The value a configuration reference names. `path` is the field, for errors."""
        if self.resolve_secret is None:
            # Without the engine's resolver only env: and file: can be read.
            return read_source(path, ref, self.env)
        return self.resolve_secret(path, ref)

    def integration(self, name: str, model: type[M]) -> M:
        """The integration `name`, which must be of the given config model."""
        found = self.integrations.get(name)
        if not isinstance(found, model):
            kind = "missing" if found is None else f"a {type(found).__name__}"
            raise ConfigError(
                "provider.integration", f"integration '{name}' is {kind}, not {model.__name__}"
            )
        return found
