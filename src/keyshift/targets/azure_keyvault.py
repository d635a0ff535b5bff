"""`azure_keyvault`: write the value as a new version of an Azure Key Vault secret, or
import a certificate version as a new version of a Key Vault certificate.

keyshift signs in through an `entra` integration and talks to the vault with the
`azure-keyvault-secrets` SDK. Each version it writes carries tags naming the
rotation, the keyshift version id and its fingerprint (never the value), which is
how a repeated publish finds its own earlier write and does nothing.

The identity needs the secrets `get` and `set` permissions (access policy), or a
role with `getSecret` and `setSecret` actions such as "Key Vault Secrets Officer"
(RBAC). Key Vault has no way to test `set` without writing, so preflight proves
`get` and `set` is proven by the first publish.

Rollback never deletes: it writes the previous value as a new version, or, when the
credential had no previous version, disables the version publish wrote.

With `object: certificate` (certificate credentials only: `x509_ca`, `acme`,
`entra_certificate`), publish imports the version's private key, certificate and chain
through `azure-keyvault-certificates` (`import_certificate`, as PKCS#12 under a one-time
password or as PEM), then reads the certificate back and compares Key Vault's SHA-1
thumbprint with the version's certificate. The identity needs the certificates `get`,
`import` and `update` permissions ("Key Vault Certificates Officer"). Key Vault versions
are immutable, so rollback imports the previous certificate again: a new current version
holding the old certificate. Without a previous version it disables the imported one.

The SDK's own retries are turned off (they would sleep on the wall clock); throttling
(429), server errors and network failures surface as `TransientError`, with the
vault's `Retry-After`, and the engine retries on its clock.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar
from urllib.parse import urlsplit

import structlog
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.keyvault.certificates import (
    CertificateContentType,
    CertificatePolicy,
    KeyVaultCertificate,
)
from azure.keyvault.certificates.aio import CertificateClient
from azure.keyvault.secrets import KeyVaultSecret
from azure.keyvault.secrets.aio import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.durations import Duration
from keyshift.domain.location import url_origin
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import ConfigError, PermanentError, TransientError
from keyshift.targets import base
from keyshift.targets.base import (
    BaseTarget,
    Delivery,
    PreflightResult,
    Readiness,
    StepResult,
    positive,
)
from keyshift.targets.web import retry_after

TAG_ROTATION: Final = "keyshift-rotation"
TAG_VERSION: Final = "keyshift-version"
TAG_FINGERPRINT: Final = "keyshift-fingerprint"
TAG_RESTORED: Final = "keyshift-restored-version"
"""On a version written by rollback: the keyshift version id it restores."""
TAG_ROLLED_BACK: Final = "keyshift-rolled-back-version"
"""On a version written by rollback: the keyshift version id it replaces."""
TAG_PREFIX: Final = "keyshift-"
MAX_TAGS: Final = 15
"""Key Vault's limit of tags per secret version."""
OWN_TAGS: Final = 5
"""The most tags keyshift itself sets on a version (a rollback's)."""
UNCHANGED: Final = "unchanged"
CERTIFICATE_PROVIDERS: Final = frozenset({"x509_ca", "acme", "entra_certificate"})
"""The provider types whose versions carry a certificate (`object: certificate`)."""
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")

log = structlog.get_logger("keyshift.targets.azure_keyvault")


