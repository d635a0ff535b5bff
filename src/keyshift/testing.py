"""Test kit for keyshift and its plugins: fakes, log capture and the provider contract.

Shipped in the package so every provider's tests, the engine's tests and tests
outside this repository run the same checks:

- `FakeClock` gives plugins a clock and a sleep that never wait.
- `FakeProvider` issues versions into an in-memory issuer that tests can inspect,
  honours the idempotency marker and fails on demand (`fail_next`).
- `RecordingTarget` records what each consumer received (ids and fingerprints,
  never values) into a list shared by several targets, so their order shows.
- `capture_logs` captures structlog events and fails if one holds a secret value.
- `assert_provider_contract` is what every provider's tests run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from secrets import token_urlsafe
from typing import ClassVar, Final, Literal, NamedTuple, TypeVar, cast

import structlog.testing
from pydantic import BaseModel, ConfigDict, Field
from structlog.typing import EventDict

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.providers.base import (
    Capability,
    CreateRequest,
    IssuedVersion,
    ListRequest,
    PreflightRequest,
    PreflightResult,
    Propagation,
    Provider,
    Readiness,
    RevokeRequest,
    RevokeResult,
    VerifyRequest,
    VerifyResult,
    VersionInfo,
)
from keyshift.targets.base import (
    Delivery,
    PublishRequest,
    RollbackRequest,
    StepResult,
)

__all__ = [
    "CONTRACT_POLICY",
    "FAKE_CLOCK_START",
    "FakeClock",
    "FakeConfig",
    "FakeMethod",
    "FakeProvider",
    "FakeVersion",
    "RecordingConfig",
    "RecordingTarget",
    "TargetCall",
    "assert_provider_contract",
    "capture_logs",
]

FAKE_CLOCK_START: Final = datetime(2024, 1, 1, tzinfo=UTC)
"""Where a `FakeClock` starts unless told otherwise."""
CONTRACT_POLICY: Final = Policy()
"""The policy `assert_provider_contract` creates versions under unless given one."""

_MIN_CONTAINED: Final = 4
"""Secrets at least this long count as leaked when a longer text contains them (as `scrub`)."""

_T = TypeVar("_T")

FakeMethod = Literal["preflight", "create", "verify", "revoke", "list_versions", "aclose"]
"""The `FakeProvider` methods `fail_next` can make fail."""


class FakeClock:
    """A clock that moves only when told. `sleep` records the delay and moves the clock by
    it instead of waiting, so retries and backoff run instantly and stay observable."""

    def __init__(self, start: datetime = FAKE_CLOCK_START) -> None:
        if start.tzinfo is None:
            raise ValueError("a FakeClock starts at a timezone-aware datetime")
        self._now = start
        self.sleeps: list[float] = []
        """Every delay passed to `sleep`, in order."""

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += timedelta(seconds=seconds)
        # Yield to the loop as a real sleep would, so concurrent tasks still interleave.
        await asyncio.sleep(0)

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by `delta`; returns the new time."""
        if delta < timedelta(0):
            raise ValueError("a FakeClock does not go backwards")
        self._now += delta
        return self._now

    def context(self, env: Mapping[str, str] | None = None) -> PluginContext:
        """A plugin context on this clock, with `env` (empty by default, not os.environ)."""
        return PluginContext(now=self.now, sleep=self.sleep, env=dict(env or {}))


# --- providers ---------------------------------------------------------------------------


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

    def _mint(self, request: CreateRequest) -> FakeVersion:
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

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        """Answer `readiness` (ready unless a test set it). Changes nothing."""
        self.preflight_calls += 1
        fault = self._fault("preflight")
        if fault:
            raise fault.exc
        return self.readiness

    async def create(self, request: CreateRequest) -> IssuedVersion:
        """Return the live version carrying `request.marker`, or mint one."""
        self.create_calls += 1
        fault = self._fault("create")
        if fault and not fault.after_effect:
            raise fault.exc
        version = self._find(request.credential, request.marker) or self._mint(request)
        if fault:
            raise fault.exc
        return version.issued()

    async def verify(self, request: VerifyRequest) -> VerifyResult:
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

    async def revoke(self, request: RevokeRequest) -> RevokeResult:
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

    async def list_versions(self, request: ListRequest) -> list[VersionInfo]:
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


# --- targets -----------------------------------------------------------------------------


