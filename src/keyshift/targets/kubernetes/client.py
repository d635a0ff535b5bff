"""The Kubernetes API client both targets use: how to reach the cluster and which
namespace, one `ApiClient` per target built from `kubeconfig` (or the pod's service account
when it is null), never from the process-wide default configuration, and the translation
of what fails into keyshift errors. The client is synchronous, so each call runs in a
worker thread.

Errors: 429, 5xx and an unreachable server are transient (with the server's
Retry-After); 401, 403, 404, 422 and other refusals are permanent and quote the
Kubernetes Status reason and message with the object's namespace and name.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from keyshift.domain.durations import Duration
from keyshift.errors import PermanentError, PluginError, TransientError, scrub
from keyshift.targets.base import PreflightResult, Readiness, positive
from keyshift.targets.web import retry_after

T = TypeVar("T")

MAX_CONFLICTS: Final = 5
"""Writes refused with 409 Conflict, each followed by a fresh read, before giving up."""
CONFLICT_BACKOFF: Final = 0.2
"""Seconds before the first re-read after a conflict; doubles for each further one."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


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
        return positive(value)

    @model_validator(mode="after")
    def _context_needs_kubeconfig(self) -> KubernetesConnection:
        if self.context is not None and self.kubeconfig is None:
            raise ValueError("context needs a kubeconfig (in-cluster config has no contexts)")
        return self


def cluster(config: KubernetesConnection) -> dict[str, str]:
    """Which cluster a config reaches: its kubeconfig and context, or in-cluster."""
    if config.kubeconfig is None:
        return {"cluster": "in-cluster service account"}
    return {
        "kubeconfig": str(config.kubeconfig),
        "context": config.context or "(current context)",
    }


def dns_subdomain(name: str) -> str:
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise ValueError("must be a DNS subdomain name (lower case, digits, '-', '.')")
    return name


MERGE_PATCH: Final = "application/merge-patch+json"
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def valid_data_key(key: str) -> bool:
    """Whether `key` may name an entry of a Secret's or ConfigMap's data."""
    return len(key) <= 253 and bool(_DATA_KEY.match(key)) and key not in {".", ".."}


class Conflict(Exception):
    """The API server refused a write with 409: the object changed since it was read."""


class NotFound(PermanentError):
    """The API server answered 404 for the object."""


async def until_no_conflict(
    what: str,
    sleep: Callable[[float], Awaitable[None]],
    write: Callable[[int], Awaitable[T]],
    *,
    gave_up: str,
) -> T:
    """`write(conflicts so far)` (a read of `what`, then a write carrying the
    resourceVersion read) until it is not refused with a conflict, with a growing pause
    before each re-read; TransientError after `MAX_CONFLICTS` refusals, saying what was
    `gave_up` on."""
    conflicts = 0
    while True:
        try:
            return await write(conflicts)
        except Conflict:
            conflicts += 1
            if conflicts > MAX_CONFLICTS:
                raise TransientError(
                    f"{what}: still changing under us after {conflicts} "
                    f"conflicting writes; {gave_up}"
                ) from None
            await sleep(CONFLICT_BACKOFF * 2.0 ** (conflicts - 1))


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


class KubernetesApi:
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
        except NotFound:
            return None

    def _translate(self, what: str, exc: ApiException) -> Exception:
        status = int(exc.status or 0)
        reason, message = _status_of(exc)
        # The Status names objects and fields, not data; scrub anyway as a second line.
        text = scrub(f"{what}: HTTP {status} {reason}: {message}".rstrip(": "), self._secrets())
        if status == 409:
            return Conflict(text)
        if status == 404:
            return NotFound(text)
        if status == 429 or status >= 500 or status == 0:
            return TransientError(text, retry_after=retry_after(exc.headers))
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


async def blocked_by_access(
    api: KubernetesApi, checks: list[tuple[str, str, str, str | None]]
) -> PreflightResult | None:
    """The first denied (verb, group, resource, name) as a blocked result; None if all pass."""
    for verb, group, resource, name in checks:
        try:
            denied = await api.allowed(verb, group, resource, name)
        except (PluginError, Conflict) as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if denied is not None:
            return PreflightResult(Readiness.BLOCKED, denied)
    return None


async def readiness(
    api: KubernetesApi,
    what: str,
    checks: list[tuple[str, str, str, str | None]],
    get: Callable[[], Awaitable[Any]],
    *,
    create: bool,
) -> tuple[PreflightResult | None, Any]:
    """What a writer's preflight asks of one object first: every access check passes,
    the object reads (`get`, None when missing), exists unless `create`, and is not
    immutable. (a blocked result, None) at the first that fails; else (None, the object
    or None)."""
    blocked = await blocked_by_access(api, checks)
    if blocked is not None:
        return blocked, None
    try:
        found = await get()
    except (PluginError, Conflict) as exc:
        return PreflightResult(Readiness.BLOCKED, str(exc)), None
    if found is None and not create:
        return PreflightResult(
            Readiness.BLOCKED, f"{what} does not exist and create is false"
        ), None
    if found is not None and found.immutable:
        return PreflightResult(Readiness.BLOCKED, f"{what} is immutable"), None
    return None, found
