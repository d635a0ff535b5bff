"""Where configuration points at a secret it must not hold inline: `env:NAME`,
`file:/path`, or `credential:NAME` (the current version of another keyshift credential).

Estate files never carry secret values; they name a source that is read when
the value is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from keyshift.domain.secret import Secret
from keyshift.errors import ConfigError

SCHEMES = ("env", "file", "credential")


def check_source(path: str, ref: str) -> None:
    """Refuse a reference that is not `env:NAME` or `file:/path` (at apply time)."""
    try:
        _valid_reference(ref)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None


def read_source(
    path: str,
    ref: str,
    env: Mapping[str, str],
    credential: Callable[[str], Secret] | None = None,
) -> Secret:
    """Read the secret a reference names. `path` is the config field, for the error.

    `credential` looks up a keyshift credential's current value; without it,
    `credential:` references are refused.
    """
    check_source(path, ref)
    scheme, _, rest = ref.partition(":")
    if scheme == "credential":
        if credential is None:
            raise ConfigError(path, "credential: references need the keyshift store")
        return credential(rest)
    if scheme == "env":
        if rest not in env:
            raise ConfigError(path, f"environment variable {rest} is not set")
        return Secret(env[rest])
    try:
        return Secret(Path(rest).read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ConfigError(path, f"cannot read {rest}: {exc.strerror}") from exc


def _valid_reference(ref: str) -> str:
    scheme, sep, rest = ref.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise ValueError(
            "must be env:NAME, file:/path or credential:NAME (secret values are never inline)"
        )
    return ref


SecretRef = Annotated[str, AfterValidator(_valid_reference)]
"""A pydantic field type for a reference to a secret (never the secret itself)."""
