"""Targets: delivery steps to consumers. `TARGETS` maps an action's config `type` to a class."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PreflightResult,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
    Target,
)
from keyshift.targets.command import CommandTarget
from keyshift.targets.file import FileTarget
from keyshift.targets.webhook import WebhookTarget


class TargetKind(StrEnum):
    COMMAND = "command"
    FILE = "file"
    WEBHOOK = "webhook"


# Values are the classes; each has `kind`, `phase`, `Config` and takes (config, context).
TARGETS: dict[TargetKind, Any] = {
    TargetKind.COMMAND: CommandTarget,
    TargetKind.FILE: FileTarget,
    TargetKind.WEBHOOK: WebhookTarget,
}

__all__ = [
    "TARGETS",
    "CommandTarget",
    "Delivery",
    "FileTarget",
    "PreflightRequest",
    "PreflightResult",
    "PublishRequest",
    "Readiness",
    "RollbackRequest",
    "StepResult",
    "Target",
    "TargetKind",
    "WebhookTarget",
]
