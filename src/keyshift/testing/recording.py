"""`RecordingTarget`: records what each consumer received, ids and fingerprints only."""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple, cast

from pydantic import BaseModel, ConfigDict, Field

from keyshift.context import PluginContext
from keyshift.domain.preflight import PreflightRequest, PreflightResult, Readiness
from keyshift.domain.states import Phase
from keyshift.targets.base import (
    Delivery,
    PublishRequest,
    RollbackRequest,
    StepResult,
)


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
        return self._attempt("publish", request.delivery)

    async def rollback(self, request: RollbackRequest) -> StepResult:
        """Records ("rollback", restored version id, fingerprint); None when nothing is."""
        return self._attempt("rollback", request.previous)

    def _attempt(
        self, operation: Literal["publish", "rollback"], held: Delivery | None
    ) -> StepResult:
        """Count the attempt, raise a queued fault for it, else record it."""
        self.attempts += 1
        fault = self._fault(operation)
        if fault:
            raise fault
        self._record(operation, held)
        return StepResult(detail={"target": self.config.name})
