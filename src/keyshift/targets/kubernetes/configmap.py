"""`kubernetes_configmap`: keep a JWKS document in one key of a Kubernetes ConfigMap,
which verifiers mount or read (a JWKS holds public keys only, so it belongs in a
ConfigMap, not a Secret).

It reads the ConfigMap, merges this credential's public keys into the document at `key`
(`keyshift.targets.jwks`: other kids in the document, and every other key of the
ConfigMap, stay as they are) and writes a JSON merge patch of that one key carrying the
`resourceVersion` it read: a write that raced another writer is refused by the API server
(409 Conflict), read again and merged again rather than applied blindly. A document that
already holds the wanted keys is not written.

It is a trust action (`trust_only`): a `jwks_signing_key` rotation writes it before the
signers get the key (the new key beside the old), withdraws the old key just before
revoking it, and a rollback puts the document back to the previous key alone.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final, Literal

from kubernetes import client as k8s
from pydantic import BaseModel, field_validator

from keyshift.context import PluginContext
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError
from keyshift.targets import base, jwks
from keyshift.targets.base import BaseTarget, Delivery, PreflightResult, Readiness
from keyshift.targets.kubernetes.client import (
    KubernetesApi,
    KubernetesConnection,
    cluster,
    dns_subdomain,
    readiness,
    until_no_conflict,
)

MERGE_PATCH: Final = "application/merge-patch+json"
DEFAULT_KEY: Final = "jwks.json"

_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class KubernetesConfigMapConfig(KubernetesConnection):
    """The ConfigMap and the key inside it that holds the JWKS document."""

    configmap: str
    """Name of the ConfigMap."""
    key: str = DEFAULT_KEY
    """Key of the ConfigMap's `data` holding the JWKS document; every other key is kept."""
    format: Literal["jwks"] = "jwks"
    """What the key holds: `jwks`, a JWKS document of a `jwks_signing_key` credential's
    public keys beside any other keys the document holds."""
    create: bool = False
    """Create the ConfigMap when it is missing; otherwise it must exist."""

    @field_validator("configmap")
    @classmethod
    def _configmap_name(cls, name: str) -> str:
        return dns_subdomain(name)

    @field_validator("key")
    @classmethod
    def _data_key(cls, key: str) -> str:
        if len(key) > 253 or not _DATA_KEY.match(key) or key in {".", ".."}:
            raise ValueError("key must consist of letters, digits, '-', '_' or '.'")
        return key


class KubernetesConfigMapTarget(jwks.JwksOutput, BaseTarget[KubernetesConfigMapConfig]):
    """Keeps this credential's public keys in the JWKS document of a ConfigMap key."""

    kind: ClassVar[str] = "kubernetes_configmap"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = KubernetesConfigMapConfig

    @classmethod
    def describe(cls, config: KubernetesConfigMapConfig) -> dict[str, str]:
        """Where it writes: cluster, namespace, ConfigMap, key and format."""
        return {
            **cluster(config),
            "namespace": config.namespace,
            "configmap": config.configmap,
            "key": config.key,
            "format": config.format,
        }

    def __init__(self, config: KubernetesConfigMapConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        # Nothing secret passes here (public keys only), so there is nothing to scrub.
        self.api = KubernetesApi(config, list)
        self._what = f"ConfigMap {config.namespace}/{config.configmap}"

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Ready when this identity may read and patch the ConfigMap (and create it when
        `create` is true), it exists unless `create` is true, and its key holds a JWKS
        document or nothing. Changes nothing."""
        name = self.config.configmap
        checks: list[tuple[str, str, str, str | None]] = [
            ("get", "", "configmaps", name),
            ("patch", "", "configmaps", name),
        ]
        if self.config.create:
            checks.append(("create", "", "configmaps", None))
        blocked, found = await readiness(
            self.api, self._what, checks, self._get, create=self.config.create
        )
        if blocked is not None:
            return blocked
        try:
            if found is not None:
                jwks.parse((found.data or {}).get(self.config.key), self._where)
        except PermanentError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        return PreflightResult(
            Readiness.READY, f"may get and patch {self._what}; key {self.config.key}"
        )

    async def hold(
        self, add: list[Delivery], remove: list[Delivery], change: jwks.Change, about: Delivery
    ) -> dict[str, Any]:
        """Merge into the document at `key`: the keys of `add` present, those of `remove`
        gone, every other kid and key as it was; not written when nothing changes."""
        return await until_no_conflict(
            self._what,
            self.context.sleep,
            lambda conflicts: self._apply_once(add, remove, conflicts),
            gave_up="the JWKS was not written",
        )

    @property
    def _where(self) -> str:
        return f"{self._what} key {self.config.key}"

    async def _get(self) -> k8s.V1ConfigMap | None:
        api = k8s.CoreV1Api(await self.api.client())
        found: k8s.V1ConfigMap | None = await self.api.find(
            self._what, api.read_namespaced_config_map, self.config.configmap, self.config.namespace
        )
        return found

    async def _apply_once(
        self, add: list[Delivery], remove: list[Delivery], conflicts: int
    ) -> dict[str, Any]:
        found = await self._get()
        if found is None:
            if not self.config.create:
                raise PermanentError(
                    f"{self._what} does not exist; create it first or set create: true"
                )
            text, keys = jwks.rewritten(None, add, remove, self._where)
            version = await self._create(text)
            return self._result("created", version, keys, conflicts)
        current = (found.data or {}).get(self.config.key)
        text, keys = jwks.rewritten(current, add, remove, self._where)
        if current == text:
            return self._result("unchanged", found.metadata.resource_version, keys, conflicts)
        if found.immutable:
            raise PermanentError(f"{self._what} is immutable; its data cannot change")
        patch = {
            "metadata": {"resourceVersion": found.metadata.resource_version},
            "data": {self.config.key: text},
        }
        api = k8s.CoreV1Api(await self.api.client())
        written: k8s.V1ConfigMap = await self.api.call(
            self._what,
            api.patch_namespaced_config_map,
            self.config.configmap,
            self.config.namespace,
            patch,
            _content_type=MERGE_PATCH,
        )
        return self._result("updated", written.metadata.resource_version, keys, conflicts)

    async def _create(self, text: str) -> str:
        body = k8s.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=k8s.V1ObjectMeta(name=self.config.configmap),
            data={self.config.key: text},
        )
        api = k8s.CoreV1Api(await self.api.client())
        # A 409 AlreadyExists (created by someone since the read) is a conflict like any
        # other: the caller reads again and merges into what is there.
        created: k8s.V1ConfigMap = await self.api.call(
            self._what, api.create_namespaced_config_map, self.config.namespace, body
        )
        return str(created.metadata.resource_version)

    def _result(
        self, change: str, version: str | None, keys: list[dict[str, Any]], conflicts: int
    ) -> dict[str, Any]:
        return {
            "namespace": self.config.namespace,
            "configmap": self.config.configmap,
            "key": self.config.key,
            "format": "jwks",
            "kids": jwks.kids(keys),
            "change": change,
            "resource_version": version,
            "conflicts": conflicts,
        }
