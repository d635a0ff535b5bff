"""The target contract: one delivery step to a consumer (write, reload, verify, notify).

Each method takes one frozen request dataclass and returns one result. Targets
receive the value inside a `Secret` and never log, return or raise with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from keyshift.context import PluginContext
from keyshift.domain.preflight import PreflightRequest, PreflightResult, Readiness
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError

__all__ = [
    "FULLCHAIN",
    "VALUE_FIELDS",
    "BaseTarget",
    "Delivery",
    "PreflightRequest",
    "PreflightResult",
    "PublishRequest",
    "Readiness",
    "RollbackRequest",
    "StepResult",
    "Target",
    "TargetFactory",
    "WithdrawRequest",
    "field_value",
    "key_entries",
    "positive",
]


@dataclass(frozen=True)
class Delivery:
    """One version as handed to a consumer: ids and fingerprint for the record, value to use."""

    credential: str
    rotation_id: str
    version_id: str
    fingerprint: str
    value: Secret
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishRequest:
    delivery: Delivery
    previous: Delivery | None
    """The version consumers had before, if any (for targets that record or compare)."""


@dataclass(frozen=True)
class RollbackRequest:
    failed: Delivery
    """The new version whose publication is being undone."""
    previous: Delivery | None
    """The value to restore; None when the credential had no version before."""


@dataclass(frozen=True)
class WithdrawRequest:
    """Stop trusting an old version, just before it is revoked (a trust-first credential:
    a JWKS drops the old key). Targets that serve verifiers (their class says
    `trust_only(config)`) implement `async def withdraw(request) -> StepResult`.
    Idempotent: an old version already gone is left alone."""

    current: Delivery
    """The version that stays trusted (it is made present too)."""
    withdrawn: Delivery
    """The old version no longer trusted."""


@dataclass(frozen=True)
class StepResult:
    """Non-secret facts for the step record and audit (paths, status codes, changed keys)."""

    detail: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Target(Protocol):
    """Delivers a version to one consumer, or reloads / verifies / notifies it."""

    kind: ClassVar[str]
    phase: ClassVar[Phase]
    Config: ClassVar[type[BaseModel]]

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        """Check that publish could succeed with this identity. Changes nothing."""
        ...

    async def publish(self, request: PublishRequest) -> StepResult:
        """Deliver the version. Idempotent: publishing the same version twice leaves one state."""
        ...

    async def rollback(self, request: RollbackRequest) -> StepResult:
        """Undo `publish`: restore `previous` (or remove what publish added). Idempotent."""
        ...


class TargetFactory(Protocol):
    def __call__(self, config: BaseModel, context: PluginContext) -> Target: ...


ConfigT = TypeVar("ConfigT")


class BaseTarget(Generic[ConfigT]):
    """What every target holds the same way: its config (an instance of its `Config`) and
    the plugin context it was built with.

    A subclass names its `kind`, `phase` and `Config`, implements the `Target` methods and
    extends `__init__` only for state of its own.
    """

    kind: ClassVar[str]
    phase: ClassVar[Phase]
    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: ConfigT, context: PluginContext) -> None:
        self.config = config
        self.context = context


VALUE_FIELDS: Final = frozenset({"value", "password", "private_key"})
"""Field names that mean the secret value itself (`private_key` for a certificate version,
whose value is its key); any other field is a version attribute (`username`, `host`,
`port`, `database` for database credentials; `certificate`, `chain` for a certificate)."""

FULLCHAIN: Final = "fullchain"
"""The field that is a certificate version's `certificate` followed by its `chain`, as
TLS servers want it (nginx's `ssl_certificate`, a `kubernetes.io/tls` Secret's `tls.crt`)."""


def key_entries(key: str | None, keys: Mapping[str, str] | None) -> dict[str, str]:
    """The keys a target writes, each with the field of the version it receives: `key` gets
    the value; `keys` maps each key to a field (see `field_value`).

    Raises ValueError (for a config model's validator) unless exactly one of `key` and
    `keys` is given and `keys` maps at least one key.
    """
    if (key is None) == (keys is None):
        raise ValueError("give either key or keys (not both)")
    if key is not None:
        return {key: "value"}
    if not keys:
        raise ValueError("keys must map at least one key to a field")
    return dict(keys)


def field_value(delivery: Delivery, field: str) -> str:
    """The text a key receives: the secret value, or a (non-secret) version attribute such
    as the `username` of an alternating_users version. A version without the field is a
    permanent error naming the fields it has."""
    if field in VALUE_FIELDS:
        return delivery.value.reveal()
    if field == FULLCHAIN and "certificate" in delivery.attributes:
        return field_value(delivery, "certificate") + str(delivery.attributes.get("chain", ""))
    if field not in delivery.attributes:
        known = ", ".join(sorted({"value", *delivery.attributes}))
        raise PermanentError(
            f"version {delivery.version_id} has no field '{field}' (it has: {known})"
        )
    return str(delivery.attributes[field])


def positive(value: timedelta, name: str | None = None) -> timedelta:
    """`value` if it is longer than zero; ValueError otherwise (for a config model's
    validator), naming the field when `name` is given."""
    if value <= timedelta(0):
        raise ValueError(f"{name} must be longer than 0s" if name else "must be longer than 0s")
    return value
