"""Plain models and enums with no I/O: the words of design.md."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyshift.domain.clock import utcnow
    from keyshift.domain.durations import Duration, format_duration, parse_duration
    from keyshift.domain.estate import (
        ActionSpec,
        CredentialSpec,
        Estate,
        IntegrationSpec,
        Policy,
        ProviderSpec,
    )
    from keyshift.domain.preflight import PreflightRequest, PreflightResult, Readiness
    from keyshift.domain.problems import config_errors
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

# Each name is imported from its module when first asked for: `keyshift.domain.secret`
# alone (what the CLI's start-up needs) does not build the estate's pydantic models.
_MODULES = {
    "utcnow": "clock",
    **dict.fromkeys(("Duration", "format_duration", "parse_duration"), "durations"),
    **dict.fromkeys(
        (
            "ActionSpec",
            "CredentialSpec",
            "Estate",
            "IntegrationSpec",
            "Policy",
            "ProviderSpec",
        ),
        "estate",
    ),
    "config_errors": "problems",
    **dict.fromkeys(("PreflightRequest", "PreflightResult", "Readiness"), "preflight"),
    "Secret": "secret",
    **dict.fromkeys(
        (
            "FINAL_STATES",
            "MANUAL_ROLLBACK_FROM",
            "PHASE_ORDER",
            "Lifecycle",
            "OnFailure",
            "Phase",
            "RotationState",
            "StepStatus",
            "VersionStatus",
        ),
        "states",
    ),
}


def __getattr__(name: str) -> Any:
    try:
        module = _MODULES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


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
