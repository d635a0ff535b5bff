"""`FakeProvider`: an in-memory issuer that keeps the provider contract and fails on demand."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from secrets import token_urlsafe
from typing import ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.providers import base
from keyshift.providers.base import (
    Capability,
    IssuedVersion,
    PreflightResult,
    Propagation,
    Readiness,
    RevokeResult,
    VerifyResult,
    VersionInfo,
)

FakeMethod = Literal["preflight", "create", "verify", "revoke", "list_versions", "aclose"]
"""The `FakeProvider` methods `fail_next` can make fail."""


class FakeConfig(BaseModel):
    """Settings of the fake issuer."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    value_bytes: int = Field(default=24, ge=16, le=256)
    """Random bytes in each issued value (URL-safe base64 encoded)."""
    authenticates: bool = False
    """Declare `Capability.AUTHENTICATES`: the engine proves new versions before cutover
    and proves revoked ones refused, as for an issuer that signs in."""
    sign_in_delay: float = Field(default=0.0, ge=0)
    """Seconds (on the context's clock) after a version is minted during which `verify`
    refuses it with `not_yet`, as Entra ID does while a new secret replicates."""
    removal_delay: float = Field(default=0.0, ge=0)
    """Seconds after a revocation during which `verify` still accepts the version, as
    Entra ID's replicas accept a removed secret for minutes."""


@dataclass
class FakeVersion:
    """One version as the fake issuer holds it."""

    credential: str
    provider_ref: str
    marker: str
    value: Secret
    created_at: datetime
    expires_at: datetime | None
    revoked: bool = False
    revoked_at: datetime | None = None

    def issued(self) -> IssuedVersion:
        return IssuedVersion(
            provider_ref=self.provider_ref,
            value=self.value,
            attributes={"issuer": "fake"},
            expires_at=self.expires_at,
        )


@dataclass
class _Fault:
    exc: BaseException
    after_effect: bool


