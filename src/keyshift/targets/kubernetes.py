"""`kubernetes_secret` and `kubernetes_rollout_restart`: deliver a value into a key (or
several keys) of a Kubernetes Secret, then restart the workload that reads it.

Both talk to the API server through the official `kubernetes` client, with one
`ApiClient` per target built from `kubeconfig` (or the pod's service account when it
is null), never from the process-wide default configuration. The client is
synchronous, so each call runs in a worker thread.

`kubernetes_secret` reads the Secret and writes a JSON merge patch that carries the
`resourceVersion` it read: only its own keys of `data` and keyshift's annotations change,
every other key stays as it is, and a write that raced another writer is refused by the
API server (409 Conflict), re-read and tried again rather than applied blindly. With
`keys`, every key (the password and, say, the username it belongs to) changes in that one
patch, so a consumer never reads a new password beside an old user. The annotations name
the rotation, version and fingerprint, never the value.

`kubernetes_rollout_restart` restarts a Deployment, StatefulSet or DaemonSet the way
`kubectl rollout restart` does (a pod-template annotation
`kubectl.kubernetes.io/restartedAt`), then waits until the rollout is complete by the
rules `kubectl rollout status` uses.

Errors: 429, 5xx and an unreachable server are transient (with the server's
Retry-After); 401, 403, 404, 422 and other refusals are permanent and quote the
Kubernetes Status reason and message with the object's namespace and name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar, get_args

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration, format_duration
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, PluginError, TransientError, scrub
from keyshift.targets.base import (
    VALUE_FIELDS,
    Delivery,
    PreflightRequest,
    PreflightResult,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
    field_value,
    key_entries,
)

T = TypeVar("T")

ROTATION_ANNOTATION: Final = "keyshift.io/rotation-id"
VERSION_ANNOTATION: Final = "keyshift.io/version-id"
FINGERPRINT_ANNOTATION: Final = "keyshift.io/fingerprint"
CREATED_ANNOTATION: Final = "keyshift.io/created-by-rotation"
"""Set on a Secret this target created, so a rollback of that rotation may delete it."""
RESTARTED_AT_ANNOTATION: Final = "kubectl.kubernetes.io/restartedAt"
"""The pod-template annotation `kubectl rollout restart` sets."""
RESTART_FOR_ANNOTATION: Final = "keyshift.io/restart-for"
"""Pod-template annotation naming the rotation a restart was for, so a repeated publish
(after a crash, say) does not restart the workload a second time."""
MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"
MAX_CONFLICTS: Final = 5
"""Writes refused with 409 Conflict, each followed by a fresh read, before giving up."""
CONFLICT_BACKOFF: Final = 0.2
"""Seconds before the first re-read after a conflict; doubles for each further one."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

WorkloadKind = Literal["Deployment", "StatefulSet", "DaemonSet"]
WORKLOAD_SHORTHANDS: Final[dict[str, WorkloadKind]] = {
    kind.lower(): kind for kind in get_args(WorkloadKind)
}
"""`deployment: NAME` and the like: a workload kind, lower case, as shorthand for `kind` and
`name`."""
_PLURAL: Final[dict[str, str]] = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
}


# --- configuration ----------------------------------------------------------------------


