"""Importing an existing value (`keyshift import NAME`, `POST /v1/credentials/{name}/import`):
a credential that keyshift holds no value of yet takes the value its issuer and
consumers use now, as its current version with `imported` provenance, without a
rotation and without touching the issuer or a consumer (`keyshift.engine.imports`).

The value comes on stdin, from a reference (`env:`, `file:`, `credential:`) or in the
API's request body; it is never a command-line argument, and no output, log, audit
entry or error shows it."""

from __future__ import annotations

from datetime import datetime

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.engine.engine import Engine
from keyshift.engine.imports import Imported
from keyshift.store.store import Store

__all__ = ["Imported", "import_value", "read_reference"]


async def import_value(
    store: Store,
    credential: str,
    value: Secret,
    *,
    actor: str,
    username: str | None = None,
    kid: str | None = None,
    expires_at: datetime | None = None,
    context: PluginContext | None = None,
) -> Imported:
    """Prove `value` with the credential's provider, then store it as its current
    version (`Engine.import_current` says when it is refused)."""
    engine = Engine(store, actor=actor, context=context)
    return await engine.import_current(
        credential, value, username=username, kid=kid, expires_at=expires_at
    )


def read_reference(store: Store, ref: str, *, actor: str, path: str = "--from") -> Secret:
    """The value a reference names: `env:NAME`, `file:/path` or `credential:NAME` (another
    credential's current value, from this store). ConfigError naming `path` otherwise."""
    return Engine(store, actor=actor).context_for({}).secret(path, ref)
