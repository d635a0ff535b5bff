"""The provider contract: the system that issues and revokes a credential's versions.

Each method takes one frozen request dataclass and returns one result, so
fields can be added without breaking providers. Providers never log or raise
with secret values; they raise `TransientError` / `PermanentError`.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.domain.preflight import PreflightRequest, PreflightResult, Readiness
from keyshift.domain.secret import Secret

__all__ = [
    "AdoptRequest",
    "AdoptedVersion",
    "Capability",
    "CreateRequest",
    "ImportRequest",
    "IssuedVersion",
    "ListRequest",
    "PreflightRequest",
    "PreflightResult",
    "Propagation",
    "Provider",
    "ProviderFactory",
    "Readiness",
    "RevokeRequest",
    "RevokeResult",
    "TrustFirst",
    "UsageReport",
    "UsageRequest",
    "VerifyRequest",
    "VerifyResult",
    "VersionInfo",
    "capability_key",
    "holds_no_value",
    "propagation_of",
    "trust_first_of",
]


class Capability(StrEnum):
    """What an issuer can do; the engine picks its strategy from these, not from types."""

    DUAL_ACTIVE = "dual_active"
    """Old and new versions are valid at once (Entra secrets, Redis ACL, IAM keys, random)."""
    IN_PLACE = "in_place"
    """The new version replaces the old one at once (a single Postgres role's password)."""
    AUTHENTICATES = "authenticates"
    """`verify` really logs in at the issuer, so a revoked version can be proven refused."""
    RESIDUAL_USE = "residual_use"
    """`residual_use` counts the issuer's sessions that still use a version."""
    ADOPTS_EXISTING = "adopts_existing"
    """`adopt_existing` finds the versions the issuer holds that keyshift did not create,
    so the first rotation retires them as its old version."""
    IMPORTS = "imports"
    """`import_version` takes a value the issuer holds now and says which version it is
    (whose user, when it expires there), having proven that it authenticates wherever
    the issuer can tell: `keyshift import` stores it without changing the issuer."""
    INSPECTS = "inspects"
    """`inspect` reads from the issuer whether it still holds a version (a stored password
    hash), without signing in: no failed login when it no longer does. It answers None
    when it cannot tell (the admin may not read what the issuer stores)."""


@dataclass(frozen=True)
class IssuedVersion:
    """A version as the provider knows it. `provider_ref` is the issuer's id (e.g. Entra keyId)."""

    provider_ref: str
    value: Secret
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Non-secret facts consumers may need (a username) and the audit may show."""
    expires_at: datetime | None = None
    fingerprint: str | None = None
    """The version's public identity, when it has one: a certificate's SHA-256 thumbprint
    (`sha256:` and 64 hex digits), which anyone holding the certificate can compute.
    None for a secret value: keyshift fingerprints it with an HMAC under its own key."""


@dataclass(frozen=True)
class CreateRequest:
    credential: str
    rotation_id: str
    marker: str
    """Idempotency marker naming this rotation; the issuer-side version carries it."""
    policy: Policy
    current: IssuedVersion | None
    """The version in use now, if any (alternating strategies pick the other user)."""


@dataclass(frozen=True)
class VerifyRequest:
    credential: str
    version: IssuedVersion


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    detail: str = ""
    not_yet: bool = False
    """A refusal that means "not propagated yet" rather than "wrong": the issuer has not
    made a new version usable everywhere (Entra ID's AADSTS7000215 / 7000222 in the first
    seconds after `addPassword`, a Redis node that has not applied the ACL yet). The
    engine asks again, with backoff, until the policy's `propagation_timeout`."""
    partial: bool = False
    """Some of the issuer's nodes accept the version and others refuse it (`ok` is False):
    a new version is not usable everywhere yet, and a revoked one is still accepted
    somewhere. `detail` names the nodes."""


@dataclass(frozen=True)
class Propagation:
    """How an issuer makes versions usable and unusable: a provider declares it as its
    `propagation` attribute; `propagation_of` gives the default for one that does not.

    A new version is proven (signed in with) before any consumer gets it, and a revoked
    one is proven refused after its removal; both are retried with exponential backoff
    and jitter until `timeout` (the policy's `propagation_timeout` overrides it)."""

    timeout: timedelta
    """How long keyshift waits, by default, for a new version to be accepted everywhere
    and a removed one to be refused everywhere."""
    note: str = ""
    """What the issuer's documentation or its users report, for `plan` and the evidence."""


DEFAULT_PROPAGATION = Propagation(
    timedelta(seconds=30), "no figure declared by the provider; keyshift's default"
)


def propagation_of(provider: object) -> Propagation:
    """The provider's declared `propagation`, or `DEFAULT_PROPAGATION`."""
    declared = getattr(provider, "propagation", None)
    return declared if isinstance(declared, Propagation) else DEFAULT_PROPAGATION


def capability_key(provider_class: object, config: Mapping[str, Any]) -> Hashable:
    """What the capabilities of `provider_class` built with `config` (as the estate
    declares it) are decided by: the values of the config fields the class names in its
    `capability_fields` attribute (the fields its `capabilities` reads), or the whole
    config when it names none. One provider built per key answers for every credential
    with that key, so a view of many credentials does not build one per credential."""
    fields = getattr(provider_class, "capability_fields", None)
    if isinstance(fields, tuple):
        return tuple(_hashable(config.get(f)) for f in fields)
    return _hashable(dict(config))


_PLAIN = (str, int, float, bool, type(None))


def _hashable(value: Any) -> Hashable:
    if isinstance(value, _PLAIN):
        return value
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class TrustFirst:
    """A credential whose verifiers must hold a new version before anything signs with it
    (design.md: trust first, identity second), declared by a provider as its
    `trust_first` attribute; `trust_first_of` reads it.

    Its actions are of two kinds: those that hand verifiers the version's public part (a
    target that says `trust_only(config)`: a JWKS document) and those that hand the
    signers the version itself. The engine publishes every trust action first, waits
    `signers_after` (journaled, resting between runs), and only then runs the others;
    after the cutover the old version stays trusted for at least `keep_old_for` (the
    grace period is never shorter), and is withdrawn from the trust actions just
    before it is revoked."""

    signers_after: timedelta
    """How long verifiers may keep serving what they fetched before (their cache TTL)."""
    keep_old_for: timedelta
    """How long something signed with the old version just before the switch stays in use
    (the longest token lifetime)."""


def trust_first_of(provider: object) -> TrustFirst | None:
    """The provider's declared `trust_first`, or None (every provider but a signing key)."""
    declared = getattr(provider, "trust_first", None)
    return declared if isinstance(declared, TrustFirst) else None


def holds_no_value(provider: object) -> bool:
    """Whether the provider's versions hold no value at all (its class says
    `holds_no_value = True`: a KMS key, which exports nothing). Their value is empty and
    their fingerprint public; `verify` and `revoke` work from the identifiers alone, so
    an adopted version of such a provider can be proven revoked like any other."""
    return getattr(provider, "holds_no_value", False) is True


@dataclass(frozen=True)
class RevokeRequest:
    credential: str
    rotation_id: str
    version: IssuedVersion
    """The old version to revoke (its value may be needed to remove it, e.g. Redis `<pw`)."""


@dataclass(frozen=True)
class RevokeResult:
    already_gone: bool = False
    detail: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionInfo:
    provider_ref: str
    marker: str | None
    created_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class UsageRequest:
    credential: str
    version: IssuedVersion
    policy: Policy | None = None
    """The credential's policy: its `residual_use.check_every` tells a provider that reads
    an event log how far apart the checks are, so no event falls between two of them."""


@dataclass(frozen=True)
class UsageReport:
    """`sessions` open with the version right now; `detail` says where (never values).

    Providers with `Capability.RESIDUAL_USE` implement
    `async def residual_use(request: UsageRequest) -> UsageReport`; the engine asks
    during the grace period and revokes only after the version was unused for the
    policy's `quiet_for`.
    """

    sessions: int
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AdoptRequest:
    credential: str


@dataclass(frozen=True)
class AdoptedVersion:
    """Versions at the issuer that keyshift did not create (made by hand before keyshift
    managed the credential), taken over as one old version whose value keyshift never held.

    Providers with `Capability.ADOPTS_EXISTING` implement
    `async def adopt_existing(request: AdoptRequest) -> AdoptedVersion | None` (None when
    there is nothing to adopt). The engine asks once, on the first rotation, and stores
    the answer as a version without a value; `revoke` then receives it with these
    `attributes` and an empty value, so it must remove it by identifiers alone.
    """

    provider_ref: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Identifiers of what was adopted (e.g. keyIds), for `revoke` and the audit."""
    expires_at: datetime | None = None
    """The latest expiry among the adopted versions."""


@dataclass(frozen=True)
class ImportRequest:
    """A value an operator brings under management (`keyshift import`).

    Providers with `Capability.IMPORTS` implement
    `async def import_version(request: ImportRequest) -> IssuedVersion`: the version the
    value is at the issuer, as `create` would have returned it (so that a later rotation,
    its rollback and its revocation treat it as any version), after proving that it
    authenticates (PermanentError, naming the user but never the value, when it does
    not). It changes nothing at the issuer.
    """

    credential: str
    value: Secret
    username: str | None = None
    """Which of the users that take turns holds the value; None: the provider tries
    each (a wrong one is a failed login the issuer may log)."""
    kid: str | None = None
    """The key id verifiers already know the imported signing key by (`--kid`); None:
    the provider names it as it names the keys it makes. Only a provider whose versions
    carry a `kid` attribute takes one."""


@dataclass(frozen=True)
class ListRequest:
    credential: str


@runtime_checkable
class Provider(Protocol):
    """Issues and revokes versions of one credential."""

    kind: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this issuer can do with this configuration. A provider whose capabilities
        read its config names the fields read in a `capability_fields` tuple (`()` when
        they read none; see `capability_key`)."""
        ...

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        """Check that a rotation could create and revoke versions with this identity:
        the issuer answers, the rotated accounts exist and keyshift may change them.
        Changes nothing. Problems are reported in the result; raising is allowed too
        (the engine reports the error as blocked)."""
        ...

    async def create(self, request: CreateRequest) -> IssuedVersion:
        """Issue a new version while the current one stays valid.

        Idempotent: if a version carrying `request.marker` exists at the issuer,
        return it instead of issuing a second one.
        """
        ...

    async def verify(self, request: VerifyRequest) -> VerifyResult:
        """Authenticate with the version exactly as a consumer would. Changes nothing."""
        ...

    async def revoke(self, request: RevokeRequest) -> RevokeResult:
        """Disable or delete the version at the issuer. Succeeds if it is already gone."""
        ...

    async def list_versions(self, request: ListRequest) -> list[VersionInfo]:
        """The versions the issuer holds for this credential, newest last."""
        ...

    async def aclose(self) -> None:
        """Release connections. Safe to call twice."""
        ...


class ProviderFactory(Protocol):
    def __call__(self, config: BaseModel, context: PluginContext) -> Provider: ...
