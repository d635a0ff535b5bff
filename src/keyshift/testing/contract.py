"""`assert_provider_contract`: what every provider's tests run."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Awaitable
from typing import Final, TypeVar

from pydantic import BaseModel

from keyshift.domain.estate import Policy
from keyshift.domain.secret import Secret
from keyshift.providers.base import (
    Capability,
    CreateRequest,
    IssuedVersion,
    ListRequest,
    PreflightRequest,
    PreflightResult,
    Provider,
    Readiness,
    RevokeRequest,
    RevokeResult,
    VerifyRequest,
    VerifyResult,
    holds_no_value,
)
from keyshift.testing.logs import capture_logs, holds

CONTRACT_POLICY: Final = Policy()
"""The policy `assert_provider_contract` creates versions under unless given one."""

_T = TypeVar("_T")


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
        if any(holds(t, v) for t in texts for v in values):
            return type(current).__name__
        pending += [current.__cause__, current.__context__]
    return None


class _ContractRun:
    """One run of the contract: calls the provider and remembers every value it issued."""

    def __init__(self, *, holds_no_value: bool = False) -> None:
        self.values: list[str] = []
        self.holds_no_value = holds_no_value
        """The provider's versions hold no value (`holds_no_value`, a KMS key)."""

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
        if self.holds_no_value:
            _require(not value, f"{step} returned a value, but the provider holds none")
            _require(bool(version.fingerprint), f"{step} returned no public fingerprint")
            return version
        _require(bool(value), f"{step} returned an empty value")
        self.values.append(value)
        _require(
            not any(holds(shown, value) for shown in (repr(version), str(version))),
            f"the repr of the version from {step} shows its value",
        )
        return version


CAPABILITY_METHODS: Final = {
    Capability.RESIDUAL_USE: "residual_use",
    Capability.ADOPTS_EXISTING: "adopt_existing",
    Capability.INSPECTS: "inspect",
    Capability.IMPORTS: "import_version",
}
"""The method each optional capability promises (see `keyshift.providers.base`)."""


class _RecordedReads:
    """A provider's config that notes which of its fields are read."""

    def __init__(self, config: BaseModel) -> None:
        self._config = config
        self.read: set[str] = set()

    def __getattr__(self, name: str) -> object:
        if name in type(self._config).model_fields:
            self.read.add(name)
        return getattr(self._config, name)


def _check_capability_fields(provider: Provider) -> None:
    """`capability_fields`, when declared, names fields of the config and every field
    `capabilities` reads: views build one provider per value of them (`capability_key`)
    and would show a wrong capability for a field left out."""
    cls = type(provider)
    name = cls.__name__
    fields = getattr(cls, "capability_fields", None)
    if fields is None:
        return
    _require(
        isinstance(fields, tuple) and all(isinstance(f, str) for f in fields),
        f"{name}.capability_fields is not a tuple of field names",
    )
    unknown = sorted(set(fields) - set(cls.Config.model_fields))
    _require(not unknown, f"{name}.capability_fields names {unknown}, not fields of its Config")
    config = getattr(provider, "config", None)
    if not isinstance(config, BaseModel):
        return  # the config is kept elsewhere: what is read cannot be watched
    twin = copy.copy(provider)
    recorder = _RecordedReads(config)
    try:
        twin.config = recorder  # type: ignore[attr-defined]
    except AttributeError:
        return
    twin.capabilities  # noqa: B018 (read for the fields it reads)
    unnamed = sorted(recorder.read - set(fields))
    _require(
        not unnamed,
        f"{name}.capabilities reads {unnamed}, which its capability_fields does not name",
    )


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
    _check_capability_fields(provider)
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
      whose repr does not show the value (a provider whose class says
      `holds_no_value = True`, a KMS key, returns an empty value and a fingerprint);
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
    run = _ContractRun(holds_no_value=holds_no_value(provider))
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
                run.holds_no_value or first.value != second.value,
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
