"""A local HTTPS double of the parts of the Kubernetes API that keyshift's targets use,
driven through the real `kubernetes` Python client with a kubeconfig that points at it.

Documented behaviours it follows (kubernetes.io):

- Secret (https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/secret-v1/):
  `GET/PUT/PATCH/DELETE /api/v1/namespaces/{ns}/secrets/{name}` and
  `POST /api/v1/namespaces/{ns}/secrets`; `data` values are base64; `type` defaults to
  `Opaque`; `stringData` is merged into `data` on write and never read back; an
  `immutable: true` Secret refuses data changes with 422 Invalid. A Secret's `type`
  cannot change (422 Invalid, "field is immutable"), and a `kubernetes.io/tls` Secret
  must hold both `tls.crt` and `tls.key` (422 Invalid, "Required value"), on create and
  on every update (https://kubernetes.io/docs/concepts/configuration/secret/#tls-secrets).
- Patch content types (https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/):
  `application/strategic-merge-patch+json`, `application/merge-patch+json` (RFC 7386:
  objects merge key by key, `null` deletes a key) and `application/json-patch+json`
  (RFC 6902); any other type is refused with 415. For the maps used here (data,
  annotations) a strategic merge patch merges like a merge patch. The content type of
  every request is recorded, since which one the client picks has varied by release.
- Optimistic concurrency (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions
  and the API conventions on concurrency control): every change gets a new
  `metadata.resourceVersion`; a PUT must carry it (else 422) and a PUT, or a patch that
  sets it, with a stale one is refused with 409 reason `Conflict`; a patch without it is
  not checked. A write that changes nothing does not bump it. DELETE honours
  `preconditions.resourceVersion` the same way. A POST of an existing name is 409
  `AlreadyExists`.
- Errors are `Status` objects (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/):
  `{"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
  "message", "reason", "details", "code"}`.
- Authentication (https://kubernetes.io/docs/reference/access-authn-authz/authentication/):
  a bearer token; a missing or wrong one is 401 `Unauthorized`.
- Authorization (https://kubernetes.io/docs/reference/access-authn-authz/authorization/#checking-api-access):
  RBAC rules decide each request (403 `Forbidden`, naming user, verb, resource, API
  group and namespace); `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`
  answers `status.allowed` for `spec.resourceAttributes` from the same rules. Request
  verbs: GET get, POST create, PUT update, PATCH patch, DELETE delete.
- ConfigMap (https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/config-map-v1/):
  `GET/PUT/PATCH /api/v1/namespaces/{ns}/configmaps/{name}` and
  `POST /api/v1/namespaces/{ns}/configmaps`; `data` values are plain strings (not
  base64); an `immutable: true` ConfigMap refuses data changes with 422 Invalid. The same
  resourceVersion rules (409 on a stale one, no bump for a write that changes nothing),
  RBAC, throttling (`fail`), hanging (`hang`) and `before_next_configmap_write` switches
  as for Secrets apply.
- Deployments, StatefulSets, DaemonSets (`/apis/apps/v1/namespaces/{ns}/{plural}/{name}`,
  https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#deployment-status):
  a change of `.spec` bumps `metadata.generation`; a change of `.spec.template` starts a
  rollout, which the controller reports through `status.observedGeneration`,
  `updatedReplicas`, `availableReplicas` (StatefulSet: `readyReplicas`,
  `currentRevision`/`updateRevision`; DaemonSet: `updatedNumberScheduled`,
  `numberAvailable`). Here the simulated controller completes a rollout after a set
  number of status reads (or never, or with `ProgressDeadlineExceeded`).
- `kubectl rollout restart`
  (https://kubernetes.io/docs/reference/kubectl/generated/kubectl_rollout/kubectl_rollout_restart/)
  patches the pod-template annotation `kubectl.kubernetes.io/restartedAt`.
- Throttling (https://kubernetes.io/docs/concepts/cluster-administration/flow-control/):
  429 with a `Retry-After` header in seconds.

What it keeps: Secrets (it is a store of secrets, so it holds their data; tests read it
through `secret_data`), ConfigMaps (`configmap_data`), workloads and a `requests` log of
method, path and content type, plus `writes`, the order of accepted writes. Neither log
holds a header or body.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.doubles.tls import TlsFiles, TlsServer

TOKEN = "double-service-account-token"
USER = "system:serviceaccount:keyshift:rotator"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, "application/apply-patch+yaml", STRATEGIC_MERGE_PATCH)
PLURALS = {"deployments": "Deployment", "statefulsets": "StatefulSet", "daemonsets": "DaemonSet"}
_SECRETS = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")
_CONFIGMAPS = re.compile(r"^/api/v1/namespaces/([^/]+)/configmaps(?:/([^/]+))?$")
_WORKLOAD = re.compile(
    r"^/apis/apps/v1/namespaces/([^/]+)/(deployments|statefulsets|daemonsets)/([^/]+)$"
)
_SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
_REASONS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class LoggedRequest:
    """One request the double received: no headers but the content type, no body."""

    method: str
    path: str
    content_type: str | None


@dataclass(frozen=True)
class Rule:
    """An RBAC rule: `verbs` on `resources` of API `group`, optionally only `names`."""

    verbs: frozenset[str]
    resources: frozenset[str]
    group: str = ""
    names: frozenset[str] | None = None

    def allows(self, verb: str, group: str, resource: str, name: str | None) -> bool:
        return (
            (verb in self.verbs or "*" in self.verbs)
            and group == self.group
            and (resource in self.resources or "*" in self.resources)
            and (self.names is None or (name is not None and name in self.names))
        )


def rule(verbs: str, resources: str, group: str = "", names: str | None = None) -> Rule:
    """`rule("get,patch", "secrets", names="app")`: a Rule from comma-separated lists."""
    return Rule(
        frozenset(verbs.split(",")),
        frozenset(resources.split(",")),
        group,
        frozenset(names.split(",")) if names is not None else None,
    )


ALLOW_ALL = (rule("*", "*"), rule("*", "*", "apps"))


@dataclass(frozen=True)
class Fault:
    status: int | None
    """The status to answer; None hangs (no answer) for `hang_seconds`."""
    retry_after: int | None = None
    hang_seconds: float = 0.0
    message: str = "injected failure"


@dataclass
class Workload:
    """A Deployment, StatefulSet or DaemonSet and its simulated controller."""

    kind: str
    namespace: str
    name: str
    obj: dict[str, Any]
    """metadata and spec, as the API shows them."""
    replicas: int = 3
    rollout_reads: int | None = 2
    """Status reads that show a started rollout in progress before it shows it complete;
    None: it never completes."""
    deadline_exceeded: bool = False
    """Report `ProgressDeadlineExceeded` (Deployments) instead of progress."""
    revision: int = 1
    pending: int | None = 0
    """Reads left before the current rollout completes (None: never)."""
    reads_in_rollout: int = 0

    @property
    def generation(self) -> int:
        return int(self.obj["metadata"]["generation"])


class ApiError(Exception):
    """Raised inside a handler to answer with a Status body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def _not_found(resource: str, group: str, name: str) -> ApiError:
    details = {"name": name, "kind": resource, **({"group": group} if group else {})}
    return ApiError(404, "NotFound", f'{_qualified(resource, group)} "{name}" not found', details)


