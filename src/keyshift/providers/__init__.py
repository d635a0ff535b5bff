"""Providers: the systems that issue and revoke versions. `PROVIDERS` maps a config `type`."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from keyshift.providers.base import (
    Capability,
    CreateRequest,
    IssuedVersion,
    ListRequest,
    Provider,
    RevokeRequest,
    RevokeResult,
    VerifyRequest,
    VerifyResult,
    VersionInfo,
)
from keyshift.providers.random import RandomProvider


class ProviderKind(StrEnum):
    RANDOM = "random"


# Values are the classes; each has `kind`, `Config`, `capabilities` and takes (config, context).
PROVIDERS: dict[ProviderKind, Any] = {
    ProviderKind.RANDOM: RandomProvider,
}

__all__ = [
    "PROVIDERS",
    "Capability",
    "CreateRequest",
    "IssuedVersion",
    "ListRequest",
    "Provider",
    "ProviderKind",
    "RandomProvider",
    "RevokeRequest",
    "RevokeResult",
    "VerifyRequest",
    "VerifyResult",
    "VersionInfo",
]
