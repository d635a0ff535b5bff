"""`kubernetes_secret`, `kubernetes_rollout_restart` and `kubernetes_configmap`: deliver a
value into a key (or several keys) of a Kubernetes Secret, restart the workload that reads
it, and keep a JWKS document in a ConfigMap key.

All talk to the API server through the official `kubernetes` client (`client`): the
Secret writer is in `secret`, the restart and the wait for its rollout in `rollout`, the
ConfigMap's JWKS in `configmap`.
"""

from __future__ import annotations

from keyshift.targets.kubernetes.client import KubernetesConnection
from keyshift.targets.kubernetes.configmap import (
    KubernetesConfigMapConfig,
    KubernetesConfigMapTarget,
)
from keyshift.targets.kubernetes.rollout import (
    RESTART_FOR_ANNOTATION,
    RESTARTED_AT_ANNOTATION,
    WORKLOAD_SHORTHANDS,
    KubernetesRolloutRestartConfig,
    KubernetesRolloutRestartTarget,
    WorkloadKind,
)
from keyshift.targets.kubernetes.secret import (
    CREATED_ANNOTATION,
    FINGERPRINT_ANNOTATION,
    ROTATION_ANNOTATION,
    VERSION_ANNOTATION,
    KubernetesSecretConfig,
    KubernetesSecretTarget,
)

__all__ = [
    "CREATED_ANNOTATION",
    "FINGERPRINT_ANNOTATION",
    "RESTARTED_AT_ANNOTATION",
    "RESTART_FOR_ANNOTATION",
    "ROTATION_ANNOTATION",
    "VERSION_ANNOTATION",
    "WORKLOAD_SHORTHANDS",
    "KubernetesConfigMapConfig",
    "KubernetesConfigMapTarget",
    "KubernetesConnection",
    "KubernetesRolloutRestartConfig",
    "KubernetesRolloutRestartTarget",
    "KubernetesSecretConfig",
    "KubernetesSecretTarget",
    "WorkloadKind",
]