def _conflict(resource: str, group: str, name: str, why: str) -> ApiError:
    details = {"name": name, "kind": resource, **({"group": group} if group else {})}
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        details,
    )


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch: add, replace, remove and test on object members."""
    if not isinstance(operations, list):
        raise ApiError(
            400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
        )
    doc = copy.deepcopy(target)
    for op in operations:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent.setdefault(part, {}) if op["op"] == "add" else parent[part]
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            if op["op"] == "replace" and last not in parent:
                raise ApiError(422, "Invalid", f"replace operation does not apply: {op['path']}")
            parent[last] = op["value"]
        elif op["op"] == "remove":
            if last not in parent:
                raise ApiError(422, "Invalid", f"remove operation does not apply: {op['path']}")
            del parent[last]
        elif op["op"] == "test":
            if parent.get(last) != op["value"]:
                raise ApiError(422, "Invalid", f"test operation failed: {op['path']}")
        else:
            raise ApiError(400, "BadRequest", f"unsupported operation {op['op']}")
    return doc


class KubernetesDouble:
    """Secrets, ConfigMaps, apps/v1 workloads and SelfSubjectAccessReviews over TLS on
    127.0.0.1.

    Use as a context manager; `write_kubeconfig` points a client at it. Switches:
    `rules` (RBAC), `fail(n, status, retry_after)`, `hang(n, seconds)`,
    `before_next_write(namespace, name, change)` (a Secret),
    `before_next_configmap_write(namespace, name, change)` (a ConfigMap).
    """

    def __init__(self, tls: TlsFiles, *, token: str = TOKEN) -> None:
        self.tls = tls
        self.token = token
        self.rules: list[Rule] = list(ALLOW_ALL)
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.workloads: dict[tuple[str, str, str], Workload] = {}
        self.requests: list[LoggedRequest] = []
        self.writes: list[tuple[str, str]] = []
        """(method, path) of every accepted write, in order."""
        self.reviews: list[dict[str, Any]] = []
        """The `resourceAttributes` of each SelfSubjectAccessReview asked."""
        self._faults: list[Fault] = []
        self._hooks: dict[tuple[str, str], list[Callable[[dict[str, Any]], None]]] = {}
        self._configmap_hooks: dict[tuple[str, str], list[Callable[[dict[str, Any]], None]]] = {}
        self._version = 100
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._http = TlsServer(tls, "Kubernetes")

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> KubernetesDouble:
        self._http.start(self._answer)
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()
        self._http.stop()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._http.port}"

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes] | None:
        fault = self.take_fault()
        if fault is not None and fault.status is None:
            self.hung(method, path, fault.hang_seconds)
            return None
        return self.handle(method, path, headers, body, fault)

    def write_kubeconfig(
        self, path: Path, *, token: str | None = None, namespace: str = "default"
    ) -> Path:
        """A kubeconfig whose current context reaches this double with `token`."""
        ca = base64.b64encode(self.tls.ca_path.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "double",
                    "cluster": {"server": self.url, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": "rotator", "user": {"token": token or self.token}}],
            "contexts": [
                {
                    "name": "double",
                    "context": {"cluster": "double", "user": "rotator", "namespace": namespace},
                }
            ],
            "current-context": "double",
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    # --- test controls -------------------------------------------------------------------

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def add_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, str],
        *,
        annotations: dict[str, str] | None = None,
        immutable: bool = False,
        type: str = "Opaque",
    ) -> None:
        """Store a Secret; `data` values are plain text (encoded here)."""
        with self._lock:
            metadata: dict[str, Any] = {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_version(),
                "creationTimestamp": _now(),
            }
            if annotations:
                metadata["annotations"] = dict(annotations)
            secret: dict[str, Any] = {
                "kind": "Secret",
                "apiVersion": "v1",
                "metadata": metadata,
                "type": type,
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            }
            if immutable:
                secret["immutable"] = True
            self.secrets[namespace, name] = secret

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self.secrets.get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data decoded to text, or None when it does not exist."""
        found = self.secret(namespace, name)
        if found is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}

    def change_secret(self, namespace: str, name: str, data: dict[str, str | None]) -> None:
        """Change keys (None removes one) as another writer would: a new resourceVersion."""
        with self._lock:
            self._change(self.secrets[namespace, name], data)

    def _change(self, secret: dict[str, Any], data: dict[str, str | None]) -> None:
        stored = secret.setdefault("data", {})
        for key, value in data.items():
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = base64.b64encode(value.encode()).decode()
        secret["metadata"]["resourceVersion"] = self._next_version()

    def before_next_write(self, namespace: str, name: str, data: dict[str, str | None]) -> None:
        """When the next write to this Secret arrives, first change `data` as another
        writer would (so a write carrying the resourceVersion read before is stale).
        Each call arms one write; several calls arm the writes that follow."""
        with self._lock:
            self._hooks.setdefault((namespace, name), []).append(
                lambda secret: self._change(secret, data)
            )

    def add_configmap(
        self, namespace: str, name: str, data: dict[str, str], *, immutable: bool = False
    ) -> None:
        """Store a ConfigMap with `data` (plain strings, as ConfigMaps hold them)."""
        with self._lock:
            configmap: dict[str, Any] = {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": self._next_version(),
                    "creationTimestamp": _now(),
                },
                "data": dict(data),
            }
            if immutable:
                configmap["immutable"] = True
            self.configmaps[namespace, name] = configmap

    def configmap_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The ConfigMap's data, or None when it does not exist."""
        with self._lock:
            found = self.configmaps.get((namespace, name))
            return dict(found.get("data") or {}) if found is not None else None

    def change_configmap(self, namespace: str, name: str, data: dict[str, str | None]) -> None:
        """Change keys (None removes one) as another writer would: a new resourceVersion."""
        with self._lock:
            self._change_configmap(self.configmaps[namespace, name], data)

    def _change_configmap(self, configmap: dict[str, Any], data: dict[str, str | None]) -> None:
        stored = configmap.setdefault("data", {})
        for key, value in data.items():
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = value
        configmap["metadata"]["resourceVersion"] = self._next_version()

    def before_next_configmap_write(
        self, namespace: str, name: str, data: dict[str, str | None]
    ) -> None:
        """Like `before_next_write`, for the next write to this ConfigMap."""
        with self._lock:
            self._configmap_hooks.setdefault((namespace, name), []).append(
                lambda configmap: self._change_configmap(configmap, data)
            )

    def add_workload(
        self,
        kind: str,
        namespace: str,
        name: str,
        *,
        replicas: int = 3,
        rollout_reads: int | None = 2,
        paused: bool = False,
        strategy: str = "RollingUpdate",
    ) -> Workload:
        template = {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
        }
        spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": template}
        if kind == "Deployment":
            spec |= {"replicas": replicas, "strategy": {"type": strategy}}
            if paused:
                spec["paused"] = True
        elif kind == "StatefulSet":
            spec |= {
                "replicas": replicas,
                "serviceName": name,
                "updateStrategy": {"type": strategy},
            }
        else:
            spec["updateStrategy"] = {"type": strategy}
        with self._lock:
            workload = Workload(
                kind=kind,
                namespace=namespace,
                name=name,
                replicas=replicas,
                rollout_reads=rollout_reads,
                obj={
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "uid": str(uuid.uuid4()),
                        "resourceVersion": self._next_version(),
                        "generation": 1,
                        "creationTimestamp": _now(),
                    },
                    "spec": spec,
                },
            )
            plural = next(p for p, k in PLURALS.items() if k == kind)
            self.workloads[namespace, plural, name] = workload
        return workload

    def workload(self, kind: str, namespace: str, name: str) -> Workload:
        plural = next(p for p, k in PLURALS.items() if k == kind)
        return self.workloads[namespace, plural, name]

    def fail(
        self,
        n: int,
        status: int,
        retry_after: int | None = None,
        message: str = "injected failure",
    ) -> None:
        """Answer the next `n` requests with a `status` Status (and `Retry-After` unless
        None) whose message is `message`."""
        with self._lock:
            self._faults.extend([Fault(status, retry_after, message=message)] * n)

    def hang(self, n: int, seconds: float = 5.0) -> None:
        """Leave the next `n` requests unanswered for `seconds`, then drop them."""
        with self._lock:
            self._faults.extend([Fault(None, hang_seconds=seconds)] * n)

    def logged(self, method: str | None = None, prefix: str = "") -> list[LoggedRequest]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and r.path.startswith(prefix)
            ]

    # --- the service -------------------------------------------------------------------

    def take_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def hung(self, method: str, raw_path: str, seconds: float) -> None:
        """Log a request that gets no answer and hold it for `seconds` (less on exit)."""
        with self._lock:
            self.requests.append(LoggedRequest(method, urlsplit(raw_path).path, None))
        self._released.wait(seconds)

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes, fault: Fault | None
    ) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(raw_path).path
        content_type = headers.get("content-type")
        with self._lock:
            self.requests.append(LoggedRequest(method, path, content_type))
        try:
            if fault is not None and fault.status is not None:
                extra = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                raise ApiError(
                    fault.status,
                    _REASONS.get(fault.status, "InternalError"),
                    fault.message,
                    headers=extra,
                )
            if headers.get("authorization", "") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            payload = self._payload(method, content_type, body)
            if path == _SSAR and method == "POST":
                return self._review(payload)
            found = _SECRETS.match(path)
            if found:
                return self._secrets(method, found.group(1), found.group(2), content_type, payload)
            found = _CONFIGMAPS.match(path)
            if found:
                return self._configmaps(
                    method, found.group(1), found.group(2), content_type, payload
                )
            found = _WORKLOAD.match(path)
            if found:
                ns, plural, name = found.groups()
                return self._workload(method, ns, plural, name, content_type, payload)
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        except ApiError as exc:
            return _json(exc.code, exc.body(), exc.headers)

    def _payload(self, method: str, content_type: str | None, body: bytes) -> Any:
        if method not in ("POST", "PUT", "PATCH", "DELETE") or not body:
            return None
        if method == "PATCH" and content_type not in PATCH_TYPES:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(PATCH_TYPES)}",
            )
        try:
            return json.loads(body)
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not valid JSON") from None

    def _authorize(self, verb: str, group: str, resource: str, ns: str, name: str | None) -> None:
        if any(r.allows(verb, group, resource, name) for r in self.rules):
            return
        subject = (
            f'{_qualified(resource, group)} "{name}" is forbidden'
            if name
            else (f"{_qualified(resource, group)} is forbidden")
        )
        raise ApiError(
            403,
            "Forbidden",
            f'{subject}: User "{USER}" cannot {verb} resource "{resource}" in API group '
            f'"{group}" in the namespace "{ns}"',
            {"name": name or "", "kind": resource, **({"group": group} if group else {})},
        )

    def _review(self, payload: Any) -> tuple[int, dict[str, str], bytes]:
        attributes = ((payload or {}).get("spec") or {}).get("resourceAttributes")
        if not isinstance(attributes, dict):
            raise ApiError(
                422,
                "Invalid",
                "SelfSubjectAccessReview.authorization.k8s.io is invalid: spec.resourceAttributes: "
                "Invalid value: null: exactly one of nonResourceAttributes or "
                "resourceAttributes must be specified",
            )
        with self._lock:
            self.reviews.append(dict(attributes))
        allowed = any(
            r.allows(
                attributes.get("verb", ""),
                attributes.get("group", ""),
                attributes.get("resource", ""),
                attributes.get("name") or None,
            )
            for r in self.rules
        )
        answer = {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": payload["spec"],
            "status": {
                "allowed": allowed,
                "reason": 'RBAC: allowed by RoleBinding "keyshift/rotator"' if allowed else "",
            },
        }
        return _json(201, answer)

    # --- secrets and configmaps ----------------------------------------------------------

    def _read_for(
        self,
        kind: tuple[
            dict[tuple[str, str], dict[str, Any]],
            dict[tuple[str, str], list[Callable[[dict[str, Any]], None]]],
            str,
            str,
        ],
        request: tuple[str, str, str, str | None, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Under the lock, for a request on one named Secret or ConfigMap (`kind`: the
        objects, their armed hooks, the resource and its Kind): run the next armed hook
        of a write first, then the object (404 if missing) and, for a PUT or PATCH, what
        it would become, refused like the API server: a PUT without resourceVersion is
        422, a stale resourceVersion is 409."""
        objects, hooks, resource, kind_name = kind
        method, ns, name, content_type, payload = request
        if method != "GET":
            armed = hooks.get((ns, name))
            if armed and (ns, name) in objects:
                armed.pop(0)(objects[ns, name])
        current = objects.get((ns, name))
        if current is None:
            raise _not_found(resource, "", name)
        if method in ("GET", "DELETE"):
            return current, current
        if method == "PUT":
            wanted = payload or {}
            if not (wanted.get("metadata") or {}).get("resourceVersion"):
                raise ApiError(
                    422,
                    "Invalid",
                    f'{kind_name} "{name}" is invalid: metadata.resourceVersion: Invalid '
                    "value: 0x0: must be specified for an update",
                )
        elif content_type == JSON_PATCH:
            wanted = json_patch(current, payload)
        else:
            wanted = merge_patch(current, payload)
        given = (wanted.get("metadata") or {}).get("resourceVersion")
        if given and given != current["metadata"]["resourceVersion"]:
            raise _conflict(resource, "", name, STALE)
        return current, wanted

    def _secrets(
        self, method: str, ns: str, name: str | None, content_type: str | None, payload: Any
    ) -> tuple[int, dict[str, str], bytes]:
        if name is None:
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            self._authorize("create", "", "secrets", ns, None)
            return self._create_secret(ns, payload)
        verb = _VERBS.get(method)
        if verb is None or verb == "create":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
        self._authorize(verb, "", "secrets", ns, name)
        with self._lock:
            current, wanted = self._read_for(
                (self.secrets, self._hooks, "secrets", "Secret"),
                (method, ns, name, content_type, payload),
            )
            if method == "GET":
                return _json(200, current)
            if method == "DELETE":
                return self._delete_secret(ns, name, current, payload)
            updated = self._next_secret(current, wanted)
            self.writes.append((method, f"/api/v1/namespaces/{ns}/secrets/{name}"))
            return _json(200, updated)

    def _next_secret(self, current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        """Store `wanted`'s data, annotations and labels; bump the version if they changed."""
        data = dict(wanted.get("data") or {})
        for key, text in (wanted.get("stringData") or {}).items():
            data[key] = base64.b64encode(str(text).encode()).decode()
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except ValueError:
                raise ApiError(400, "BadRequest", f"illegal base64 data in key {key}") from None
        name = current["metadata"]["name"]
        if current.get("immutable") and data != (current.get("data") or {}):
            raise ApiError(
                422,
                "Invalid",
                f'Secret "{name}" is invalid: data: Forbidden: field is immutable when '
                "`immutable` is set",
            )
        if wanted.get("type") not in (None, current.get("type")):
            raise ApiError(
                422,
                "Invalid",
                f'Secret "{name}" is invalid: type: Invalid value: field is immutable',
            )
        if current.get("type") == "kubernetes.io/tls":
            for key in ("tls.crt", "tls.key"):
                if key not in data:
                    raise ApiError(
                        422, "Invalid", f'Secret "{name}" is invalid: data[{key}]: Required value'
                    )
        updated = copy.deepcopy(current)
        updated["data"] = data
        for part in ("annotations", "labels"):
            value = (wanted.get("metadata") or {}).get(part)
            if value:
                updated["metadata"][part] = dict(value)
            else:
                updated["metadata"].pop(part, None)
        if updated != current:
            updated["metadata"]["resourceVersion"] = self._next_version()
            self.secrets[current["metadata"]["namespace"], name] = updated
        return updated

    def _create_secret(self, ns: str, payload: Any) -> tuple[int, dict[str, str], bytes]:
        metadata = (payload or {}).get("metadata") or {}
        name = metadata.get("name")
        if not name:
            raise ApiError(422, "Invalid", "Secret is invalid: metadata.name: Required value")
        with self._lock:
            if (ns, name) in self.secrets:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'secrets "{name}" already exists',
                    {"name": name, "kind": "secrets"},
                )
            secret: dict[str, Any] = {
                "kind": "Secret",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": _now(),
                },
                "type": payload.get("type") or "Opaque",
                "data": {},
            }
            self.secrets[ns, name] = secret
            try:
                stored = self._next_secret(secret, {**payload, "metadata": metadata})
            except ApiError:
                del self.secrets[ns, name]
                raise
            self.writes.append(("POST", f"/api/v1/namespaces/{ns}/secrets/{name}"))
            return _json(201, stored)

    def _delete_secret(
        self, ns: str, name: str, current: dict[str, Any], payload: Any
    ) -> tuple[int, dict[str, str], bytes]:
        preconditions = (payload or {}).get("preconditions") or {}
        expected = preconditions.get("resourceVersion")
        actual = current["metadata"]["resourceVersion"]
        if expected and expected != actual:
            raise _conflict(
                "secrets",
                "",
                name,
                f"Precondition failed: ResourceVersion in precondition: {expected}, "
                f"ResourceVersion in object meta: {actual}",
            )
        del self.secrets[ns, name]
        self.writes.append(("DELETE", f"/api/v1/namespaces/{ns}/secrets/{name}"))
        return _json(
            200,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": "secrets", "uid": current["metadata"]["uid"]},
            },
        )

    # --- configmaps ----------------------------------------------------------------------

    def _configmaps(
        self, method: str, ns: str, name: str | None, content_type: str | None, payload: Any
    ) -> tuple[int, dict[str, str], bytes]:
        if name is None:
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            self._authorize("create", "", "configmaps", ns, None)
            return self._create_configmap(ns, payload)
        verb = _VERBS.get(method)
        if verb not in ("get", "update", "patch"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
        self._authorize(verb, "", "configmaps", ns, name)
        with self._lock:
            current, wanted = self._read_for(
                (self.configmaps, self._configmap_hooks, "configmaps", "ConfigMap"),
                (method, ns, name, content_type, payload),
            )
            if method == "GET":
                return _json(200, current)
            data = {k: v for k, v in (wanted.get("data") or {}).items() if v is not None}
            if not all(isinstance(v, str) for v in data.values()):
                raise ApiError(422, "Invalid", f'ConfigMap "{name}" is invalid: data: not a string')
            if current.get("immutable") and data != (current.get("data") or {}):
                raise ApiError(
                    422,
                    "Invalid",
                    f'ConfigMap "{name}" is invalid: data: Forbidden: field is immutable when '
                    "`immutable` is set",
                )
            if data != (current.get("data") or {}):
                current["data"] = data
                current["metadata"]["resourceVersion"] = self._next_version()
            self.writes.append((method, f"/api/v1/namespaces/{ns}/configmaps/{name}"))
            return _json(200, current)

    def _create_configmap(self, ns: str, payload: Any) -> tuple[int, dict[str, str], bytes]:
        metadata = (payload or {}).get("metadata") or {}
        name = metadata.get("name")
        if not name:
            raise ApiError(422, "Invalid", "ConfigMap is invalid: metadata.name: Required value")
        with self._lock:
            if (ns, name) in self.configmaps:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'configmaps "{name}" already exists',
                    {"name": name, "kind": "configmaps"},
                )
            configmap = {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "uid": str(uuid.uuid4()),
                    "resourceVersion": self._next_version(),
                    "creationTimestamp": _now(),
                },
                "data": dict(payload.get("data") or {}),
            }
            self.configmaps[ns, name] = configmap
            self.writes.append(("POST", f"/api/v1/namespaces/{ns}/configmaps/{name}"))
            return _json(201, configmap)

    # --- workloads -----------------------------------------------------------------------

    def _workload(
        self,
        method: str,
        ns: str,
        plural: str,
        name: str,
        content_type: str | None,
        payload: Any,
    ) -> tuple[int, dict[str, str], bytes]:
        verb = _VERBS.get(method)
        if verb not in ("get", "patch"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
        self._authorize(verb, "apps", plural, ns, name)
        with self._lock:
            workload = self.workloads.get((ns, plural, name))
            if workload is None:
                raise _not_found(plural, "apps", name)
            if method == "GET":
                return _json(200, self._show(workload, read=True))
            current = workload.obj
            patched = (
                json_patch(current, payload)
                if content_type == JSON_PATCH
                else merge_patch(current, payload)
            )
            given = (patched.get("metadata") or {}).get("resourceVersion")
            if given and given != current["metadata"]["resourceVersion"]:
                raise _conflict(plural, "apps", name, STALE)
            if patched != current:
                patched["metadata"]["resourceVersion"] = self._next_version()
                if patched["spec"] != current["spec"]:
                    patched["metadata"]["generation"] = workload.generation + 1
                if patched["spec"].get("template") != current["spec"].get("template"):
                    workload.revision += 1
                    workload.pending = workload.rollout_reads
                    workload.reads_in_rollout = 0
                workload.obj = patched
            self.writes.append(("PATCH", f"/apis/apps/v1/namespaces/{ns}/{plural}/{name}"))
            return _json(200, self._show(workload, read=False))

    def _show(self, workload: Workload, *, read: bool) -> dict[str, Any]:
        """The object with the status the controller reports now. A read moves a
        started rollout one step towards complete."""
        in_progress = workload.pending is None or workload.pending > 0
        step = workload.reads_in_rollout
        if read and in_progress:
            workload.reads_in_rollout += 1
            if workload.pending is not None:
                workload.pending -= 1
        shown = copy.deepcopy(workload.obj)
        shown["apiVersion"] = "apps/v1"
        shown["kind"] = workload.kind
        generation = workload.generation
        # The patch's own answer and the first read show the controller not there yet.
        observed = generation - 1 if in_progress and (not read or step == 0) else generation
        shown["status"] = _status(workload, observed, in_progress)
        return shown


def _status(workload: Workload, observed: int, in_progress: bool) -> dict[str, Any]:
    r = workload.replicas
    if workload.kind == "Deployment":
        status: dict[str, Any] = {
            "observedGeneration": observed,
            "replicas": r,
            "updatedReplicas": r,
            "readyReplicas": r,
            "availableReplicas": r,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            ],
        }
        if in_progress and observed == workload.generation:
            status |= {"replicas": r + 1, "updatedReplicas": 1, "availableReplicas": r}
            progressing = status["conditions"][1]
            progressing["reason"] = "ReplicaSetUpdated"
            if workload.deadline_exceeded:
                progressing |= {"status": "False", "reason": "ProgressDeadlineExceeded"}
        return status
    if workload.kind == "StatefulSet":
        current = f"{workload.name}-{workload.revision - (1 if in_progress else 0)}"
        return {
            "observedGeneration": observed,
            "replicas": r,
            "readyReplicas": r - 1 if in_progress and observed == workload.generation else r,
            "currentReplicas": r,
            "updatedReplicas": 1 if in_progress else r,
            "availableReplicas": r,
            "currentRevision": current,
            "updateRevision": f"{workload.name}-{workload.revision}",
        }
    updated = 1 if in_progress and observed == workload.generation else r
    return {
        "observedGeneration": observed,
        "desiredNumberScheduled": r,
        "currentNumberScheduled": r,
        "updatedNumberScheduled": updated,
        "numberAvailable": r,
        "numberReady": r,
        "numberMisscheduled": 0,
    }


def _json(
    status: int, body: object, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )
