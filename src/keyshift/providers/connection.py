"""Shared shape of an admin connection: an address without a password, plus where to read it.

The password of an admin connection is never written in the estate: it comes
from an environment variable, a file, or another keyshift credential.
"""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator

from keyshift.domain.durations import Duration
from keyshift.sources import SecretRef


class AdminConnection(BaseModel):
    """An admin connection: `dsn` names host, port, user and database; the password
    comes from `password_from`."""

    schemes: ClassVar[tuple[str, ...]] = ()

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    dsn: str
    """Connection URL without a password, e.g. `postgresql://keyshift_admin@db:5432/app`."""
    password_from: SecretRef
    """`env:NAME`, `file:/path` or `credential:NAME`; never the password itself."""
    connect_timeout: Duration = timedelta(seconds=10)
    """How long to wait for the server before the step fails (and is retried)."""

    @field_validator("dsn")
    @classmethod
    def _no_inline_password(cls, dsn: str) -> str:
        parts = urlsplit(dsn)
        if parts.scheme not in cls.schemes or not parts.hostname:
            example = f"{cls.schemes[0]}://user@host/..." if cls.schemes else "a URL"
            raise ValueError(f"must be a URL such as {example}")
        if parts.password is not None:
            raise ValueError("must not contain a password; use password_from")
        if not parts.username:
            raise ValueError("must name the admin user (scheme://user@host/...)")
        return dsn