class FakeProvider:
    """A provider whose issuer is the dict `versions` (provider_ref -> FakeVersion).

    Holds the `Provider` contract exactly: `create` returns the live version carrying
    the request's marker instead of minting a second one; `verify` is ok only for a
    live (not revoked) version whose value matches; `revoke` of a missing or revoked
    version succeeds with `already_gone=True`; `preflight` answers `readiness`.
    Revoked versions stay in `versions` with `revoked=True` so tests can count them.

    It can behave as an eventually consistent issuer (config `sign_in_delay`,
    `removal_delay`): a new version answers `not_yet` for a while, a revoked one is
    still accepted for a while. `FakeProvider.bound(versions)` makes a class whose
    instances share one issuer, for an engine that builds a provider per run.

    Counters count calls (`create_calls`, `revoke_calls`, ...) and effects
    (`issued`: versions actually minted). `fail_next` injects a fault.
    """

    kind: ClassVar[str] = "fake"
    Config: ClassVar[type[BaseModel]] = FakeConfig
    capability_fields: ClassVar[tuple[str, ...]] = ("authenticates",)
    propagation: ClassVar[Propagation] = Propagation(
        timedelta(minutes=1), "the fake issuer's delays, as a test sets them"
    )
    _shared: ClassVar[dict[str, FakeVersion] | None] = None

    def __init__(
        self, config: FakeConfig | None = None, context: PluginContext | None = None
    ) -> None:
        self.config = config or FakeConfig()
        self.context = context or PluginContext()
        self.versions: dict[str, FakeVersion] = self._shared if self._shared is not None else {}
        self.preflight_calls = 0
        self.readiness = PreflightResult(Readiness.READY, "fake issuer")
        """What `preflight` answers; tests set another result to block a rotation."""
        self.create_calls = 0
        self.verify_calls = 0
        self.revoke_calls = 0
        self.list_calls = 0
        self.aclose_calls = 0
        self._faults: dict[str, list[_Fault]] = {}

    @classmethod
    def bound(cls, versions: dict[str, FakeVersion]) -> type[FakeProvider]:
        """A subclass whose instances all hold their versions in `versions`: one issuer
        for a registry that builds the provider as `cls(config, context)` on every run."""
        return cast(
            "type[FakeProvider]", type(f"{cls.__name__}[bound]", (cls,), {"_shared": versions})
        )

    @property
    def capabilities(self) -> frozenset[Capability]:
        if self.config.authenticates:
            return frozenset({Capability.DUAL_ACTIVE, Capability.AUTHENTICATES})
        return frozenset({Capability.DUAL_ACTIVE})

    @property
    def issued(self) -> int:
        """How many distinct versions the issuer minted (revoked ones included)."""
        return len(self.versions)

    @property
    def live(self) -> list[FakeVersion]:
        """The versions not revoked, oldest first."""
        return [v for v in self.versions.values() if not v.revoked]

    def fail_next(
        self, method: FakeMethod, exc: BaseException, *, after_effect: bool = False
    ) -> None:
        """Raise `exc` on the next call of `method`. Faults queue up per method.

        With `after_effect=True` the call takes effect at the issuer first and then
        raises, as when a response is lost: the case idempotency markers exist for.
        """
        self._faults.setdefault(method, []).append(_Fault(exc, after_effect))

    def _fault(self, method: FakeMethod) -> _Fault | None:
        queue = self._faults.get(method)
        return queue.pop(0) if queue else None

    def _find(self, credential: str, marker: str) -> FakeVersion | None:
        for version in self.versions.values():
            if (
                version.credential == credential
                and version.marker == marker
                and not version.revoked
            ):
                return version
        return None

    def _mint(self, request: base.CreateRequest) -> FakeVersion:
        now = self.context.now()
        lifetime = request.policy.max_lifetime
        version = FakeVersion(
            credential=request.credential,
            provider_ref=f"fake-{len(self.versions) + 1}",
            marker=request.marker,
            value=Secret(token_urlsafe(self.config.value_bytes)),
            created_at=now,
            expires_at=now + lifetime if lifetime is not None else None,
        )
        self.versions[version.provider_ref] = version
        return version

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Answer `readiness` (ready unless a test set it). Changes nothing."""
        self.preflight_calls += 1
        fault = self._fault("preflight")
        if fault:
            raise fault.exc
        return self.readiness

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """Return the live version carrying `request.marker`, or mint one."""
        self.create_calls += 1
        fault = self._fault("create")
        if fault and not fault.after_effect:
            raise fault.exc
        version = self._find(request.credential, request.marker) or self._mint(request)
        if fault:
            raise fault.exc
        return version.issued()

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """Ok iff the issuer holds the version, it is not revoked and its value matches;
        within `sign_in_delay` of its minting refused as `not_yet`, and within
        `removal_delay` of its revocation still ok."""
        self.verify_calls += 1
        fault = self._fault("verify")
        if fault:
            raise fault.exc
        held = self.versions.get(request.version.provider_ref)
        if held is None:
            return VerifyResult(ok=False, detail="unknown version")
        if held.value != request.version.value:
            return VerifyResult(ok=False, detail="value does not match the issued version")
        now = self.context.now()
        if held.revoked:
            lingers = timedelta(seconds=self.config.removal_delay)
            if held.revoked_at is None or now - held.revoked_at >= lingers:
                return VerifyResult(ok=False, detail="version revoked")
            return VerifyResult(ok=True, detail="authenticated (revocation not yet seen)")
        if now - held.created_at < timedelta(seconds=self.config.sign_in_delay):
            return VerifyResult(ok=False, detail="not yet replicated", not_yet=True)
        return VerifyResult(ok=True, detail="authenticated")

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """Mark the version revoked. Succeeds, with `already_gone=True`, if it is gone."""
        self.revoke_calls += 1
        fault = self._fault("revoke")
        if fault and not fault.after_effect:
            raise fault.exc
        held = self.versions.get(request.version.provider_ref)
        already_gone = held is None or held.revoked
        if held is not None and not held.revoked:
            held.revoked, held.revoked_at = True, self.context.now()
        if fault:
            raise fault.exc
        return RevokeResult(already_gone=already_gone, detail={"issuer": "fake"})

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """The live versions of the credential, oldest first."""
        self.list_calls += 1
        fault = self._fault("list_versions")
        if fault:
            raise fault.exc
        return [
            VersionInfo(
                provider_ref=v.provider_ref,
                marker=v.marker,
                created_at=v.created_at,
                expires_at=v.expires_at,
            )
            for v in self.live
            if v.credential == request.credential
        ]

    async def aclose(self) -> None:
        """Nothing to release; counts calls. Safe to call twice."""
        self.aclose_calls += 1
        fault = self._fault("aclose")
        if fault:
            raise fault.exc
