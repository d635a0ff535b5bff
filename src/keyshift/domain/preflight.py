"""Preflight: whether a rotation's steps could succeed now, checked without changing anything.

Providers and targets both answer a `PreflightRequest` with a `PreflightResult`, so the
types live here, below both; `keyshift.targets.base` and `keyshift.providers.base`
re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keyshift.domain.estate import Policy


class Readiness(StrEnum):
    """How a step stands before a rotation. Only `ready` everywhere lets a preflight pass."""

    READY = "ready"
    MANUAL_REVIEW = "manual review required"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class PreflightRequest:
    credential: str
    policy: Policy | None = None
    """The credential's policy, for checks that depend on it (a `residual_use` gate may
    need a permission to read the issuer's usage evidence)."""


@dataclass(frozen=True)
class PreflightResult:
    """The readiness of one step and why; `reason` names resources, never values."""

    readiness: Readiness
    reason: str = ""
    transient: bool = False
    """Blocked by something that may pass on its own (an unreachable endpoint, a 503):
    a rotation retries its preflight instead of failing."""
