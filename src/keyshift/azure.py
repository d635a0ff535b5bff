"""Signing in to Microsoft Entra ID: the `entra` integration and azure-identity credentials.

Providers and targets that call Microsoft APIs (Graph, Key Vault) connect through an
`entra` integration: a tenant and the identity keyshift signs in as. This module
turns one into an `azure.identity.aio` credential; the API clients take it from there.
"""

from __future__ import annotations

import ssl
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration
from keyshift.domain.secret import Secret
from keyshift.errors import ConfigError
from keyshift.pacing import Budget, Rate
from keyshift.sources import SecretRef

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_GRAPH_URL = "https://graph.microsoft.com/v1.0"
GRAPH_WRITES_PER_SECOND = 20
"""Graph's documented identity write limit: 3,000 requests per 150 s per app and tenant."""
GRAPH_READS_PER_SECOND = 100
"""Reads keyshift allows itself by default: Graph's read limits are far higher; this
keeps a sync of a large tenant from crowding out a fleet's writes."""
AuthMethod = Literal["client_secret", "certificate", "workload_identity", "managed_identity"]
_NEEDS: dict[str, tuple[str, ...]] = {
    "client_secret": ("secret_from",),
    "certificate": ("certificate_from",),
    "workload_identity": (),
    "managed_identity": (),
}
_ALLOWED: dict[str, tuple[str, ...]] = {
    "client_secret": ("secret_from",),
    "certificate": ("certificate_from", "certificate_password_from"),
    "workload_identity": ("token_file",),
    "managed_identity": (),
}
_FIELDS = ("secret_from", "certificate_from", "certificate_password_from", "token_file")


