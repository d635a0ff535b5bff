"""Where configuration points at a secret it must not hold inline: `env:NAME` or `file:/path`.

Estate files never carry secret values; they name a source that is read when
the value is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from keyshift.domain.secret import Secret
from keyshift.errors import ConfigError

SCHEMES = ("env", "file")


def check_source(path: str, ref: str) -> None:
    """Refuse a reference that is not `env:NAME` or `file:/path` (at apply time)."""
    scheme, sep, rest = ref.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise ConfigError(path, "must be env:NAME or file:/path (secret values are never inline)")


def read_source(path: str, ref: str, env: Mapping[str, str]) -> Secret:
    """Read the secret a reference names. `path` is the config field, for the error."""
    check_source(path, ref)
    scheme, _, rest = ref.partition(":")
    if scheme == "env":
        if rest not in env:
            raise ConfigError(path, f"environment variable {rest} is not set")
        return Secret(env[rest])
    try:
        return Secret(Path(rest).read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ConfigError(path, f"cannot read {rest}: {exc.strerror}") from exc
