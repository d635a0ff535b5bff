"""Targets: delivery steps to consumers. `TARGETS` maps an action's config `type` to a class.

`TARGETS` is a `keyshift.registry.Registry`: a class (and its SDK: boto3, kubernetes,
azure) is imported when its type is first looked up, and so are the classes this package
re-exports, when first named.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from keyshift.registry import Registry, lazy_exports
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

if TYPE_CHECKING:
    from keyshift.targets.agent import (
        AgentIntegration,
        AgentSecretSyncTarget,
        IisRecycleTarget,
        SystemdReloadTarget,
    )
    from keyshift.targets.aws_kms import KmsAliasTarget, KmsRewrapTarget
    from keyshift.targets.aws_secretsmanager import AwsSecretsManagerTarget
    from keyshift.targets.azure_keyvault import AzureKeyVaultTarget
    from keyshift.targets.command import CommandCheckTarget, CommandTarget
    from keyshift.targets.file import FileTarget
    from keyshift.targets.http_check import HttpCheckTarget
    from keyshift.targets.jwks_serve import JwksServeTarget
    from keyshift.targets.kubernetes import (
        KubernetesConfigMapTarget,
        KubernetesRolloutRestartTarget,
        KubernetesSecretTarget,
    )
    from keyshift.targets.spring_refresh import SpringRefreshTarget
    from keyshift.targets.webhook import (
        JwksWebhookTarget,
        ThumbprintsWebhookTarget,
        WebhookTarget,
    )


class TargetKind(StrEnum):
    AGENT_SECRET_SYNC = "agent_secret_sync"  # noqa: S105 (a target type, not a password)
    AWS_SECRETSMANAGER = "aws_secretsmanager"
    AZURE_KEYVAULT = "azure_keyvault"
    COMMAND = "command"
    COMMAND_CHECK = "command_check"
    FILE = "file"
    HTTP_CHECK = "http_check"
    IIS_RECYCLE = "iis_recycle"
    JWKS_SERVE = "jwks_serve"
    JWKS_WEBHOOK = "jwks_webhook"
    KMS_ALIAS = "kms_alias"
    KMS_REWRAP = "kms_rewrap"
    KUBERNETES_CONFIGMAP = "kubernetes_configmap"
    KUBERNETES_ROLLOUT_RESTART = "kubernetes_rollout_restart"
    KUBERNETES_SECRET = "kubernetes_secret"  # noqa: S105 (a target type, not a password)
    SPRING_REFRESH = "spring_refresh"
    SYSTEMD_RELOAD = "systemd_reload"
    THUMBPRINTS_WEBHOOK = "thumbprints_webhook"
    WEBHOOK = "webhook"


_CLASSES = {
    "AgentSecretSyncTarget": "keyshift.targets.agent:AgentSecretSyncTarget",
    "AwsSecretsManagerTarget": "keyshift.targets.aws_secretsmanager:AwsSecretsManagerTarget",
    "AzureKeyVaultTarget": "keyshift.targets.azure_keyvault:AzureKeyVaultTarget",
    "CommandCheckTarget": "keyshift.targets.command:CommandCheckTarget",
    "CommandTarget": "keyshift.targets.command:CommandTarget",
    "FileTarget": "keyshift.targets.file:FileTarget",
    "HttpCheckTarget": "keyshift.targets.http_check:HttpCheckTarget",
    "IisRecycleTarget": "keyshift.targets.agent:IisRecycleTarget",
    "JwksServeTarget": "keyshift.targets.jwks_serve:JwksServeTarget",
    "JwksWebhookTarget": "keyshift.targets.webhook:JwksWebhookTarget",
    "KmsAliasTarget": "keyshift.targets.aws_kms:KmsAliasTarget",
    "KmsRewrapTarget": "keyshift.targets.aws_kms:KmsRewrapTarget",
    "KubernetesConfigMapTarget": "keyshift.targets.kubernetes:KubernetesConfigMapTarget",
    "KubernetesRolloutRestartTarget": "keyshift.targets.kubernetes:KubernetesRolloutRestartTarget",
    "KubernetesSecretTarget": "keyshift.targets.kubernetes:KubernetesSecretTarget",
    "SpringRefreshTarget": "keyshift.targets.spring_refresh:SpringRefreshTarget",
    "SystemdReloadTarget": "keyshift.targets.agent:SystemdReloadTarget",
    "ThumbprintsWebhookTarget": "keyshift.targets.webhook:ThumbprintsWebhookTarget",
    "WebhookTarget": "keyshift.targets.webhook:WebhookTarget",
}

# Values are the classes; each has `kind`, `phase`, `Config` and takes (config, context).
TARGETS: Registry[Any] = Registry(
    {
        TargetKind.AGENT_SECRET_SYNC: _CLASSES["AgentSecretSyncTarget"],
        TargetKind.AWS_SECRETSMANAGER: _CLASSES["AwsSecretsManagerTarget"],
        TargetKind.AZURE_KEYVAULT: _CLASSES["AzureKeyVaultTarget"],
        TargetKind.COMMAND: _CLASSES["CommandTarget"],
        TargetKind.COMMAND_CHECK: _CLASSES["CommandCheckTarget"],
        TargetKind.FILE: _CLASSES["FileTarget"],
        TargetKind.HTTP_CHECK: _CLASSES["HttpCheckTarget"],
        TargetKind.IIS_RECYCLE: _CLASSES["IisRecycleTarget"],
        TargetKind.JWKS_SERVE: _CLASSES["JwksServeTarget"],
        TargetKind.JWKS_WEBHOOK: _CLASSES["JwksWebhookTarget"],
        TargetKind.KMS_ALIAS: _CLASSES["KmsAliasTarget"],
        TargetKind.KMS_REWRAP: _CLASSES["KmsRewrapTarget"],
        TargetKind.KUBERNETES_CONFIGMAP: _CLASSES["KubernetesConfigMapTarget"],
        TargetKind.KUBERNETES_ROLLOUT_RESTART: _CLASSES["KubernetesRolloutRestartTarget"],
        TargetKind.KUBERNETES_SECRET: _CLASSES["KubernetesSecretTarget"],
        TargetKind.SPRING_REFRESH: _CLASSES["SpringRefreshTarget"],
        TargetKind.SYSTEMD_RELOAD: _CLASSES["SystemdReloadTarget"],
        TargetKind.THUMBPRINTS_WEBHOOK: _CLASSES["ThumbprintsWebhookTarget"],
        TargetKind.WEBHOOK: _CLASSES["WebhookTarget"],
    }
)

AGENT_KINDS: frozenset[str] = frozenset(
    {TargetKind.AGENT_SECRET_SYNC, TargetKind.IIS_RECYCLE, TargetKind.SYSTEMD_RELOAD}
)
"""The action types a host agent performs: those whose classes say `runs_on_agent`
(known without importing them; a test keeps the two in step)."""

VERIFY_KINDS: frozenset[str] = frozenset({TargetKind.COMMAND_CHECK, TargetKind.HTTP_CHECK})
"""The action types that check a cutover: those whose classes run in the verify phase
(known without importing them; a test keeps the two in step)."""

__getattr__ = lazy_exports(
    __name__, {"AgentIntegration": "keyshift.targets.agent:AgentIntegration", **_CLASSES}
)

__all__ = [
    "AGENT_KINDS",
    "TARGETS",
    "VERIFY_KINDS",
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
    "JwksServeTarget",
    "JwksWebhookTarget",
    "KmsAliasTarget",
    "KmsRewrapTarget",
    "KubernetesConfigMapTarget",
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
    "ThumbprintsWebhookTarget",
    "WebhookTarget",
]
