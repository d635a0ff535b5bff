"""`kubernetes_rollout_restart`: restart the workload that reads a Kubernetes Secret.

It restarts a Deployment, StatefulSet or DaemonSet the way `kubectl rollout restart`
does (a pod-template annotation `kubectl.kubernetes.io/restartedAt`), then waits until
the rollout is complete by the rules `kubectl rollout status` uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, Literal, get_args

from kubernetes import client as k8s
from pydantic import BaseModel, field_validator, model_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration, format_duration
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, PluginError, TransientError
from keyshift.targets import base
from keyshift.targets.base import BaseTarget, PreflightResult, Readiness, StepResult, positive
from keyshift.targets.kubernetes.client import (
    Conflict,
    KubernetesApi,
    KubernetesConnection,
    blocked_by_access,
    cluster,
    dns_subdomain,
)

RESTARTED_AT_ANNOTATION: Final = "kubectl.kubernetes.io/restartedAt"
"""The pod-template annotation `kubectl rollout restart` sets."""
RESTART_FOR_ANNOTATION: Final = "keyshift.io/restart-for"
"""Pod-template annotation naming the rotation a restart was for, so a repeated publish
(after a crash, say) does not restart the workload a second time."""
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"

WorkloadKind = Literal["Deployment", "StatefulSet", "DaemonSet"]
WORKLOAD_SHORTHANDS: Final[dict[str, WorkloadKind]] = {
    kind.lower(): kind for kind in get_args(WorkloadKind)
}
"""`deployment: NAME` and the like: a workload kind, lower case, as shorthand for `kind` and
`name`."""
_CALL: Final[dict[str, str]] = {
    "Deployment": "deployment",
    "StatefulSet": "stateful_set",
    "DaemonSet": "daemon_set",
}
"""How the kubernetes client's AppsV1Api names each kind in its calls
(`read_namespaced_stateful_set`, `patch_namespaced_daemon_set`)."""
_PLURAL: Final[dict[str, str]] = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
}


class KubernetesRolloutRestartConfig(KubernetesConnection):
    """The workload to restart and how long to wait for its rollout. `deployment: NAME`,
    `statefulset: NAME` or `daemonset: NAME` is shorthand for `kind` and `name`."""

    kind: WorkloadKind
    """Kind of the workload."""
    name: str
    """Name of the workload."""
    wait: bool = True
    """Wait until the rollout is complete, as `kubectl rollout status` decides."""
    timeout: Duration = timedelta(minutes=5)
    """How long to wait for the rollout before the step fails."""
    interval: Duration = timedelta(seconds=2)
    """Wait between two reads of the rollout's status."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """`deployment: NAME` becomes `kind: Deployment, name: NAME`, so the rest of the
        target sees one form."""
        if not isinstance(data, Mapping):
            return data
        given = [field for field in WORKLOAD_SHORTHANDS if field in data]
        if not given:
            return data
        if len(given) > 1:
            raise ValueError(f"give one workload: {' and '.join(given)} are both set")
        [field] = given
        if "kind" in data or "name" in data:
            raise ValueError(f"give either {field} or kind and name, not both")
        name = data[field]
        if not isinstance(name, str):
            raise ValueError(f"{field} must be the workload's name")
        try:
            dns_subdomain(name)
        except ValueError as exc:
            # Said here, so the error names the field written rather than `name`.
            raise ValueError(f"{field} {exc}") from None
        rest = {k: v for k, v in data.items() if k != field}
        return {**rest, "kind": WORKLOAD_SHORTHANDS[field], "name": name}

    @field_validator("name")
    @classmethod
    def _workload_name(cls, name: str) -> str:
        return dns_subdomain(name)

    @field_validator("timeout", "interval")
    @classmethod
    def _positive_wait(cls, value: timedelta) -> timedelta:
        return positive(value)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Rollout:
    """One reading of a rollout, judged the way `kubectl rollout status` judges it."""

    done: bool
    message: str
    failed: bool = False


def _deployment_rollout(obj: Any) -> _Rollout:
    spec, status = obj.spec, obj.status or k8s.V1DeploymentStatus()
    generation = obj.metadata.generation or 0
    if generation > (status.observed_generation or 0):
        return _Rollout(False, "waiting for the deployment spec update to be observed")
    for condition in status.conditions or []:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            return _Rollout(False, "the deployment exceeded its progress deadline", failed=True)
    updated = status.updated_replicas or 0
    if spec.replicas is not None and updated < spec.replicas:
        return _Rollout(False, f"{updated} out of {spec.replicas} new replicas have been updated")
    if (status.replicas or 0) > updated:
        return _Rollout(False, f"{status.replicas - updated} old replicas are pending termination")
    available = status.available_replicas or 0
    if available < updated:
        return _Rollout(False, f"{available} of {updated} updated replicas are available")
    return _Rollout(True, "successfully rolled out")


def _statefulset_rollout(obj: Any) -> _Rollout:
    spec, status = obj.spec, obj.status
    observed = (status.observed_generation or 0) if status else 0
    if observed == 0 or (obj.metadata.generation or 0) > observed:
        return _Rollout(False, "waiting for the statefulset spec update to be observed")
    ready = status.ready_replicas or 0
    if spec.replicas is not None and ready < spec.replicas:
        return _Rollout(False, f"{ready} of {spec.replicas} pods are ready")
    rolling = spec.update_strategy.rolling_update if spec.update_strategy else None
    if rolling is not None and rolling.partition:
        wanted = (spec.replicas or 0) - rolling.partition
        if (status.updated_replicas or 0) < wanted:
            return _Rollout(
                False, f"{status.updated_replicas or 0} of {wanted} partitioned pods updated"
            )
        return _Rollout(True, "partitioned roll out complete")
    if status.update_revision != status.current_revision:
        return _Rollout(
            False,
            f"{status.updated_replicas or 0} pods at revision {status.update_revision}, "
            "rolling update not complete",
        )
    return _Rollout(True, "rolling update complete")


def _daemonset_rollout(obj: Any) -> _Rollout:
    status = obj.status
    if status is None or (obj.metadata.generation or 0) > (status.observed_generation or 0):
        return _Rollout(False, "waiting for the daemon set spec update to be observed")
    desired = status.desired_number_scheduled or 0
    updated = status.updated_number_scheduled or 0
    if updated < desired:
        return _Rollout(False, f"{updated} out of {desired} new pods have been updated")
    available = status.number_available or 0
    if available < desired:
        return _Rollout(False, f"{available} of {desired} updated pods are available")
    return _Rollout(True, "successfully rolled out")


_ROLLOUT: Final[dict[str, Callable[[Any], _Rollout]]] = {
    "Deployment": _deployment_rollout,
    "StatefulSet": _statefulset_rollout,
    "DaemonSet": _daemonset_rollout,
}


class KubernetesRolloutRestartTarget(BaseTarget[KubernetesRolloutRestartConfig]):
    """Restarts a Deployment, StatefulSet or DaemonSet so its pods read the new value."""

    kind: ClassVar[str] = "kubernetes_rollout_restart"
    phase: ClassVar[Phase] = Phase.RELOAD
    Config: ClassVar[type[BaseModel]] = KubernetesRolloutRestartConfig

    @classmethod
    def describe(cls, config: KubernetesRolloutRestartConfig) -> dict[str, str]:
        """What it restarts: cluster, namespace and workload."""
        return {
            **cluster(config),
            "namespace": config.namespace,
            "workload": f"{config.kind}/{config.name}",
        }

    def __init__(self, config: KubernetesRolloutRestartConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.api = KubernetesApi(config, list)
        self._what = f"{config.kind} {config.namespace}/{config.name}"
        self._plural = _PLURAL[config.kind]

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Ready when this identity may read and patch the workload, it exists and a
        restart would replace its pods. Changes nothing."""
        checks: list[tuple[str, str, str, str | None]] = [
            ("get", "apps", self._plural, self.config.name),
            ("patch", "apps", self._plural, self.config.name),
        ]
        blocked = await blocked_by_access(self.api, checks)
        if blocked is not None:
            return blocked
        try:
            self._restartable(await self._read())
        except (PluginError, Conflict) as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        return PreflightResult(Readiness.READY)

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Restart, then (with `wait`) wait for the rollout to complete.

        Idempotent: a repeat for the same rotation and version does not restart the
        workload again; it only waits for the rollout.
        """
        d = request.delivery
        return await self._restart(f"{d.rotation_id}/{d.version_id}")

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Restart again so the pods read the restored value. Idempotent like publish."""
        return await self._restart(f"{request.failed.rotation_id}/rollback")

    async def _apps(self, verb: str) -> Callable[..., Any]:
        """The apps/v1 client call `verb` (read or patch) for this workload's kind."""
        apps = k8s.AppsV1Api(await self.api.client())
        call: Callable[..., Any] = getattr(apps, f"{verb}_namespaced_{_CALL[self.config.kind]}")
        return call

    async def _read(self) -> Any:
        read = await self._apps("read")
        return await self.api.call(self._what, read, self.config.name, self.config.namespace)

    def _restartable(self, obj: Any) -> None:
        """Raise when a restart cannot replace the pods, as `kubectl rollout restart` does."""
        if self.config.kind == "Deployment" and obj.spec.paused:
            raise PermanentError(f"{self._what} is paused; resume its rollout first")
        strategy = obj.spec.update_strategy if self.config.kind != "Deployment" else None
        if strategy is not None and strategy.type not in (None, "RollingUpdate"):
            raise PermanentError(
                f"{self._what} uses the {strategy.type} update strategy; "
                "a restart would not replace its pods"
            )

    async def _restart(self, marker: str) -> StepResult:
        obj = await self._read()
        self._restartable(obj)
        annotations = (obj.spec.template.metadata.annotations or {}) if obj.spec.template else {}
        restarted = annotations.get(RESTART_FOR_ANNOTATION) != marker
        restarted_at = annotations.get(RESTARTED_AT_ANNOTATION)
        if restarted:
            restarted_at = _rfc3339(self.context.now())
            patch = {
                "spec": {
                    "template": {
                        "metadata": {
                            "annotations": {
                                RESTARTED_AT_ANNOTATION: restarted_at,
                                RESTART_FOR_ANNOTATION: marker,
                            }
                        }
                    }
                }
            }
            obj = await self._patch(patch)
        detail: dict[str, Any] = {
            "kind": self.config.kind,
            "namespace": self.config.namespace,
            "name": self.config.name,
            "generation": obj.metadata.generation,
            "restarted_at": restarted_at,
            "restarted": restarted,
        }
        if self.config.wait:
            detail.update(await self._until_rolled_out())
        return StepResult(detail)

    async def _patch(self, patch: dict[str, Any]) -> Any:
        write = await self._apps("patch")
        try:
            return await self.api.call(
                self._what,
                write,
                self.config.name,
                self.config.namespace,
                patch,
                _content_type=STRATEGIC_MERGE_PATCH,
            )
        except Conflict as exc:
            # A patch without a resourceVersion is not refused for staleness; a 409 here
            # is the server's own contention and passes on retry.
            raise TransientError(str(exc)) from exc

    async def _until_rolled_out(self) -> dict[str, Any]:
        """Read the status every `interval` until complete; PermanentError at `timeout`.

        Permanent, not transient: this loop is the retry, and running the step again
        would restart the pods once more.
        """
        deadline = self.context.now() + self.config.timeout
        judge = _ROLLOUT[self.config.kind]
        checks = 0
        while True:
            checks += 1
            rollout = judge(await self._read())
            if rollout.done:
                return {"rolled_out": True, "status_checks": checks}
            if rollout.failed:
                raise PermanentError(f"{self._what} rollout failed: {rollout.message}")
            remaining = deadline - self.context.now()
            if remaining <= timedelta(0):
                raise PermanentError(
                    f"{self._what} did not finish rolling out within "
                    f"{format_duration(self.config.timeout)} ({checks} status checks); "
                    f"last seen: {rollout.message}"
                )
            await self.context.sleep(min(self.config.interval, remaining).total_seconds())