class EntraAuth(BaseModel):
    """How keyshift signs in to Entra ID. Secrets are named by reference (`env:NAME`,
    `file:/path`, `credential:NAME`), never written here."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    method: AuthMethod = "client_secret"
    """`client_secret`, `certificate`, `workload_identity` (a federated token file, as on
    AKS) or `managed_identity` (the identity of the Azure host keyshift runs on;
    `client_id` is that identity's client id)."""
    secret_from: SecretRef | None = None
    """client_secret: where keyshift's client secret is read."""
    certificate_from: SecretRef | None = None
    """certificate: where the PEM (or PKCS12) certificate with its RSA private key is read."""
    certificate_password_from: SecretRef | None = None
    """certificate: where the private key's password is read, if it has one."""
    token_file: str | None = None
    """workload_identity: the federated token file; default `$AZURE_FEDERATED_TOKEN_FILE`."""

    @model_validator(mode="after")
    def _fields_of_method(self) -> EntraAuth:
        for name in _NEEDS[self.method]:
            if getattr(self, name) is None:
                raise ValueError(f"{name} is required when method is {self.method}")
        for name in _FIELDS:
            if getattr(self, name) is not None and name not in _ALLOWED[self.method]:
                raise ValueError(f"{name} does not apply when method is {self.method}")
        return self


class EntraIntegration(BaseModel):
    """A Microsoft Entra ID tenant and the identity keyshift signs in as, to call Microsoft
    Graph (Entra app secrets: the Graph application permission
    `Application.ReadWrite.OwnedBy`, owning the rotated applications, or
    `Application.ReadWrite.All`; with a `residual_use` policy also `AuditLog.Read.All`, to
    read the sign-in log; `Policy.Read.All`, optional, lets preflight read the app
    management policy) and Azure Key Vault (set and get secrets)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    tenant_id: str = Field(min_length=1)
    """The directory (tenant) id, a GUID, or a verified domain of the tenant."""
    client_id: str = Field(min_length=1)
    """The application (client) id keyshift signs in as."""
    auth: EntraAuth
    """How keyshift authenticates, e.g. `{method: client_secret, secret_from: env:NAME}` or
    `{method: certificate, certificate_from: file:/etc/keyshift/entra.pem}`."""
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
    rate_limit: float = Field(GRAPH_WRITES_PER_SECOND, gt=0, le=1000)
    """Graph writes per second (addPassword, removePassword, ...) that every rotation of
    a worker shares through this integration. Graph allows identity writes of 3,000
    requests per 150 s per app and tenant: 20/s. A 429 or 503 pauses them all for its
    Retry-After and halves the rate, which then creeps back."""
    burst: int = Field(GRAPH_WRITES_PER_SECOND, ge=1, le=10000)
    """Graph writes that may go at once before `rate_limit` paces them."""
    read_rate_limit: float = Field(GRAPH_READS_PER_SECOND, gt=0, le=10000)
    """Graph reads per second (sync, paging, application lookups), paced apart from writes."""
    read_burst: int = Field(GRAPH_READS_PER_SECOND, ge=1, le=10000)
    """Graph reads that may go at once before `read_rate_limit` paces them."""

    def budget(self, context: PluginContext) -> Budget:
        """This app's Graph write and read budgets in the context's pacer: one pair per
        tenant and client id, however many integrations or rotations use them."""
        return context.pacing.budget(
            f"graph:{self.tenant_id}:{self.client_id}",
            writes=Rate(self.rate_limit, self.burst),
            reads=Rate(self.read_rate_limit, self.read_burst),
        )

    @field_validator("authority", "graph_url")
    @classmethod
    def _https(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL")
        return url.rstrip("/")

    @property
    def identity(self) -> tuple[str, ...]:
        """Who keyshift signs in as through this integration: the key its tokens are
        kept under (`keyshift.tokens`), the same for integrations that share it."""
        return (self.authority, self.tenant_id, self.client_id, self.auth.model_dump_json())

    def ssl_verify(self) -> ssl.SSLContext | bool:
        """What httpx should verify servers with: the CA bundle, or the system store."""
        return ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else True

    def credential(
        self,
        context: PluginContext,
        *,
        client_id: str | None = None,
        secret: Secret | None = None,
        certificate: Secret | None = None,
    ) -> AsyncTokenCredential:
        """An async azure-identity credential: keyshift's own identity (by `auth.method`),
        or `client_id` signing in with `secret` (to prove a rotated secret works) or with
        `certificate`, a PEM private key and its certificate (a client assertion made
        with a rotated certificate's key)."""
        # azure-identity loads only here: validating an `entra` integration needs none of it.
        from azure.core.pipeline.transport import AsyncioRequestsTransport  # noqa: PLC0415
        from azure.identity.aio import (  # noqa: PLC0415
            CertificateCredential,
            ClientSecretCredential,
            ManagedIdentityCredential,
            WorkloadIdentityCredential,
        )

        common: dict[str, Any] = {
            "authority": self.authority,
            # Instance discovery asks the public cloud about the authority; a custom
            # authority (a proxy, a test double) is taken as configured.
            "disable_instance_discovery": self.authority != DEFAULT_AUTHORITY,
            # azure-identity's aio default transport needs aiohttp, which keyshift does
            # not depend on; the requests transport runs in a thread instead.
            "transport": AsyncioRequestsTransport(connection_verify=self.ca_bundle or True),
        }
        auth = self.auth
        if certificate is not None:
            return CertificateCredential(
                self.tenant_id,
                client_id or self.client_id,
                certificate_data=certificate.reveal().encode(),
                **common,
            )
        if secret is not None or auth.method == "client_secret":
            if secret is None:
                secret = context.secret("auth.secret_from", _ref(auth.secret_from))
            return ClientSecretCredential(
                self.tenant_id, client_id or self.client_id, secret.reveal(), **common
            )
        if auth.method == "certificate":
            pem = context.secret("auth.certificate_from", _ref(auth.certificate_from))
            password = (
                context.secret("auth.certificate_password_from", auth.certificate_password_from)
                if auth.certificate_password_from
                else None
            )
            return CertificateCredential(
                self.tenant_id,
                self.client_id,
                certificate_data=pem.reveal().encode(),
                password=password.reveal() if password is not None else None,
                **common,
            )
        if auth.method == "workload_identity":
            token_file = auth.token_file or context.env.get("AZURE_FEDERATED_TOKEN_FILE")
            if not token_file:
                raise ConfigError(
                    "auth.token_file", "is required (or set AZURE_FEDERATED_TOKEN_FILE)"
                )
            return WorkloadIdentityCredential(
                tenant_id=self.tenant_id,
                client_id=self.client_id,
                token_file_path=token_file,
                **common,
            )
        # Managed identity: azure-identity finds the host's endpoint in its environment
        # (IDENTITY_ENDPOINT on App Service and Container Apps, else the VM's IMDS).
        return ManagedIdentityCredential(client_id=self.client_id, transport=common["transport"])


def _ref(ref: str | None) -> str:
    if ref is None:  # the model validator guarantees it for the method
        raise ConfigError("auth", "a secret reference is missing")
    return ref