class TargetCall(NamedTuple):
    """One publish or rollback as a consumer saw it: ids and fingerprint, never the value.

    `version_id` / `fingerprint` name the version the consumer holds after the call
    (for a rollback the restored one; None when there was nothing to restore).
    """

    target: str
    operation: Literal["publish", "rollback"]
    version_id: str | None
    fingerprint: str | None


class RecordingConfig(BaseModel):
    """Settings of a recording target."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    name: str = Field(default="recording", min_length=1)
    """Names this target in the recorded calls, so several targets can share one list."""
    readiness: Readiness = Readiness.READY
    """What `preflight` reports."""


class RecordingTarget:
    """A target that records each successful publish and rollback into `calls`.

    Pass one list to several targets to assert their order. The class's `phase` is
    PUBLISH; `RecordingTarget.bound(calls, phase=...)` makes a class for another
    phase that an engine registry can build as `cls(config, context)`.
    `fail_next(exc)` makes the next publish or rollback raise without recording.
    """

    kind: ClassVar[str] = "recording"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = RecordingConfig
    _default_calls: ClassVar[list[TargetCall] | None] = None

    def __init__(
        self,
        config: RecordingConfig | None = None,
        context: PluginContext | None = None,
        *,
        calls: list[TargetCall] | None = None,
    ) -> None:
        self.config = config or RecordingConfig()
        self.context = context or PluginContext()
        if calls is None:
            calls = self._default_calls if self._default_calls is not None else []
        self.calls = calls
        self.attempts = 0
        """Publish and rollback calls, failed ones included."""
        self._faults: list[tuple[BaseException, str | None]] = []

    @classmethod
    def bound(
        cls, calls: list[TargetCall], *, phase: Phase = Phase.PUBLISH
    ) -> type[RecordingTarget]:
        """A subclass in `phase` whose instances record into `calls` unless given a list.

        For registries, which build targets as `cls(config, context)` and read the
        phase from the class.
        """
        name = f"{cls.__name__}[{phase.name}]"
        return cast(
            "type[RecordingTarget]",
            type(name, (cls,), {"phase": phase, "_default_calls": calls}),
        )

    def fail_next(
        self, exc: BaseException, *, operation: Literal["publish", "rollback"] | None = None
    ) -> None:
        """Raise `exc` on the next publish or rollback (or only on `operation`)."""
        self._faults.append((exc, operation))

    def _fault(self, operation: str) -> BaseException | None:
        for i, (exc, only) in enumerate(self._faults):
            if only is None or only == operation:
                del self._faults[i]
                return exc
        return None

    def _record(self, operation: Literal["publish", "rollback"], held: Delivery | None) -> None:
        self.calls.append(
            TargetCall(
                target=self.config.name,
                operation=operation,
                version_id=held.version_id if held else None,
                fingerprint=held.fingerprint if held else None,
            )
        )

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        """Reports the configured readiness. Changes nothing."""
        return PreflightResult(readiness=self.config.readiness)

    async def publish(self, request: PublishRequest) -> StepResult:
        """Records ("publish", version id, fingerprint)."""
        self.attempts += 1
        fault = self._fault("publish")
        if fault:
            raise fault
        self._record("publish", request.delivery)
        return StepResult(detail={"target": self.config.name})

    async def rollback(self, request: RollbackRequest) -> StepResult:
        """Records ("rollback", restored version id, fingerprint); None when nothing is."""
        self.attempts += 1
        fault = self._fault("rollback")
        if fault:
            raise fault
        self._record("rollback", request.previous)
        return StepResult(detail={"target": self.config.name})


# --- logs --------------------------------------------------------------------------------


def _holds(text: str, secret: str) -> bool:
    return text == secret or (len(secret) >= _MIN_CONTAINED and secret in text)


def _leak(obj: object, secrets: list[str], path: str, seen: set[int]) -> str | None:
    """The path of the first place in `obj` that holds a secret, or None."""
    if isinstance(obj, str | bytes):
        text = obj if isinstance(obj, str) else obj.decode(errors="replace")
        return path if any(_holds(text, s) for s in secrets) else None
    if isinstance(obj, Secret) or id(obj) in seen:
        # A Secret object prints redacted; the logs' redact processor replaces it.
        return None
    seen.add(id(obj))
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            found = _leak(key, secrets, f"{path} key", seen) or _leak(
                value, secrets, f"{path}[{key!r}]", seen
            )
            if found:
                return found
        return None
    if isinstance(obj, list | tuple | set | frozenset):
        for i, item in enumerate(obj):
            found = _leak(item, secrets, f"{path}[{i}]", seen)
            if found:
                return found
        return None
    if isinstance(obj, BaseException):
        return _leak(str(obj), secrets, f"{path} (exception text)", seen)
    if obj is None or isinstance(obj, int | float | bool):
        return None
    return _leak(repr(obj), secrets, f"{path} (repr)", seen)


@contextmanager
def capture_logs(secrets: Iterable[str] = ()) -> Iterator[list[EventDict]]:
    """Capture structlog events (as `structlog.testing.capture_logs`) and raise
    AssertionError on exit if any event holds a registered secret value.

    A string holds a secret if it equals it or, for secrets of 4 characters or more,
    contains it. Nested dicts, lists and exception texts are searched. `secrets` is
    read on exit, so a list filled inside the block works. The failure names the
    event and key, never the value.
    """
    # capture_logs swaps the processors but keeps the configured wrapper class; a
    # level filter set earlier (the CLI configures WARNING) would hide debug and
    # info events from the capture, so every level is let through while it runs.
    previous = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with structlog.testing.capture_logs() as events:
        try:
            yield events
        finally:
            structlog.configure(wrapper_class=previous)
            known = [s for s in secrets if s]
            for i, event in enumerate(events):
                where = _leak(event, known, f"event {i}", set())
                if where:
                    raise AssertionError(f"a secret value was logged: {where}")


# --- the provider contract ---------------------------------------------------------------


def _require(condition: bool, message: str) -> None:
    """`assert` that survives `python -O`: a test kit that cannot fail is a defect."""
    if not condition:
        raise AssertionError(f"provider contract: {message}")


def _exception_leak(exc: BaseException, values: list[str]) -> str | None:
    """The type name of the first exception in `exc`'s chain whose text holds a value."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts = [str(current), repr(current), *(str(a) for a in current.args)]
        if any(_holds(t, v) for t in texts for v in values):
            return type(current).__name__
        pending += [current.__cause__, current.__context__]
    return None


