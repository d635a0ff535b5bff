"""Providers: the systems that issue and revoke versions.

`PROVIDERS` maps a credential's `provider.type` to its class; `INTEGRATIONS` maps an
integration's `type` to the config model of that connection. A provider that
connects through an integration names its type in `integration_type`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from keyshift.azure import EntraIntegration
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
from keyshift.providers.entra import EntraSecretConfig, EntraSecretProvider
from keyshift.providers.postgres import PostgresIntegration, PostgresProvider
from keyshift.providers.random import RandomProvider
from keyshift.providers.redis import RedisIntegration, RedisProvider

# Agents are reached by targets, not providers, but every integration type is registered
# here, in one map; the agent module imports nothing from providers.
from keyshift.targets.agent import AgentIntegration


class ProviderKind(StrEnum):
    ENTRA_CLIENT_SECRET = "entra_client_secret"  # noqa: S105 (a provider type name)
    POSTGRES = "postgres"
    RANDOM = "random"
    REDIS = "redis"


class IntegrationKind(StrEnum):
    AGENT = "agent"
    ENTRA = "entra"
    POSTGRES = "postgres"
    REDIS = "redis"


# Values are the classes; each has `kind`, `Config`, `capabilities` and takes (config, context).
PROVIDERS: dict[ProviderKind, Any] = {
    ProviderKind.ENTRA_CLIENT_SECRET: EntraSecretProvider,
    ProviderKind.POSTGRES: PostgresProvider,
    ProviderKind.RANDOM: RandomProvider,
    ProviderKind.REDIS: RedisProvider,
}

INTEGRATIONS: dict[IntegrationKind, type[BaseModel]] = {
    IntegrationKind.AGENT: AgentIntegration,
    IntegrationKind.ENTRA: EntraIntegration,
    IntegrationKind.POSTGRES: PostgresIntegration,
    IntegrationKind.REDIS: RedisIntegration,
}

__all__ = [
    "INTEGRATIONS",
    "PROVIDERS",
    "Capability",
    "CreateRequest",
    "EntraIntegration",
    "EntraSecretConfig",
    "EntraSecretProvider",
    "IntegrationKind",
    "IssuedVersion",
    "ListRequest",
    "PostgresIntegration",
    "PostgresProvider",
    "Provider",
    "ProviderKind",
    "RandomProvider",
    "RedisIntegration",
    "RedisProvider",
    "RevokeRequest",
    "RevokeResult",
    "VerifyRequest",
    "VerifyResult",
    "VersionInfo",
]