class KubernetesConnection(BaseModel):
    """How to reach the cluster and which namespace the object lives in."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    kubeconfig: Path | None = None
    """Path to a kubeconfig file; null uses the pod's in-cluster service account."""
    context: str | None = None
    """Context of the kubeconfig to use; its current context when unset."""
    namespace: str
    """Namespace of the object."""
    request_timeout: Duration = timedelta(seconds=30)
    """How long one API request may take before it counts as failed (transient)."""

    @field_validator("namespace")
    @classmethod
    def _dns_label(cls, namespace: str) -> str:
        if not _DNS_LABEL.match(namespace):
            raise ValueError("namespace must be a DNS label (lower case, digits, '-')")
        return namespace

    @field_validator("request_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    @model_validator(mode="after")
    def _context_needs_kubeconfig(self) -> KubernetesConnection:
        if self.context is not None and self.kubeconfig is None:
            raise ValueError("context needs a kubeconfig (in-cluster config has no contexts)")
        return self


def _cluster(config: KubernetesConnection) -> dict[str, str]:
    """Which cluster a config reaches: its kubeconfig and context, or in-cluster."""
    if config.kubeconfig is None:
        return {"cluster": "in-cluster service account"}
    return {
        "kubeconfig": str(config.kubeconfig),
        "context": config.context or "(current context)",
    }


def _dns_subdomain(name: str) -> str:
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise ValueError("must be a DNS subdomain name (lower case, digits, '-', '.')")
    return name


def _valid_data_key(key: str) -> bool:
    return len(key) <= 253 and bool(_SECRET_KEY.match(key)) and key not in {".", ".."}


class KubernetesSecretConfig(KubernetesConnection):
    """The Secret and the key (or keys) inside it that receive the version."""

    secret: str
    """Name of the Secret."""
    key: str | None = None
    """Key in the Secret's `data` that holds the value; other keys are kept."""
    keys: dict[str, str] | None = None
    """Instead of `key`: several keys of the Secret's `data`, each mapped to `value` (or
    `password`) or to a version attribute such as `username`, e.g. `{DB_USER: username,
    DB_PASSWORD: password}`. All of them change in one write; other keys are kept."""
    create: bool = False
    """Create the Secret (type Opaque) when it is missing; otherwise it must exist."""

    @field_validator("secret")
    @classmethod
    def _secret_name(cls, name: str) -> str:
        return _dns_subdomain(name)

    @field_validator("key")
    @classmethod
    def _data_key(cls, key: str | None) -> str | None:
        if key is not None and not _valid_data_key(key):
            raise ValueError("key must consist of letters, digits, '-', '_' or '.'")
        return key

    @field_validator("keys")
    @classmethod
    def _data_keys(cls, keys: dict[str, str] | None) -> dict[str, str] | None:
        for key in keys or {}:
            if not _valid_data_key(key):
                raise ValueError(f"key '{key}' must consist of letters, digits, '-', '_' or '.'")
        return keys

    @model_validator(mode="after")
    def _key_or_keys(self) -> KubernetesSecretConfig:
        key_entries(self.key, self.keys)
        return self

    def entries(self) -> dict[str, str]:
        """Every data key and the field of the version written there."""
        return key_entries(self.key, self.keys)

    def named_keys(self) -> dict[str, str]:
        """The keys written, for descriptions and step records: `{"key": K}` for one `key`
        (the shape recorded before `keys` existed, so stored evidence recomputes the same),
        else `{"keys": "A, B"}`."""
        if self.key is not None:
            return {"key": self.key}
        return {"keys": ", ".join(self.entries())}


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
            _dns_subdomain(name)
        except ValueError as exc:
            # Said here, so the error names the field written rather than `name`.
            raise ValueError(f"{field} {exc}") from None
        rest = {k: v for k, v in data.items() if k != field}
        return {**rest, "kind": WORKLOAD_SHORTHANDS[field], "name": name}

    @field_validator("name")
    @classmethod
    def _workload_name(cls, name: str) -> str:
        return _dns_subdomain(name)

    @field_validator("timeout", "interval")
    @classmethod
    def _positive_wait(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


# --- the API client ----------------------------------------------------------------------


class _Conflict(Exception):
    """The API server refused a write with 409: the object changed since it was read."""


class _NotFound(PermanentError):
    """The API server answered 404 for the object."""


def _api_client(config: KubernetesConnection) -> k8s.ApiClient:
    """A client of its own, never the process-wide default configuration."""
    configuration = k8s.Configuration()
    try:
        if config.kubeconfig is None:
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(
                config_file=str(config.kubeconfig),
                context=config.context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (ConfigException, OSError) as exc:
        where = config.kubeconfig or "in-cluster config"
        raise PermanentError(f"Kubernetes client config from {where}: {exc}") from exc
    # The engine retries transient failures with its own backoff; urllib3 retrying too
    # would multiply the wait (and repeat a PATCH whose answer was lost).
    configuration.retries = 0
    return k8s.ApiClient(configuration)


def _status_of(exc: ApiException) -> tuple[str, str]:
    """(reason, message) of the Kubernetes Status in an error answer."""
    try:
        body = json.loads(exc.body or b"{}")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    reason = str(body.get("reason") or exc.reason or "")
    message = str(body.get("message") or "")
    return reason, message


def _retry_after(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    value = str(headers.get("Retry-After", "")).strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class _Api:
    """Runs client calls in a thread and translates what fails into keyshift errors."""

    def __init__(self, config: KubernetesConnection, secrets: Callable[[], list[str]]) -> None:
        self.config = config
        self._client: k8s.ApiClient | None = None
        self._secrets = secrets

    async def client(self) -> k8s.ApiClient:
        """This target's client, built on first use (in a thread: loading a kubeconfig
        reads files and may run a credential plugin)."""
        if self._client is None:
            self._client = await asyncio.to_thread(_api_client, self.config)
        return self._client

    async def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` against the API; `what` names the object for errors."""
        kwargs["_request_timeout"] = self.config.request_timeout.total_seconds()
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as exc:
            # Not chained: the client's exception text carries the whole answer (body and
            # headers), which nothing here vouches for; ours quotes the Status, scrubbed.
            raise self._translate(what, exc) from None
        except urllib3.exceptions.HTTPError as exc:
            cause = getattr(exc, "reason", None)
            name = type(cause).__name__ if isinstance(cause, Exception) else type(exc).__name__
            raise TransientError(f"{what}: Kubernetes API unreachable ({name})") from exc

    async def find(self, what: str, fn: Callable[..., T], *args: Any) -> T | None:
        """Like `call` for a read, but None when the object does not exist."""
        try:
            return await self.call(what, fn, *args)
        except _NotFound:
            return None

    def _translate(self, what: str, exc: ApiException) -> Exception:
        status = int(exc.status or 0)
        reason, message = _status_of(exc)
        # The Status names objects and fields, not data; scrub anyway as a second line.
        text = scrub(f"{what}: HTTP {status} {reason}: {message}".rstrip(": "), self._secrets())
        if status == 409:
            return _Conflict(text)
        if status == 404:
            return _NotFound(text)
        if status == 429 or status >= 500 or status == 0:
            return TransientError(text, retry_after=_retry_after(exc))
        return PermanentError(text)

    async def allowed(self, verb: str, group: str, resource: str, name: str | None) -> str | None:
        """None when this identity may `verb` the resource, else why not."""
        review = k8s.V1SelfSubjectAccessReview(
            spec=k8s.V1SelfSubjectAccessReviewSpec(
                resource_attributes=k8s.V1ResourceAttributes(
                    namespace=self.config.namespace,
                    verb=verb,
                    group=group,
                    resource=resource,
                    name=name,
                )
            )
        )
        api = k8s.AuthorizationV1Api(await self.client())
        answer = await self.call(
            f"access review for {verb} {resource}",
            api.create_self_subject_access_review,
            review,
        )
        status = answer.status
        if status is not None and status.allowed:
            return None
        target = f"{resource}/{name}" if name else resource
        why = (status.reason or status.evaluation_error or "") if status is not None else ""
        denied = f"not allowed to {verb} {target} in namespace {self.config.namespace}"
        return f"{denied} ({why})" if why else denied


async def _blocked_by_access(
    api: _Api, checks: list[tuple[str, str, str, str | None]]
) -> PreflightResult | None:
    """The first denied (verb, group, resource, name) as a blocked result; None if all pass."""
    for verb, group, resource, name in checks:
        try:
            denied = await api.allowed(verb, group, resource, name)
        except (PluginError, _Conflict) as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if denied is not None:
            return PreflightResult(Readiness.BLOCKED, denied)
    return None


# --- kubernetes_secret ---------------------------------------------------------------------


def _encode(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _holds(data: Mapping[str, str], key: str, text: str) -> bool:
    """Whether `data[key]` decodes to `text` (compared in constant time)."""
    current = data.get(key)
    if current is None:
        return False
    try:
        decoded = base64.b64decode(current, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(decoded, text.encode("utf-8"))


def _identity(delivery: Delivery | None) -> dict[str, str | None]:
    """keyshift's annotations for a version; all null (removed) for none."""
    return {
        ROTATION_ANNOTATION: delivery.rotation_id if delivery else None,
        VERSION_ANNOTATION: delivery.version_id if delivery else None,
        FINGERPRINT_ANNOTATION: delivery.fingerprint if delivery else None,
    }


class KubernetesSecretTarget:
    """Writes the version into its key(s) of a Kubernetes Secret, keeping every other key."""

    kind: ClassVar[str] = "kubernetes_secret"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = KubernetesSecretConfig

    @classmethod
    def describe(cls, config: KubernetesSecretConfig) -> dict[str, str]:
        """Where it writes: cluster, namespace, Secret and key(s). Never a value."""
        return {
            **_cluster(config),
            "namespace": config.namespace,
            "secret": config.secret,
            **config.named_keys(),
        }

    def __init__(self, config: KubernetesSecretConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self._known: list[str] = []
        self.api = _Api(config, lambda: self._known)
        self._what = f"Secret {config.namespace}/{config.secret}"
        self._entries = config.entries()
        # Keys that carry the secret value: a rollback removes nothing unless they still
        # hold the failed version's value (with no such key, every key must still hold it).
        self._proof = [k for k, f in self._entries.items() if f in VALUE_FIELDS] or list(
            self._entries
        )

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        """Ready when this identity may read and patch the Secret (and create and delete
        it when `create` is true), and the Secret exists unless `create` is true.
        Changes nothing."""
        name = self.config.secret
        checks: list[tuple[str, str, str, str | None]] = [
            ("get", "", "secrets", name),
            ("patch", "", "secrets", name),
        ]
        if self.config.create:
            checks += [("create", "", "secrets", None), ("delete", "", "secrets", name)]
        blocked = await _blocked_by_access(self.api, checks)
        if blocked is not None:
            return blocked
        try:
            found = await self._get()
        except (PluginError, _Conflict) as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if found is None and not self.config.create:
            return PreflightResult(
                Readiness.BLOCKED, f"{self._what} does not exist and create is false"
            )
        if found is not None and found.immutable:
            return PreflightResult(Readiness.BLOCKED, f"{self._what} is immutable")
        [(word, names)] = self.config.named_keys().items()
        return PreflightResult(Readiness.READY, f"may get and patch {self._what}; {word} {names}")

    async def publish(self, request: PublishRequest) -> StepResult:
        """Set every key to its field of the version in one write and annotate the version.

        Idempotent: when every key already holds its field nothing is written.
        """
        delivery = request.delivery
        self._remember(delivery, request.previous)
        return await self._converge(delivery, created_by=delivery.rotation_id)

    async def rollback(self, request: RollbackRequest) -> StepResult:
        """Put the previous version back in every key. Without a previous version, remove
        the keys that still hold the failed version's fields, provided its value is still
        there (or delete the Secret if this rotation created it and it holds only those
        keys). Idempotent."""
        self._remember(request.failed, request.previous)
        if request.previous is not None:
            return await self._converge(request.previous, created_by=None)
        return await self._remove(request.failed)

    def _remember(self, *deliveries: Delivery | None) -> None:
        """Values to scrub from any error text this target raises."""
        for d in deliveries:
            if d is not None:
                self._known += [d.value.reveal(), _encode(d.value.reveal())]

    async def _get(self) -> k8s.V1Secret | None:
        api = k8s.CoreV1Api(await self.api.client())
        found: k8s.V1Secret | None = await self.api.find(
            self._what, api.read_namespaced_secret, self.config.secret, self.config.namespace
        )
        return found

    async def _converge(self, wanted: Delivery, *, created_by: str | None) -> StepResult:
        """Make every key hold its field of `wanted`, re-reading after each conflict."""
        conflicts = 0
        while True:
            try:
                return await self._converge_once(wanted, created_by, conflicts)
            except _Conflict:
                conflicts += 1
                if conflicts > MAX_CONFLICTS:
                    raise TransientError(
                        f"{self._what}: still changing under us after {conflicts} "
                        "conflicting writes; not overwritten"
                    ) from None
                await self.context.sleep(CONFLICT_BACKOFF * 2.0 ** (conflicts - 1))

    async def _converge_once(
        self, wanted: Delivery, created_by: str | None, conflicts: int
    ) -> StepResult:
        values = self._values(wanted)
        secret = await self._get()
        if secret is None:
            if not self.config.create:
                raise PermanentError(
                    f"{self._what} does not exist; create it first or set create: true"
                )
            version = await self._create(wanted, values, created_by)
            return self._result("created", version, conflicts)
        data = secret.data or {}
        if all(_holds(data, key, text) for key, text in values.items()):
            return self._result("unchanged", secret.metadata.resource_version, conflicts)
        if secret.immutable:
            raise PermanentError(f"{self._what} is immutable; its data cannot change")
        patch = {
            "metadata": {
                "resourceVersion": secret.metadata.resource_version,
                "annotations": _identity(wanted),
            },
            "data": {key: _encode(text) for key, text in values.items()},
        }
        version = await self._patch(patch)
        return self._result("updated", version, conflicts)

    async def _remove(self, failed: Delivery) -> StepResult:
        conflicts = 0
        while True:
            try:
                return await self._remove_once(failed, conflicts)
            except _Conflict:
                conflicts += 1
                if conflicts > MAX_CONFLICTS:
                    raise TransientError(
                        f"{self._what}: still changing under us after {conflicts} "
                        "conflicting writes; key not removed"
                    ) from None
                await self.context.sleep(CONFLICT_BACKOFF * 2.0 ** (conflicts - 1))

    async def _remove_once(self, failed: Delivery, conflicts: int) -> StepResult:
        values = self._values(failed)
        secret = await self._get()
        if secret is None:
            return self._result("absent", None, conflicts)
        data = secret.data or {}
        held = {key for key, text in values.items() if _holds(data, key, text)}
        if not all(key in held for key in self._proof):
            # Not the value this rotation wrote (never written, or someone else's since):
            # removing it would destroy what keyshift did not put there.
            return self._result("unchanged", secret.metadata.resource_version, conflicts)
        annotations = secret.metadata.annotations or {}
        version = secret.metadata.resource_version
        if annotations.get(CREATED_ANNOTATION) == failed.rotation_id and set(data) == held:
            await self._delete(version)
            return self._result("deleted", None, conflicts)
        # A key someone has set to another value since is theirs now and stays.
        patch = {
            "metadata": {"resourceVersion": version, "annotations": _identity(None)},
            "data": dict.fromkeys(sorted(held)),
        }
        return self._result("removed", await self._patch(patch), conflicts)

    def _values(self, delivery: Delivery) -> dict[str, str]:
        """Each key's text for `delivery`; PermanentError if the version lacks a field."""
        return {key: field_value(delivery, field) for key, field in self._entries.items()}

    async def _patch(self, patch: dict[str, Any]) -> str:
        api = k8s.CoreV1Api(await self.api.client())
        written: k8s.V1Secret = await self.api.call(
            self._what,
            api.patch_namespaced_secret,
            self.config.secret,
            self.config.namespace,
            patch,
            _content_type=MERGE_PATCH,
        )
        return str(written.metadata.resource_version)

    async def _create(
        self, wanted: Delivery, values: dict[str, str], created_by: str | None
    ) -> str:
        annotations = {k: v for k, v in _identity(wanted).items() if v is not None}
        if created_by is not None:
            annotations[CREATED_ANNOTATION] = created_by
        body = k8s.V1Secret(
            api_version="v1",
            kind="Secret",
            type="Opaque",
            metadata=k8s.V1ObjectMeta(name=self.config.secret, annotations=annotations),
            data={key: _encode(text) for key, text in values.items()},
        )
        api = k8s.CoreV1Api(await self.api.client())
        # A 409 AlreadyExists (created by someone since the read) is a conflict like any
        # other: the caller reads again.
        created: k8s.V1Secret = await self.api.call(
            self._what, api.create_namespaced_secret, self.config.namespace, body
        )
        return str(created.metadata.resource_version)

    async def _delete(self, resource_version: str) -> None:
        options = k8s.V1DeleteOptions(
            preconditions=k8s.V1Preconditions(resource_version=resource_version)
        )
        api = k8s.CoreV1Api(await self.api.client())
        await self.api.call(
            self._what,
            api.delete_namespaced_secret,
            self.config.secret,
            self.config.namespace,
            body=options,
        )

    def _result(self, change: str, resource_version: str | None, conflicts: int) -> StepResult:
        return StepResult(
            {
                "namespace": self.config.namespace,
                "secret": self.config.secret,
                **self.config.named_keys(),
                "change": change,
                "resource_version": resource_version,
                "conflicts": conflicts,
            }
        )


# --- kubernetes_rollout_restart --------------------------------------------------------------


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


class KubernetesRolloutRestartTarget:
    """Restarts a Deployment, StatefulSet or DaemonSet so its pods read the new value."""

    kind: ClassVar[str] = "kubernetes_rollout_restart"
    phase: ClassVar[Phase] = Phase.RELOAD
    Config: ClassVar[type[BaseModel]] = KubernetesRolloutRestartConfig

    @classmethod
    def describe(cls, config: KubernetesRolloutRestartConfig) -> dict[str, str]:
        """What it restarts: cluster, namespace and workload."""
        return {
            **_cluster(config),
            "namespace": config.namespace,
            "workload": f"{config.kind}/{config.name}",
        }

    def __init__(self, config: KubernetesRolloutRestartConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.api = _Api(config, list)
        self._what = f"{config.kind} {config.namespace}/{config.name}"
        self._plural = _PLURAL[config.kind]

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        """Ready when this identity may read and patch the workload, it exists and a
        restart would replace its pods. Changes nothing."""
        checks: list[tuple[str, str, str, str | None]] = [
            ("get", "apps", self._plural, self.config.name),
            ("patch", "apps", self._plural, self.config.name),
        ]
        blocked = await _blocked_by_access(self.api, checks)
        if blocked is not None:
            return blocked
        try:
            self._restartable(await self._read())
        except (PluginError, _Conflict) as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        return PreflightResult(Readiness.READY)

    async def publish(self, request: PublishRequest) -> StepResult:
        """Restart, then (with `wait`) wait for the rollout to complete.

        Idempotent: a repeat for the same rotation and version does not restart the
        workload again; it only waits for the rollout.
        """
        d = request.delivery
        return await self._restart(f"{d.rotation_id}/{d.version_id}")

    async def rollback(self, request: RollbackRequest) -> StepResult:
        """Restart again so the pods read the restored value. Idempotent like publish."""
        return await self._restart(f"{request.failed.rotation_id}/rollback")

    async def _apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(await self.api.client())

    async def _read(self) -> Any:
        apps = await self._apps()
        read = {
            "Deployment": apps.read_namespaced_deployment,
            "StatefulSet": apps.read_namespaced_stateful_set,
            "DaemonSet": apps.read_namespaced_daemon_set,
        }[self.config.kind]
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
        apps = await self._apps()
        write = {
            "Deployment": apps.patch_namespaced_deployment,
            "StatefulSet": apps.patch_namespaced_stateful_set,
            "DaemonSet": apps.patch_namespaced_daemon_set,
        }[self.config.kind]
        try:
            return await self.api.call(
                self._what,
                write,
                self.config.name,
                self.config.namespace,
                patch,
                _content_type=STRATEGIC_MERGE_PATCH,
            )
        except _Conflict as exc:
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
