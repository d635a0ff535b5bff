"""Providers: the systems that issue and revoke versions.

`PROVIDERS` maps a credential's `provider.type` to its class; `INTEGRATIONS` maps an
integration's `type` to the config model of that connection. A provider that
connects through an integration names its type in `integration_type`. Both are
`keyshift.registry.Registry`s: a class is imported when its type is first looked up,
and so are the classes and contract types this package re-exports, when first named.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from keyshift.registry import Registry, lazy_exports

if TYPE_CHECKING:
    from pydantic import BaseModel

    from keyshift.azure import EntraIntegration
    from keyshift.providers.acme import AcmeConfig, AcmeProvider
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
    from keyshift.providers.entra import (
        EntraCertificateConfig,
        EntraCertificateProvider,
        EntraSecretConfig,
        EntraSecretProvider,
    )
    from keyshift.providers.jwks_signing_key import (
        JwksSigningKeyConfig,
        JwksSigningKeyProvider,
    )
    from keyshift.providers.kms_key import KmsKeyConfig, KmsKeyProvider
    from keyshift.providers.postgres import PostgresIntegration, PostgresProvider
    from keyshift.providers.random import RandomProvider
    from keyshift.providers.redis import RedisIntegration, RedisProvider
    from keyshift.providers.trust_bundle import TrustBundleConfig, TrustBundleProvider
    from keyshift.providers.x509_ca import X509CaConfig, X509CaProvider


class ProviderKind(StrEnum):
    ACME = "acme"
    ENTRA_CERTIFICATE = "entra_certificate"
    ENTRA_CLIENT_SECRET = "entra_client_secret"  # noqa: S105 (a provider type name)
    JWKS_SIGNING_KEY = "jwks_signing_key"
    KMS_KEY = "kms_key"
    POSTGRES = "postgres"
    RANDOM = "random"
    REDIS = "redis"
    TRUST_BUNDLE = "trust_bundle"
    X509_CA = "x509_ca"


class IntegrationKind(StrEnum):
    AGENT = "agent"
    ENTRA = "entra"
    POSTGRES = "postgres"
    REDIS = "redis"


# Values are the classes; each has `kind`, `Config`, `capabilities` and takes (config, context).
# Each is imported (with its SDK: psycopg, redis, azure) the first time its type is used.
PROVIDERS: Registry[Any] = Registry(
    {
        ProviderKind.ACME: "keyshift.providers.acme:AcmeProvider",
        ProviderKind.ENTRA_CERTIFICATE: "keyshift.providers.entra:EntraCertificateProvider",
        ProviderKind.ENTRA_CLIENT_SECRET: "keyshift.providers.entra:EntraSecretProvider",
        ProviderKind.JWKS_SIGNING_KEY: (
            "keyshift.providers.jwks_signing_key:JwksSigningKeyProvider"
        ),
        ProviderKind.KMS_KEY: "keyshift.providers.kms_key:KmsKeyProvider",
        ProviderKind.POSTGRES: "keyshift.providers.postgres:PostgresProvider",
        ProviderKind.RANDOM: "keyshift.providers.random:RandomProvider",
        ProviderKind.REDIS: "keyshift.providers.redis:RedisProvider",
        ProviderKind.TRUST_BUNDLE: "keyshift.providers.trust_bundle:TrustBundleProvider",
        ProviderKind.X509_CA: "keyshift.providers.x509_ca:X509CaProvider",
    }
)

# Agents are reached by targets, not providers, but every integration type is registered
# here, in one map; the agent module imports nothing from providers.
INTEGRATIONS: Registry[type[BaseModel]] = Registry(
    {
        IntegrationKind.AGENT: "keyshift.targets.agent:AgentIntegration",
        IntegrationKind.ENTRA: "keyshift.azure:EntraIntegration",
        IntegrationKind.POSTGRES: "keyshift.providers.postgres:PostgresIntegration",
        IntegrationKind.REDIS: "keyshift.providers.redis:RedisIntegration",
    }
)

# The contract types too: `ProviderKind` alone (`keyshift status` reads it) loads neither
# them nor the estate models they name.
__getattr__ = lazy_exports(
    __name__,
    {
        **{
            name: f"keyshift.providers.base:{name}"
            for name in (
                "Capability",
                "CreateRequest",
                "IssuedVersion",
                "ListRequest",
                "Provider",
                "RevokeRequest",
                "RevokeResult",
                "VerifyRequest",
                "VerifyResult",
                "VersionInfo",
            )
        },
        "AcmeConfig": "keyshift.providers.acme:AcmeConfig",
        "AcmeProvider": "keyshift.providers.acme:AcmeProvider",
        "EntraCertificateConfig": "keyshift.providers.entra:EntraCertificateConfig",
        "EntraCertificateProvider": "keyshift.providers.entra:EntraCertificateProvider",
        "EntraIntegration": "keyshift.azure:EntraIntegration",
        "EntraSecretConfig": "keyshift.providers.entra:EntraSecretConfig",
        "EntraSecretProvider": "keyshift.providers.entra:EntraSecretProvider",
        "JwksSigningKeyConfig": "keyshift.providers.jwks_signing_key:JwksSigningKeyConfig",
        "JwksSigningKeyProvider": "keyshift.providers.jwks_signing_key:JwksSigningKeyProvider",
        "KmsKeyConfig": "keyshift.providers.kms_key:KmsKeyConfig",
        "KmsKeyProvider": "keyshift.providers.kms_key:KmsKeyProvider",
        "PostgresIntegration": "keyshift.providers.postgres:PostgresIntegration",
        "PostgresProvider": "keyshift.providers.postgres:PostgresProvider",
        "RandomProvider": "keyshift.providers.random:RandomProvider",
        "RedisIntegration": "keyshift.providers.redis:RedisIntegration",
        "RedisProvider": "keyshift.providers.redis:RedisProvider",
        "TrustBundleConfig": "keyshift.providers.trust_bundle:TrustBundleConfig",
        "TrustBundleProvider": "keyshift.providers.trust_bundle:TrustBundleProvider",
        "X509CaConfig": "keyshift.providers.x509_ca:X509CaConfig",
        "X509CaProvider": "keyshift.providers.x509_ca:X509CaProvider",
    },
)

__all__ = [
    "INTEGRATIONS",
    "PROVIDERS",
    "AcmeConfig",
    "AcmeProvider",
    "Capability",
    "CreateRequest",
    "EntraCertificateConfig",
    "EntraCertificateProvider",
    "EntraIntegration",
    "EntraSecretConfig",
    "EntraSecretProvider",
    "IntegrationKind",
    "IssuedVersion",
    "JwksSigningKeyConfig",
    "JwksSigningKeyProvider",
    "KmsKeyConfig",
    "KmsKeyProvider",
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
    "TrustBundleConfig",
    "TrustBundleProvider",
    "VerifyRequest",
    "VerifyResult",
    "VersionInfo",
    "X509CaConfig",
    "X509CaProvider",
]