class AzureKeyVaultConfig(BaseModel):
    """Which vault and secret (or certificate) receive each version, and how each version
    is labelled."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    integration: str = Field(min_length=1)
    """The `entra` integration keyshift signs in through; may be left out when the estate
    declares exactly one. Its identity needs the secrets `get` and `set` permissions on the
    vault (with `object: certificate`: the certificates `get`, `import` and `update`)."""
    vault_url: str
    """The vault's https:// URL, e.g. `https://payments-kv.vault.azure.net`."""
    object: Literal["secret", "certificate"] = "secret"
    """What each version becomes in the vault: a version of a `secret` (the value), or,
    for a certificate credential (x509_ca, acme, entra_certificate), a version of a
    `certificate` imported with its private key and chain."""
    secret_name: str | None = None
    """With `object: secret`: the secret to write: 1-127 letters, digits and `-` (Key
    Vault's naming rule). Created by the first publish if it does not exist."""
    certificate_name: str | None = None
    """With `object: certificate`: the certificate to import into (same naming rule).
    Created by the first publish if it does not exist."""
    certificate_format: Literal["pkcs12", "pem"] = "pkcs12"
    """With `object: certificate`: how the key, certificate and chain are imported, and
    so the content type of the certificate's secret that consumers download: `pkcs12`
    (application/x-pkcs12) or `pem` (application/x-pem-file)."""
    exportable: bool = True
    """With `object: certificate`: whether the private key may be downloaded (through
    the certificate's secret), as App Service and most consumers need."""
    content_type: str | None = Field(default=None, max_length=255)
    """With `object: secret`: the content type recorded on each version, e.g.
    `text/plain` or `password`."""
    expires_after: Duration | None = None
    """With `object: secret`: when set, each version written expires this long after it
    is written (Key Vault's `exp` attribute), e.g. `90d`. A certificate expires with its
    `not_after`."""
    tags: dict[str, str] = {}
    """Extra, non-secret tags on each version (at most 10; names starting with
    `keyshift-` are reserved)."""
    timeout: Duration = timedelta(seconds=30)
    """How long one request to the vault may take before the step is retried."""
    verify_challenge_resource: bool = True
    """Check that the vault's authentication challenge names a resource of the vault's
    own domain (the SDK's protection against sending tokens to a look-alike host). Turn
    off only for a vault reached through another host name (a private proxy, a test
    double)."""

    @field_validator("vault_url")
    @classmethod
    def _https(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(
                "must be the vault's URL without a path, e.g. https://x.vault.azure.net"
            )
        if parts.username or parts.password:
            raise ValueError("must not carry credentials")
        return url.rstrip("/")

    @field_validator("secret_name", "certificate_name")
    @classmethod
    def _key_vault_name(cls, name: str | None) -> str | None:
        if name is not None and not _NAME.match(name):
            raise ValueError("must be 1-127 characters of letters, digits and '-'")
        return name

    @model_validator(mode="after")
    def _one_object(self) -> AzureKeyVaultConfig:
        if self.object == "secret":
            if self.secret_name is None:
                raise ValueError("secret_name is required (the secret to write)")
            if self.certificate_name is not None:
                raise ValueError("certificate_name is for object: certificate; use secret_name")
            return self
        if self.certificate_name is None:
            raise ValueError("certificate_name is required with object: certificate")
        for name, given in (
            ("secret_name", self.secret_name),
            ("content_type", self.content_type),
            ("expires_after", self.expires_after),
        ):
            if given is not None:
                raise ValueError(
                    f"{name} is for object: secret; a certificate's content type follows "
                    "certificate_format and it expires with its not_after"
                )
        return self

    @property
    def name(self) -> str:
        """The secret's or the certificate's name."""
        return self.certificate_name or self.secret_name or ""

    @field_validator("expires_after", "timeout")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        return value if value is None else positive(value)

    @field_validator("tags")
    @classmethod
    def _own_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > MAX_TAGS - OWN_TAGS:
            raise ValueError(f"at most {MAX_TAGS - OWN_TAGS} tags (Key Vault allows {MAX_TAGS})")
        for name, value in tags.items():
            if name.lower().startswith(TAG_PREFIX):
                raise ValueError(f"tag {name} is reserved: names starting with keyshift- are")
            if not name or len(name) > 512 or len(value) > 256:
                raise ValueError(f"tag {name!r}: names take 1-512 characters, values up to 256")
        return tags


@dataclass(frozen=True)
class _Latest:
    """The latest version of the secret as far as this target needs it: no value."""

    version: str
    tags: dict[str, str]
    thumbprint: str = ""
    """For a certificate: Key Vault's SHA-1 thumbprint of it (hex)."""


class _Disabled:
    """The latest version exists but is disabled, so Key Vault will not show it."""


DISABLED: Final = _Disabled()


class AzureKeyVaultTarget(BaseTarget[AzureKeyVaultConfig]):
    """Publishes each version as a new version of one Key Vault secret."""

    kind: ClassVar[str] = "azure_keyvault"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = AzureKeyVaultConfig
    integration_type: ClassVar[str] = "entra"

    @classmethod
    def describe(cls, config: AzureKeyVaultConfig) -> dict[str, str]:
        """Where it writes: the vault and the secret's name, and the identity it uses."""
        return {
            "vault": url_origin(config.vault_url),
            config.object: config.name,
            "integration": config.integration,
        }

    @classmethod
    def serves_for(cls, config: dict[str, Any]) -> tuple[str, frozenset[str], str] | None:
        """The provider types this config works for, when it narrows them: `object:
        certificate` needs versions that carry a certificate. Returns the field that
        narrows, the provider types and why; None when any credential will do."""
        if config.get("object") != "certificate":
            return None
        return (
            "config.object",
            CERTIFICATE_PROVIDERS,
            "only their versions carry a certificate and its private key to import",
        )

    def __init__(self, config: AzureKeyVaultConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._where = f"Key Vault {config.vault_url} {config.object} {config.name}"

    # --- the contract --------------------------------------------------------------------

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Sign in and read the secret. Changes nothing.

        Ready when the identity can get the secret, or the secret does not exist yet
        (publish creates it). Key Vault offers no way to test `set` without writing a
        version, so `set` is proven at publish time.
        """
        permission = "certificates import" if self._certificate else "secrets set"
        not_proven = (
            f"{permission} is proven at publish time (Key Vault cannot test it without writing)"
        )
        try:
            latest = await (self._latest_certificate() if self._certificate else self._latest())
        except (PermanentError, TransientError) as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if latest is None:
            return PreflightResult(
                Readiness.READY,
                f"{self._where} does not exist yet; publish creates it; {not_proven}",
            )
        got = "certificates get" if self._certificate else "secrets get"
        return PreflightResult(Readiness.READY, f"{got} works; {not_proven}")

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Write the value as a new version tagged with its rotation, version id and
        fingerprint.

        Idempotent: when the latest version already carries this fingerprint, nothing is
        written (a crash after the write and before the journal lands here).
        """
        delivery = request.delivery
        if self._certificate:
            return await self._publish_certificate(delivery)
        latest = await self._latest()
        if isinstance(latest, _Latest) and latest.tags.get(TAG_FINGERPRINT) == delivery.fingerprint:
            log.info("key vault already holds this version", **self._ids(latest.version))
            return self._result(UNCHANGED, current_version=latest.version)
        written = await self._write(delivery, self._tags(delivery, delivery.rotation_id))
        log.info("key vault version written", **self._ids(written))
        return self._result(written)

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Undo publish without deleting anything.

        With a previous version: when the latest version is the failed one, write the
        previous value as a new version tagged as its restore. Without one: disable the
        failed version. Idempotent: a latest version that is already the restore, or
        already disabled, is left alone, as is a version someone else wrote since.
        """
        failed, previous = request.failed, request.previous
        if self._certificate:
            return await self._rollback_certificate(failed, previous)
        latest = await self._latest()
        if latest is None:
            return self._result(UNCHANGED, action="none", reason="the secret does not exist")
        if isinstance(latest, _Disabled):
            # Either an earlier rollback disabled the failed version, or someone else
            # disabled it; neither is keyshift's to undo.
            return self._result(UNCHANGED, action="none", reason="the latest version is disabled")
        fingerprint = latest.tags.get(TAG_FINGERPRINT)
        if previous is not None and fingerprint == previous.fingerprint:
            return self._result(
                UNCHANGED, action="none", reason="the previous version is already the latest"
            )
        if fingerprint != failed.fingerprint:
            log.warning("key vault latest version is not keyshift's; left alone", **self._ids())
            return self._result(
                UNCHANGED,
                action="none",
                reason="the latest version was not written by this rotation",
            )
        if previous is None:
            await self._disable(latest.version)
            log.info("key vault failed version disabled", **self._ids(latest.version))
            return self._result(latest.version, action="disabled")
        tags = self._tags(previous, failed.rotation_id)
        tags[TAG_RESTORED] = previous.version_id
        tags[TAG_ROLLED_BACK] = failed.version_id
        written = await self._write(previous, tags)
        log.info("key vault previous value restored", **self._ids(written))
        return self._result(written, action="restored", replaced_version=latest.version)

    # --- certificates --------------------------------------------------------------------

    @property
    def _certificate(self) -> bool:
        return self.config.object == "certificate"

    async def _publish_certificate(self, delivery: Delivery) -> StepResult:
        """Import the version's key, certificate and chain as a new version of the Key
        Vault certificate, then read it back and compare thumbprints.

        Idempotent: when the latest enabled version already holds this certificate (same
        SHA-1 thumbprint), nothing is imported."""
        wanted = _sha1(delivery)
        latest = await self._latest_certificate()
        if isinstance(latest, _Latest) and latest.thumbprint == wanted:
            log.info("key vault already holds this certificate", **self._ids(latest.version))
            return self._result(UNCHANGED, current_version=latest.version, x509_thumbprint=wanted)
        written = await self._import(delivery, self._tags(delivery, delivery.rotation_id))
        log.info("key vault certificate imported", **self._ids(written))
        return self._result(written, x509_thumbprint=wanted)

    async def _rollback_certificate(
        self, failed: Delivery, previous: Delivery | None
    ) -> StepResult:
        """Undo a certificate import without deleting: import the previous certificate
        again (a new current version holding the old certificate), or, without a previous
        version, disable the imported one. A latest version that is already the previous
        certificate, already disabled, or not the failed certificate is left alone."""
        latest = await self._latest_certificate()
        if latest is None:
            return self._result(UNCHANGED, action="none", reason="the certificate does not exist")
        if isinstance(latest, _Disabled):
            return self._result(UNCHANGED, action="none", reason="the latest version is disabled")
        thumbprint = latest.thumbprint
        if previous is not None and thumbprint == _sha1(previous):
            return self._result(
                UNCHANGED, action="none", reason="the previous certificate is already the latest"
            )
        if thumbprint != _sha1(failed):
            log.warning("key vault latest certificate is not keyshift's; left alone", **self._ids())
            return self._result(
                UNCHANGED,
                action="none",
                reason="the latest version does not hold the certificate this rotation imported",
            )
        if previous is None:
            await self._disable_certificate(latest.version)
            log.info("key vault imported certificate disabled", **self._ids(latest.version))
            return self._result(latest.version, action="disabled")
        tags = self._tags(previous, failed.rotation_id)
        tags[TAG_RESTORED] = previous.version_id
        tags[TAG_ROLLED_BACK] = failed.version_id
        written = await self._import(previous, tags)
        log.info("key vault previous certificate imported again", **self._ids(written))
        return self._result(written, action="restored", replaced_version=latest.version)

    async def _latest_certificate(self) -> _Latest | _Disabled | None:
        """The latest version's id, tags and SHA-1 thumbprint; None when the certificate
        does not exist."""
        async with self._certificate_client() as client:
            with self._translate("get"):
                try:
                    found: KeyVaultCertificate = await client.get_certificate(self.config.name)
                except ResourceNotFoundError:
                    return None
        return _certificate_latest(found)

    async def _import(self, delivery: Delivery, tags: dict[str, str]) -> str:
        """Import one version; read it back and check Key Vault holds its certificate."""
        from keyshift.targets.certificate import parts_of, pkcs12_bundle  # noqa: PLC0415

        wanted = _sha1(delivery)
        password: str | None = None
        if self.config.certificate_format == "pem":
            parts = parts_of(delivery)
            data = "\n".join(
                p.strip() for p in (parts.private_key, parts.certificate, parts.chain) if p.strip()
            ).encode()
            content_type = CertificateContentType.pem
        else:
            # A one-time password: the bundle only travels to the vault, which keeps the key.
            password = secrets.token_urlsafe(24)
            data = pkcs12_bundle(delivery, Secret(password))
            content_type = CertificateContentType.pkcs12
        policy = CertificatePolicy(
            issuer_name="Unknown",
            content_type=content_type,
            exportable=self.config.exportable,
            # The SDK leaves key properties out unless one is truthy: the key type carries
            # `exportable: false` along.
            key_type=_key_type(delivery),
        )
        async with self._certificate_client() as client:
            with self._translate("import"):
                imported = await client.import_certificate(
                    self.config.name, data, password=password, policy=policy, tags=tags
                )
            version = (imported.properties.version if imported.properties else None) or ""
            with self._translate("get"):
                read = await client.get_certificate_version(self.config.name, version)
        held = _certificate_latest(read)
        got = held.thumbprint if isinstance(held, _Latest) else ""
        if got != wanted:
            raise PermanentError(
                f"{self._where}: version {version} reads back with thumbprint {got or 'none'}, "
                f"not the imported certificate's {wanted}"
            )
        return version

    async def _disable_certificate(self, version: str) -> None:
        async with self._certificate_client() as client:
            with self._translate("update"):
                await client.update_certificate_properties(self.config.name, version, enabled=False)

    # --- Key Vault calls -----------------------------------------------------------------

    async def _latest(self) -> _Latest | _Disabled | None:
        """The latest version's id and tags; None when the secret does not exist."""
        async with self._client() as client:
            with self._translate("get"):
                try:
                    secret: KeyVaultSecret = await client.get_secret(self.config.name)
                except ResourceNotFoundError:
                    return None
                except HttpResponseError as exc:
                    if exc.status_code == 403 and _codes(exc)[1] == "SecretDisabled":
                        return DISABLED
                    raise
        return _Latest(
            version=secret.properties.version or "", tags=dict(secret.properties.tags or {})
        )

    async def _write(self, delivery: Delivery, tags: dict[str, str]) -> str:
        expires = (
            self.context.now() + self.config.expires_after if self.config.expires_after else None
        )
        async with self._client() as client:
            with self._translate("set"):
                written = await client.set_secret(
                    self.config.name,
                    delivery.value.reveal(),
                    content_type=self.config.content_type,
                    tags=tags,
                    expires_on=expires,
                )
        return written.properties.version or ""

    async def _disable(self, version: str) -> None:
        async with self._client() as client:
            with self._translate("set"):
                await client.update_secret_properties(self.config.name, version, enabled=False)

    def _client(self) -> _ClientScope[SecretClient]:
        """A SecretClient signed in as the integration's identity, for one operation."""
        return self._scope(SecretClient)

    def _certificate_client(self) -> _ClientScope[CertificateClient]:
        """A CertificateClient signed in as the integration's identity, for one operation."""
        return self._scope(CertificateClient)

    def _scope(self, client_class: type[_C]) -> _ClientScope[_C]:
        try:
            integration = self.context.integration(self.config.integration, EntraIntegration)
            credential = integration.credential(self.context)
        except ConfigError as exc:
            raise PermanentError(f"{self._where}: {exc}") from None
        seconds = self.config.timeout.total_seconds()
        client = client_class(
            self.config.vault_url,
            credential,
            # The aio SDK's default transport needs aiohttp, which keyshift does not use.
            transport=AsyncioRequestsTransport(
                connection_verify=integration.ca_bundle or True,
                connection_timeout=seconds,
                read_timeout=seconds,
            ),
            # Its retries would sleep on the wall clock; the engine retries on the
            # context's clock instead.
            retry_total=0,
            verify_challenge_resource=self.config.verify_challenge_resource,
        )
        return _ClientScope(client, credential)

    @contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        """Turn SDK and network errors into TransientError or PermanentError naming the
        vault, the secret and Key Vault's error code; never a value or a token."""
        where = self._where
        try:
            yield
        except ClientAuthenticationError as exc:
            request = getattr(exc.response, "request", None)
            if not str(getattr(request, "url", "")).startswith(self.config.vault_url):
                # Raised by azure-identity: the sign-in to Entra ID itself failed.
                codes = " ".join(c for c in _codes(exc) if c) or type(exc).__name__
                raise PermanentError(
                    f"{where}: keyshift's identity could not get a token for Key Vault "
                    f"from Entra ID ({codes})"
                ) from None
            raise PermanentError(self._refusal(operation, exc)) from None
        except HttpResponseError as exc:
            status = exc.status_code or 0
            if status == 429 or status >= 500:
                raise TransientError(
                    f"{where}: {operation} answered HTTP {status} {_codes(exc)[0]}".rstrip(),
                    # The error's response is typed by its common API only; every transport's
                    # has headers.
                    retry_after=retry_after(getattr(exc.response, "headers", None)),
                ) from None
            raise PermanentError(self._refusal(operation, exc)) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            # Only the class name: library texts may quote URLs and addresses at length.
            raise TransientError(
                f"{where} unreachable during {operation}: {type(exc).__name__}"
            ) from None
        except AzureError as exc:
            raise TransientError(f"{where}: {operation} failed: {type(exc).__name__}") from None
        except ValueError as exc:
            if "challenge" in str(exc):
                raise PermanentError(
                    f"{where}: the vault's authentication challenge names a resource outside "
                    "the vault's domain; keyshift did not send a token. Set "
                    "verify_challenge_resource: false only if the vault is reached through "
                    "another host name on purpose"
                ) from None
            raise

    def _refusal(self, operation: str, exc: HttpResponseError) -> str:
        code, inner = _codes(exc)
        status = exc.status_code or 0
        codes = "/".join(c for c in (code, inner) if c)
        text = f"{self._where}: {operation} refused with HTTP {status} {codes}".rstrip()
        if status == 403 and inner != "SecretDisabled":
            kind = "certificates" if self._certificate else "secrets"
            text += f"; keyshift's identity lacks the {kind} {operation} permission"
        return text

    # --- shapes --------------------------------------------------------------------------

    def _tags(self, delivery: Delivery, rotation_id: str) -> dict[str, str]:
        return {
            **self.config.tags,
            TAG_ROTATION: rotation_id,
            TAG_VERSION: delivery.version_id,
            TAG_FINGERPRINT: delivery.fingerprint,
        }

    def _ids(self, kv_version: str | None = None) -> dict[str, str]:
        ids = {"vault": self.config.vault_url, f"{self.config.object}_name": self.config.name}
        if kv_version is not None:
            ids["key_vault_version"] = kv_version
        return ids

    def _result(self, kv_version: str, **extra: str) -> StepResult:
        return StepResult({**self._ids(kv_version), **extra})


_C = TypeVar("_C", SecretClient, CertificateClient)


class _ClientScope(Generic[_C]):
    """`async with` a Key Vault client and the credential it signs in with; closes both."""

    def __init__(self, client: _C, credential: Any) -> None:
        self.client: _C = client
        self.credential = credential

    async def __aenter__(self) -> _C:
        await self.credential.__aenter__()
        await self.client.__aenter__()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.client.close()
        finally:
            await self.credential.close()


def _sha1(delivery: Delivery) -> str:
    """The SHA-1 thumbprint (hex) of a certificate version's certificate, as Key Vault
    reports it (`x5t`); PermanentError naming the fields when the version has none."""
    from keyshift.targets.certificate import parts_of  # noqa: PLC0415

    try:
        cert = x509.load_pem_x509_certificate(parts_of(delivery).certificate.encode())
    except ValueError:
        raise PermanentError(
            f"version {delivery.version_id}: its certificate is not a PEM certificate"
        ) from None
    return cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - Key Vault's x5t is SHA-1


def _key_type(delivery: Delivery) -> str | None:
    """Key Vault's key type (`RSA`, `EC`) of the certificate's key; None for another."""
    from keyshift.targets.certificate import parts_of  # noqa: PLC0415

    key = x509.load_pem_x509_certificate(parts_of(delivery).certificate.encode()).public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    return None


def _certificate_latest(found: KeyVaultCertificate) -> _Latest | _Disabled:
    props = found.properties
    if props is None:
        return _Latest(version="", tags={})
    if props.enabled is False:
        return DISABLED
    return _Latest(
        version=props.version or "",
        tags=dict(props.tags or {}),
        thumbprint=(props.x509_thumbprint or b"").hex(),
    )


def _codes(exc: HttpResponseError) -> tuple[str, str]:
    """Key Vault's error code and inner error code, from the JSON error body."""
    code = inner = ""
    response = exc.response
    if response is None:
        return code, inner
    try:
        body = json.loads(response.text())
    except ValueError:
        return code, inner
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        # An Entra ID token endpoint error: an OAuth code and AADSTS numbers.
        numbers = body.get("error_codes") or []
        return error, f"AADSTS{numbers[0]}" if numbers else ""
    if isinstance(error, dict):
        code = str(error.get("code") or "")
        nested = error.get("innererror") or error.get("innerError")
        if isinstance(nested, dict):
            inner = str(nested.get("code") or "")
    return code, inner
