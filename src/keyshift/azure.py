"""Signing in to Microsoft Entra ID: the `entra` integration and azure-identity credentials.

Providers and targets that call Microsoft APIs (Graph, Key Vault) connect through an
`entra` integration: a tenant and the identity keyshift signs in as. This module
turns one into an `azure.identity.aio` credential; the API clients take it from there.
"""

from __future__ import annotations

import ssl
from datetime import timedelta
from urllib.parse import urlsplit

from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.identity.aio import ClientSecretCredential
from pydantic import BaseModel, ConfigDict, Field, field_validator

from keyshift.domain.context import PluginContext
from keyshift.domain.durations import Duration
from keyshift.domain.secret import Secret
from keyshift.sources import SecretRef

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
_NOT_YET = ("certificate", "managed_identity")


class EntraAuth(BaseModel):
    """How keyshift signs in to Entra ID."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    method: str = "client_secret"
    """`client_secret` (the only method available for now; `certificate` and
    `managed_identity` are not available yet)."""
    secret_from: SecretRef
    """Where keyshift's own client secret is read: `env:NAME`, `file:/path` or
    `credential:NAME`; never the secret itself."""

    @field_validator("method")
    @classmethod
    def _available(cls, method: str) -> str:
        if method in _NOT_YET:
            raise ValueError(
                f"auth method {method} is not available yet (certificate and "
                "managed_identity are planned); use client_secret"
            )
        if method != "client_secret":
            raise ValueError(f"unknown auth method {method!r}; use client_secret")
        return method


class EntraIntegration(BaseModel):
    """A Microsoft Entra ID tenant and the identity keyshift signs in as, to call Microsoft
    Graph (Entra app secrets: the Graph application permission
    `Application.ReadWrite.OwnedBy`, owning the rotated applications, or
    `Application.ReadWrite.All`) and Azure Key Vault (set and get secrets)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    tenant_id: str = Field(min_length=1)
    """The directory (tenant) id, a GUID, or a verified domain of the tenant."""
    client_id: str = Field(min_length=1)
    """The application (client) id keyshift signs in as."""
    auth: EntraAuth
    """How keyshift authenticates: `{method: client_secret, secret_from: env:NAME}`."""
    authority: str = DEFAULT_AUTHORITY
    """The Entra ID login host; national clouds have their own, e.g.
    `https://login.microsoftonline.us`."""
    graph_url: str = DEFAULT_GRAPH_URL
    """The Microsoft Graph v1.0 endpoint; national clouds have their own."""
    ca_bundle: str | None = None
    """Path to a PEM file of CA certificates to trust instead of the system store (a TLS
    intercepting proxy, or a test double)."""
    sync_every: Duration = timedelta(hours=1)
    """How often `keyshift worker` re-reads the tenant's app registrations (`entra sync`)."""

    @field_validator("authority", "graph_url")
    @classmethod
    def _https(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL")
        return url.rstrip("/")

    def ssl_verify(self) -> ssl.SSLContext | bool:
        """What httpx should verify servers with: the CA bundle, or the system store."""
        return ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True

    def credential(
        self, context: PluginContext, *, client_id: str | None = None, secret: Secret | None = None
    ) -> ClientSecretCredential:
        """An async azure-identity credential: keyshift's own identity by default, or
        `client_id` signing in with `secret` (to prove a rotated secret works)."""
        if secret is None:
            secret = context.secret("auth.secret_from", self.auth.secret_from)
        return ClientSecretCredential(
            self.tenant_id,
            client_id or self.client_id,
            secret.reveal(),
            authority=self.authority,
            # Instance discovery asks the public cloud about the authority; a custom
            # authority (a proxy, a test double) is taken as configured.
            disable_instance_discovery=self.authority != DEFAULT_AUTHORITY,
            # azure-identity's aio default transport needs aiohttp, which keyshift does
            # not depend on; the requests transport runs in a thread instead.
            transport=AsyncioRequestsTransport(connection_verify=self.ca_bundle or True),
        )
