"""`kubernetes_configmap`: keep the trust of a credential in one key of a Kubernetes
ConfigMap, which verifiers mount or read (public keys and certificates only, so it belongs
in a ConfigMap, not a Secret). `format` says what the key holds:

- `jwks` (the default, key `jwks.json`): a JWKS document of a `jwks_signing_key`'s public
  keys (`keyshift.targets.jwks`: other kids in the document stay as they are);
- `pem_bundle` (key `ca.crt`): a CA bundle of a `trust_bundle`'s CA certificates, as
  trust-manager distributes them in a cluster (`keyshift.targets.certificate.
  updated_bundle`, the merge a `pem_bundle` file makes: other certificates stay, in their
  order).

It reads the ConfigMap, merges this credential's keys or CAs into the text at `key`
(every other key of the ConfigMap stays as it is) and writes a JSON merge patch of that
one key carrying the `resourceVersion` it read: a write that raced another writer is
refused by the API server (409 Conflict), read again and merged again rather than applied
blindly. A key that already holds what is wanted is not written.

It is a trust action (`trust_only`): a rotation writes it before the signers get the key
or the leaves are re-issued (the new beside the old), withdraws the old one just before
revoking it, and a rollback puts the key back to the previous one alone.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal

from kubernetes import client as k8s
from pydantic import BaseModel, field_validator, model_validator

from keyshift.context import PluginContext
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError
from keyshift.targets import base, jwks
from keyshift.targets.base import BaseTarget, Delivery, PreflightResult, Readiness
from keyshift.targets.certificate import bundle_certificates, updated_bundle
from keyshift.targets.kubernetes.client import (
    MERGE_PATCH,
    KubernetesApi,
    KubernetesConnection,
    cluster,
    dns_subdomain,
    readiness,
    until_no_conflict,
    valid_data_key,
)

DEFAULT_KEY: Final = "jwks.json"
DEFAULT_KEYS: Final = {"jwks": DEFAULT_KEY, "pem_bundle": "ca.crt"}
"""The key a ConfigMap holds its trust at, by `format`, when `key` is not given."""

_NAMES: Final = {"jwks": "JWKS", "pem_bundle": "CA bundle"}


class KubernetesConfigMapConfig(KubernetesConnection):
    """The ConfigMap and the key inside it that holds the trust (a JWKS, a CA bundle)."""

    configmap: str
    """Name of the ConfigMap."""
    key: str = DEFAULT_KEY
    """Key of the ConfigMap's `data` holding the trust (default `jwks.json` for `jwks`,
    `ca.crt` for `pem_bundle`); every other key is kept."""
    format: Literal["jwks", "pem_bundle"] = "jwks"
    """What the key holds: `jwks`, a JWKS document of a `jwks_signing_key` credential's
    public keys beside any other keys the document holds; `pem_bundle`, a CA bundle
    (concatenated PEM certificates) of a `trust_bundle` credential's CAs beside any other
    certificate the bundle holds."""
    create: bool = False
    """Create the ConfigMap when it is missing; otherwise it must exist."""

    @model_validator(mode="before")
    @classmethod
    def _key_of_format(cls, data: Any) -> Any:
        if isinstance(data, dict) and "key" not in data:
            fmt = data.get("format", "jwks")
            return {**data, "key": DEFAULT_KEYS.get(fmt, DEFAULT_KEY)}
        return data

    @field_validator("configmap")
    @classmethod
    def _configmap_name(cls, name: str) -> str:
        return dns_subdomain(name)

    @field_validator("key")
    @classmethod
    def _data_key(cls, key: str) -> str:
        if not valid_data_key(key):
            raise ValueError("key must consist of letters, digits, '-', '_' or '.'")
        return key


class KubernetesConfigMapTarget(jwks.JwksOutput, BaseTarget[KubernetesConfigMapConfig]):
    """Keeps this credential's public keys (a JWKS document) or CA certificates (a CA
    bundle) in a ConfigMap key. Publish, rollback and withdraw are `jwks.JwksOutput`'s:
    what to hold is the same for keys and CAs, only the merge differs."""

    kind: ClassVar[str] = "kubernetes_configmap"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = KubernetesConfigMapConfig
    trust_format_field: ClassVar[str] = "config.format"
    """The field the estate names when the trust does not fit the credential."""

    @classmethod
    def trust_format(cls, config: BaseModel) -> str:
        """Its `format`: `jwks` or `pem_bundle`."""
        return config.format if isinstance(config, KubernetesConfigMapConfig) else "jwks"

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
        # Nothing secret is written here (public keys, CA certificates; a trust_bundle's
        # value, the CA's key, is never read), so there is nothing to scrub.
        self.api = KubernetesApi(config, list)
        self._what = f"ConfigMap {config.namespace}/{config.configmap}"

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Ready when this identity may read and patch the ConfigMap (and create it when
        `create` is true), it exists unless `create` is true, and its key holds what
        `format` says (a JWKS document, PEM certificates) or nothing. Changes nothing."""
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
                self._parse((found.data or {}).get(self.config.key))
        except PermanentError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        return PreflightResult(
            Readiness.READY, f"may get and patch {self._what}; key {self.config.key}"
        )

    async def hold(
        self, add: list[Delivery], remove: list[Delivery], change: jwks.Change, about: Delivery
    ) -> dict[str, Any]:
        """Merge into the text at `key`: the keys (CAs) of `add` present, those of `remove`
        gone, every other kid (certificate) and key as it was; not written when nothing
        changes."""
        return await until_no_conflict(
            self._what,
            self.context.sleep,
            lambda conflicts: self._apply_once(add, remove, conflicts),
            gave_up=f"the {_NAMES[self.config.format]} was not written",
        )

    @property
    def _where(self) -> str:
        return f"{self._what} key {self.config.key}"

    def _parse(self, text: str | None) -> None:
        """PermanentError unless `text` is what `format` holds (or nothing)."""
        if self.config.format == "pem_bundle":
            bundle_certificates(None if text is None else text.encode("utf-8"), self._where)
        else:
            jwks.parse(text, self._where)

    def _merged(
        self, text: str | None, add: list[Delivery], remove: list[Delivery]
    ) -> tuple[str, dict[str, list[str]]]:
        """The text at `key` holding `add` and none of `remove`, and what it then holds
        (kids, or SHA-256 thumbprints of the CAs) for the step's detail."""
        if self.config.format == "pem_bundle":
            data, held = updated_bundle(
                None if text is None else text.encode("utf-8"), add, remove, self._where
            )
            return data.decode("ascii"), {"thumbprints": held}
        rendered, keys = jwks.rewritten(text, add, remove, self._where)
        return rendered, {"kids": jwks.kids(keys)}

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
            text, keys = self._merged(None, add, remove)
            version = await self._create(text)
            return self._result("created", version, keys, conflicts)
        current = (found.data or {}).get(self.config.key)
        text, keys = self._merged(current, add, remove)
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
        self, change: str, version: str | None, held: dict[str, list[str]], conflicts: int
    ) -> dict[str, Any]:
        return {
            "namespace": self.config.namespace,
            "configmap": self.config.configmap,
            "key": self.config.key,
            "format": self.config.format,
            **held,
            "change": change,
            "resource_version": version,
            "conflicts": conflicts,
        }
