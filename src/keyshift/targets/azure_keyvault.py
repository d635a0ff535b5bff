"""`azure_keyvault`: write the value as a new version of an Azure Key Vault secret.

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

The SDK's own retries are turned off (they would sleep on the wall clock); throttling
(429), server errors and network failures surface as `TransientError`, with the
vault's `Retry-After`, and the engine retries on its clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Final
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
from azure.keyvault.secrets import KeyVaultSecret
from azure.keyvault.secrets.aio import SecretClient
from pydantic import BaseModel, ConfigDict, Field, field_validator

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.durations import Duration
from keyshift.domain.location import url_origin
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
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")

log = structlog.get_logger("keyshift.targets.azure_keyvault")


class AzureKeyVaultConfig(BaseModel):
    """Which vault and secret receive the value, and how each version is labelled."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    integration: str = Field(min_length=1)
    """The `entra` integration keyshift signs in through; may be left out when the estate
    declares exactly one. Its identity needs the secrets `get` and `set` permissions on the
    vault."""
    vault_url: str
    """The vault's https:// URL, e.g. `https://payments-kv.vault.azure.net`."""
    secret_name: str
    """The secret to write: 1-127 letters, digits and `-` (Key Vault's naming rule).
    Created by the first publish if it does not exist."""
    content_type: str | None = Field(default=None, max_length=255)
    """The content type recorded on each version, e.g. `text/plain` or `password`."""
    expires_after: Duration | None = None
    """When set, each version written expires this long after it is written (Key
    Vault's `exp` attribute), e.g. `90d`."""
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

    @field_validator("secret_name")
    @classmethod
    def _key_vault_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError("must be 1-127 characters of letters, digits and '-'")
        return name

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
            "secret": config.secret_name,
            "integration": config.integration,
        }

    def __init__(self, config: AzureKeyVaultConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._where = f"Key Vault {config.vault_url} secret {config.secret_name}"

    # --- the contract --------------------------------------------------------------------

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Sign in and read the secret. Changes nothing.

        Ready when the identity can get the secret, or the secret does not exist yet
        (publish creates it). Key Vault offers no way to test `set` without writing a
        version, so `set` is proven at publish time.
        """
        not_proven = (
            "secrets set is proven at publish time (Key Vault cannot test it without writing)"
        )
        try:
            latest = await self._latest()
        except (PermanentError, TransientError) as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if latest is None:
            return PreflightResult(
                Readiness.READY,
                f"{self._where} does not exist yet; publish creates it; {not_proven}",
            )
        return PreflightResult(Readiness.READY, f"secrets get works; {not_proven}")

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Write the value as a new version tagged with its rotation, version id and
        fingerprint.

        Idempotent: when the latest version already carries this fingerprint, nothing is
        written (a crash after the write and before the journal lands here).
        """
        delivery = request.delivery
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

    # --- Key Vault calls -----------------------------------------------------------------

    async def _latest(self) -> _Latest | _Disabled | None:
        """The latest version's id and tags; None when the secret does not exist."""
        async with self._client() as client:
            with self._translate("get"):
                try:
                    secret: KeyVaultSecret = await client.get_secret(self.config.secret_name)
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
                    self.config.secret_name,
                    delivery.value.reveal(),
                    content_type=self.config.content_type,
                    tags=tags,
                    expires_on=expires,
                )
        return written.properties.version or ""

    async def _disable(self, version: str) -> None:
        async with self._client() as client:
            with self._translate("set"):
                await client.update_secret_properties(
                    self.config.secret_name, version, enabled=False
                )

    def _client(self) -> _ClientScope:
        """A SecretClient signed in as the integration's identity, for one operation."""
        try:
            integration = self.context.integration(self.config.integration, EntraIntegration)
            credential = integration.credential(self.context)
        except ConfigError as exc:
            raise PermanentError(f"{self._where}: {exc}") from None
        seconds = self.config.timeout.total_seconds()
        client = SecretClient(
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
            text += f"; keyshift's identity lacks the secrets {operation} permission"
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
        ids = {"vault": self.config.vault_url, "secret_name": self.config.secret_name}
        if kv_version is not None:
            ids["key_vault_version"] = kv_version
        return ids

    def _result(self, kv_version: str, **extra: str) -> StepResult:
        return StepResult({**self._ids(kv_version), **extra})


class _ClientScope:
    """`async with` a SecretClient and the credential it signs in with; closes both."""

    def __init__(self, client: SecretClient, credential: Any) -> None:
        self.client = client
        self.credential = credential

    async def __aenter__(self) -> SecretClient:
        await self.credential.__aenter__()
        await self.client.__aenter__()
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.client.close()
        finally:
            await self.credential.close()


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
