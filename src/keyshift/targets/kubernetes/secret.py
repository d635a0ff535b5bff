"""`kubernetes_secret`: deliver a value into a key (or several keys) of a Kubernetes Secret.

It reads the Secret and writes a JSON merge patch that carries the `resourceVersion` it
read: only its own keys of `data` and keyshift's annotations change, every other key stays
as it is, and a write that raced another writer is refused by the API server (409
Conflict), re-read and tried again rather than applied blindly. With `keys`, every key
(the password and, say, the username it belongs to) changes in that one patch, so a
consumer never reads a new password beside an old user. The annotations name the
rotation, version and fingerprint, never the value.

`secret_type: kubernetes.io/tls` delivers a certificate version as a TLS Secret:
`tls.crt` gets the certificate followed by its chain and `tls.key` the private key, in
the same one write (the API server refuses a TLS Secret without both).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

from kubernetes import client as k8s
from pydantic import BaseModel, field_validator, model_validator

from keyshift.context import PluginContext
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError
from keyshift.targets import base
from keyshift.targets.base import (
    FULLCHAIN,
    VALUE_FIELDS,
    BaseTarget,
    Delivery,
    PreflightResult,
    Readiness,
    StepResult,
    field_value,
    key_entries,
)
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

ROTATION_ANNOTATION: Final = "keyshift.io/rotation-id"
VERSION_ANNOTATION: Final = "keyshift.io/version-id"
FINGERPRINT_ANNOTATION: Final = "keyshift.io/fingerprint"
CREATED_ANNOTATION: Final = "keyshift.io/created-by-rotation"
"""Set on a Secret this target created, so a rollback of that rotation may delete it."""

SecretType = Literal["Opaque", "kubernetes.io/tls"]
TLS_SECRET: Final = "kubernetes.io/tls"  # noqa: S105 (a Secret type, not a password)
TLS_KEYS: Final = {"tls.crt": FULLCHAIN, "tls.key": "private_key"}
"""What a `kubernetes.io/tls` Secret holds of a certificate version."""


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
    """Create the Secret (of `secret_type`) when it is missing; otherwise it must exist."""
    secret_type: SecretType = "Opaque"  # noqa: S105 (a Secret type, not a password)
    """`kubernetes.io/tls`: a TLS Secret of a certificate version: `tls.crt` gets the
    certificate and its chain, `tls.key` the private key (give no `key`; `keys` may add
    others, e.g. `{ca.crt: chain}`). An existing Secret must be of this type."""

    @field_validator("secret")
    @classmethod
    def _secret_name(cls, name: str) -> str:
        return dns_subdomain(name)

    @field_validator("key")
    @classmethod
    def _data_key(cls, key: str | None) -> str | None:
        if key is not None and not valid_data_key(key):
            raise ValueError("key must consist of letters, digits, '-', '_' or '.'")
        return key

    @field_validator("keys")
    @classmethod
    def _data_keys(cls, keys: dict[str, str] | None) -> dict[str, str] | None:
        for key in keys or {}:
            if not valid_data_key(key):
                raise ValueError(f"key '{key}' must consist of letters, digits, '-', '_' or '.'")
        return keys

    @model_validator(mode="after")
    def _key_or_keys(self) -> KubernetesSecretConfig:
        if self.secret_type == TLS_SECRET:
            if self.key is not None:
                raise ValueError(
                    "a kubernetes.io/tls Secret takes no key: it holds tls.crt and tls.key"
                )
            taken = sorted(set(self.keys or {}) & set(TLS_KEYS))
            if taken:
                raise ValueError(
                    f"keys may not set {', '.join(taken)} of a kubernetes.io/tls Secret"
                )
            return self
        key_entries(self.key, self.keys)
        return self

    def entries(self) -> dict[str, str]:
        """Every data key and the field of the version written there."""
        if self.secret_type == TLS_SECRET:
            return {**TLS_KEYS, **(self.keys or {})}
        return key_entries(self.key, self.keys)

    def named_keys(self) -> dict[str, str]:
        """The keys written, for descriptions and step records: `{"key": K}` for one `key`
        (the shape recorded before `keys` existed, so stored evidence recomputes the same),
        else `{"keys": "A, B"}`."""
        if self.key is not None and self.secret_type != TLS_SECRET:
            return {"key": self.key}
        return {"keys": ", ".join(self.entries())}


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


class KubernetesSecretTarget(BaseTarget[KubernetesSecretConfig]):
    """Writes the version into its key(s) of a Kubernetes Secret, keeping every other key."""

    kind: ClassVar[str] = "kubernetes_secret"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = KubernetesSecretConfig

    @classmethod
    def describe(cls, config: KubernetesSecretConfig) -> dict[str, str]:
        """Where it writes: cluster, namespace, Secret and key(s). Never a value."""
        return {
            **cluster(config),
            "namespace": config.namespace,
            "secret": config.secret,
            **config.named_keys(),
        }

    def __init__(self, config: KubernetesSecretConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self._known: list[str] = []
        self.api = KubernetesApi(config, lambda: self._known)
        self._what = f"Secret {config.namespace}/{config.secret}"
        self._entries = config.entries()
        # Keys that carry the secret value: a rollback removes nothing unless they still
        # hold the failed version's value (with no such key, every key must still hold it).
        self._proof = [k for k, f in self._entries.items() if f in VALUE_FIELDS] or list(
            self._entries
        )

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
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
        blocked, found = await readiness(
            self.api, self._what, checks, self._get, create=self.config.create
        )
        if blocked is not None:
            return blocked
        if found is not None and (found.type or "Opaque") != self.config.secret_type:
            return PreflightResult(Readiness.BLOCKED, self._wrong_type(found))
        [(word, names)] = self.config.named_keys().items()
        return PreflightResult(Readiness.READY, f"may get and patch {self._what}; {word} {names}")

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Set every key to its field of the version in one write and annotate the version.

        Idempotent: when every key already holds its field nothing is written.
        """
        delivery = request.delivery
        self._remember(delivery, request.previous)
        return await self._converge(delivery, created_by=delivery.rotation_id)

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
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
        return await until_no_conflict(
            self._what,
            self.context.sleep,
            lambda conflicts: self._converge_once(wanted, created_by, conflicts),
            gave_up="not overwritten",
        )

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
        if (secret.type or "Opaque") != self.config.secret_type:
            raise PermanentError(self._wrong_type(secret))
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
        return await until_no_conflict(
            self._what,
            self.context.sleep,
            lambda conflicts: self._remove_once(failed, conflicts),
            gave_up="key not removed",
        )

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

    def _wrong_type(self, found: k8s.V1Secret) -> str:
        # A Secret's type cannot change: the API server refuses it, so say so up front.
        return (
            f"{self._what} is of type {found.type or 'Opaque'}, not {self.config.secret_type}; "
            "a Secret's type cannot change (delete it, or set create: true on a new name)"
        )

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
            type=self.config.secret_type,
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