class _ContractRun:
    """One run of the contract: calls the provider and remembers every value it issued."""

    def __init__(self) -> None:
        self.values: list[str] = []

    async def call(self, step: str, awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except Exception as exc:
            leaked = _exception_leak(exc, self.values)
            if leaked:
                # `from None`: a chained exception would print the value in the report.
                raise AssertionError(
                    f"provider contract: the {leaked} raised by {step} contains a secret value"
                ) from None
            raise AssertionError(
                f"provider contract: {step} raised {type(exc).__name__}: {exc}"
            ) from exc

    def issued(self, step: str, version: object) -> IssuedVersion:
        if not isinstance(version, IssuedVersion):
            raise AssertionError(
                f"provider contract: {step} returned {type(version).__name__}, not IssuedVersion"
            )
        _require(
            isinstance(version.provider_ref, str) and bool(version.provider_ref),
            f"{step} returned an empty provider_ref",
        )
        _require(isinstance(version.value, Secret), f"{step} returned a value that is not a Secret")
        value = version.value.reveal()
        _require(bool(value), f"{step} returned an empty value")
        self.values.append(value)
        _require(
            not any(_holds(shown, value) for shown in (repr(version), str(version))),
            f"the repr of the version from {step} shows its value",
        )
        return version


CAPABILITY_METHODS: Final = {
    Capability.RESIDUAL_USE: "residual_use",
    Capability.ADOPTS_EXISTING: "adopt_existing",
}
"""The method each optional capability promises (see `keyshift.providers.base`)."""


def _check_declarations(provider: Provider) -> None:
    cls = type(provider)
    name = cls.__name__
    _require(isinstance(provider, Provider), f"{name} does not implement Provider")
    _require(isinstance(cls.kind, str) and bool(cls.kind), f"{name}.kind is empty")
    _require(
        isinstance(cls.Config, type) and issubclass(cls.Config, BaseModel),
        f"{name}.Config is not a pydantic model",
    )
    # Capabilities may depend on the configuration, so they are read off the instance.
    capabilities: object = provider.capabilities
    _require(
        isinstance(capabilities, frozenset) and bool(capabilities),
        f"{name}.capabilities is empty",
    )
    _require(
        all(isinstance(c, Capability) for c in capabilities),  # type: ignore[attr-defined]
        f"{name}.capabilities holds something that is not a Capability",
    )
    # A declared capability the engine calls into needs its method: without it the
    # engine would fail only in the grace period or at the first rotation.
    for capability, method in CAPABILITY_METHODS.items():
        if capability in capabilities:  # type: ignore[operator]
            _require(
                callable(getattr(provider, method, None)),
                f"{name} declares {capability.value} but has no {method} method",
            )


async def assert_provider_contract(
    provider: Provider,
    *,
    credential: str = "contract-test",
    policy: Policy = CONTRACT_POLICY,
) -> None:
    """Raise AssertionError unless `provider` keeps the `Provider` contract.

    Uses the public methods only, against whatever issuer `provider` is connected
    to, and revokes what it created. It holds when:

    - `preflight` returns a PreflightResult and the issuer lists the same versions
      before and after it (a preflight changes nothing);
    - `create` returns an IssuedVersion with a non-empty provider_ref and value,
      whose repr does not show the value;
    - `create` with the same marker again is idempotent: it returns the same
      provider_ref and the issuer lists no more versions than before. A provider for
      which keyshift is the system of record (its `list_versions` is empty, as for
      `random`) has no issuer to look in for the marker; its idempotency is the
      engine's, which looks up the stored version of the rotation before calling
      `create`. For such a provider two creates must instead draw distinct values;
    - `verify` of each created version is ok. After a repeated create the version
      is the same but its value may be new: an issuer whose values cannot be read
      back (a database password) sets a fresh one, so the latest value must verify;
    - `revoke` succeeds, and succeeds again on the version already revoked;
    - `aclose` can be called twice;
    - no exception raised on the way and no structlog event holds a value.
    """
    _check_declarations(provider)
    run = _ContractRun()
    rotation_id = f"contract-{uuid.uuid4().hex[:12]}"
    request = CreateRequest(
        credential=credential,
        rotation_id=rotation_id,
        marker=f"keyshift:{rotation_id}",
        policy=policy,
        current=None,
    )
    listing = ListRequest(credential=credential)
    with capture_logs(secrets=run.values):
        before = await run.call("list_versions", provider.list_versions(listing))
        checked = await run.call("preflight", provider.preflight(PreflightRequest(credential)))
        _require(
            isinstance(checked, PreflightResult) and isinstance(checked.readiness, Readiness),
            f"preflight returned {type(checked).__name__}, not PreflightResult",
        )
        after = await run.call("list_versions", provider.list_versions(listing))
        _require(
            after == before,
            f"preflight changed the issuer's versions from {len(before)} to {len(after)}",
        )
        first = run.issued("create", await run.call("create", provider.create(request)))
        listed = await run.call("list_versions", provider.list_versions(listing))
        again = "create with the same marker"
        second = run.issued(again, await run.call(again, provider.create(request)))
        # The same version (same provider_ref) verifies with the latest value issued.
        created = [second]
        if not listed:
            _require(
                first.value != second.value,
                "two creates returned the same value; a provider whose versions only "
                "keyshift records must draw a new value on each create",
            )
            if second.provider_ref != first.provider_ref:
                created.insert(0, first)
        else:
            _require(
                second.provider_ref == first.provider_ref,
                f"create is not idempotent: the same marker gave {first.provider_ref!r}, "
                f"then {second.provider_ref!r}",
            )
            relisted = await run.call("list_versions", provider.list_versions(listing))
            _require(
                len(relisted) == len(listed),
                f"create with a marker already present changed the issuer's versions "
                f"from {len(listed)} to {len(relisted)}",
            )
        for version in created:
            verify = VerifyRequest(credential=credential, version=version)
            verified = await run.call("verify", provider.verify(verify))
            _require(
                isinstance(verified, VerifyResult) and verified.ok,
                f"verify of the new version {version.provider_ref!r} is not ok",
            )
        for version in created:
            revoke = RevokeRequest(credential=credential, rotation_id=rotation_id, version=version)
            for step in ("revoke", "revoke of a version already revoked"):
                result = await run.call(step, provider.revoke(revoke))
                _require(
                    isinstance(result, RevokeResult),
                    f"{step} returned {type(result).__name__}, not RevokeResult",
                )
        await run.call("aclose", provider.aclose())
        await run.call("aclose called twice", provider.aclose())
