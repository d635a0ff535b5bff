"""Plain models and enums with no I/O: the words of design.md."""

from __future__ import annotations

from keyshift.domain.clock import utcnow
from keyshift.domain.durations import Duration, format_duration, parse_duration
from keyshift.domain.estate import (
    ActionSpec,
    CredentialSpec,
    Estate,
    IntegrationSpec,
    Policy,
    ProviderSpec,
    config_errors,
)
from keyshift.domain.preflight import PreflightRequest, PreflightResult, Readiness
from keyshift.domain.secret import Secret
from keyshift.domain.states import (
    FINAL_STATES,
    MANUAL_ROLLBACK_FROM,
    PHASE_ORDER,
    Lifecycle,
    OnFailure,
    Phase,
    RotationState,
    StepStatus,
    VersionStatus,
)

__all__ = [
    "FINAL_STATES",
    "MANUAL_ROLLBACK_FROM",
    "PHASE_ORDER",
    "ActionSpec",
    "CredentialSpec",
    "Duration",
    "Estate",
    "IntegrationSpec",
    "Lifecycle",
    "OnFailure",
    "Phase",
    "Policy",
    "PreflightRequest",
    "PreflightResult",
    "ProviderSpec",
    "Readiness",
    "RotationState",
    "Secret",
    "StepStatus",
    "VersionStatus",
    "config_errors",
    "format_duration",
    "parse_duration",
    "utcnow",
]
