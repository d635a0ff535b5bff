"""Targets: delivery steps to consumers. `TARGETS` maps an action's config `type` to a class."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from keyshift.targets.agent import (
    AgentIntegration,
    AgentSecretSyncTarget,
    IisRecycleTarget,
    SystemdReloadTarget,
)
from keyshift.targets.aws_secretsmanager import AwsSecretsManagerTarget
from keyshift.targets.azure_keyvault import AzureKeyVaultTarget
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
from keyshift.targets.command import CommandCheckTarget, CommandTarget
from keyshift.targets.file import FileTarget
from keyshift.targets.http_check import HttpCheckTarget
from keyshift.targets.kubernetes import KubernetesRolloutRestartTarget, KubernetesSecretTarget
from keyshift.targets.spring_refresh import SpringRefreshTarget
from keyshift.targets.webhook import WebhookTarget


class TargetKind(StrEnum):
    AGENT_SECRET_SYNC = "agent_secret_sync"  # noqa: S105 (a target type, not a password)
    AWS_SECRETSMANAGER = "aws_secretsmanager"
    AZURE_KEYVAULT = "azure_keyvault"
    COMMAND = "command"
    COMMAND_CHECK = "command_check"
    FILE = "file"
    HTTP_CHECK = "http_check"
    IIS_RECYCLE = "iis_recycle"
    KUBERNETES_ROLLOUT_RESTART = "kubernetes_rollout_restart"
    KUBERNETES_SECRET = "kubernetes_secret"  # noqa: S105 (a target type, not a password)
    SPRING_REFRESH = "spring_refresh"
    SYSTEMD_RELOAD = "systemd_reload"
    WEBHOOK = "webhook"


# Values are the classes; each has `kind`, `phase`, `Config` and takes (config, context).
TARGETS: dict[TargetKind, Any] = {
    TargetKind.AGENT_SECRET_SYNC: AgentSecretSyncTarget,
    TargetKind.AWS_SECRETSMANAGER: AwsSecretsManagerTarget,
    TargetKind.AZURE_KEYVAULT: AzureKeyVaultTarget,
    TargetKind.COMMAND: CommandTarget,
    TargetKind.COMMAND_CHECK: CommandCheckTarget,
    TargetKind.FILE: FileTarget,
    TargetKind.HTTP_CHECK: HttpCheckTarget,
    TargetKind.IIS_RECYCLE: IisRecycleTarget,
    TargetKind.KUBERNETES_ROLLOUT_RESTART: KubernetesRolloutRestartTarget,
    TargetKind.KUBERNETES_SECRET: KubernetesSecretTarget,
    TargetKind.SPRING_REFRESH: SpringRefreshTarget,
    TargetKind.SYSTEMD_RELOAD: SystemdReloadTarget,
    TargetKind.WEBHOOK: WebhookTarget,
}

__all__ = [
    "TARGETS",
    "AgentIntegration",
    "AgentSecretSyncTarget",
    "AwsSecretsManagerTarget",
    "AzureKeyVaultTarget",
    "CommandCheckTarget",
    "CommandTarget",
    "Delivery",
    "FileTarget",
    "HttpCheckTarget",
    "IisRecycleTarget",
    "KubernetesRolloutRestartTarget",
    "KubernetesSecretTarget",
    "PreflightRequest",
    "PreflightResult",
    "PublishRequest",
    "Readiness",
    "RollbackRequest",
    "SpringRefreshTarget",
    "StepResult",
    "SystemdReloadTarget",
    "Target",
    "TargetKind",
    "WebhookTarget",
]
