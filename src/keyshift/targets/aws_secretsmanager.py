"""`aws_secretsmanager`: publish the value as a new version of an AWS Secrets Manager secret.

Publishing follows the staging-label contract of Secrets Manager rotation
(https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotate-secrets_how.html):

1. `PutSecretValue` with `VersionStages=["AWSPENDING"]` and a `ClientRequestToken`
   derived from the keyshift version id. Secrets Manager makes the token the AWS
   version id and ignores a repeat with the same token and value, so a publish
   repeated after a crash finds or makes the same version, never a second one.
2. `UpdateSecretVersionStage` moves `AWSCURRENT` to that version; Secrets Manager
   moves `AWSPREVIOUS` to the version it came from.
3. `UpdateSecretVersionStage` removes `AWSPENDING` from it again.

Readers that ask for `AWSCURRENT` (the default) switch at step 2; the old value
stays readable as `AWSPREVIOUS` for rollback. The boto3 client is synchronous, so
each call runs in a worker thread; botocore's own retries are off (its sleeps
would hold real time) and a throttled or failed call is a `TransientError` for
the engine to retry on its clock.

Messages carry the secret id, the AWS error code and version ids, never the value.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from pydantic import BaseModel, Field, model_validator

from keyshift.aws import AwsClients, AwsConnection, Service
from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, TransientError
from keyshift.targets import base
from keyshift.targets.base import BaseTarget, PreflightResult, Readiness, StepResult

CURRENT: Final = "AWSCURRENT"
PENDING: Final = "AWSPENDING"
PREVIOUS: Final = "AWSPREVIOUS"
ROLLED_BACK: Final = "KEYSHIFT_ROLLED_BACK"
"""Staging label rollback attaches to a version it could not take `AWSCURRENT` from."""
TOKEN_NAMESPACE: Final = uuid.UUID("6f0c1d5e-2b7a-5e53-9a7c-4b1f0d6e8a21")
"""UUIDv5 namespace of the ClientRequestTokens derived from keyshift version ids."""

_NOT_FOUND = "ResourceNotFoundException"
_EXISTS = "ResourceExistsException"
SECRETS_MANAGER: Final = Service("Secrets Manager", "secretsmanager")


class AwsSecretsManagerConfig(AwsConnection):
    """The secret to publish to and the identity to publish with (`region`, `endpoint_url`
    and the key references are those of every AWS plugin)."""

    secret_id: str = Field(min_length=1, max_length=2048)
    """Name or full ARN of the secret."""
    create: bool = False
    """Create the secret (named `secret_id`) when it does not exist; otherwise a missing
    secret fails the step."""

    @model_validator(mode="after")
    def _name_to_create(self) -> AwsSecretsManagerConfig:
        if self.create and self.secret_id.startswith("arn:"):
            raise ValueError("create needs secret_id to be a name: a new secret has no ARN yet")
        return self


def request_token(version_id: str) -> str:
    """The ClientRequestToken (and so the AWS version id) for a keyshift version: a UUID
    that is the same on every call, so a repeated publish names the same version."""
    return str(uuid.uuid5(TOKEN_NAMESPACE, version_id))


class AwsSecretsManagerTarget(BaseTarget[AwsSecretsManagerConfig]):
    """Writes each new version to a Secrets Manager secret and moves `AWSCURRENT` to it."""

    kind: ClassVar[str] = "aws_secretsmanager"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = AwsSecretsManagerConfig

    @classmethod
    def describe(cls, config: AwsSecretsManagerConfig) -> dict[str, str]:
        """Where it writes: region and secret id (and a non-default endpoint's host)."""
        return {**config.where(), "secret_id": config.secret_id}

    def __init__(self, config: AwsSecretsManagerConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.aws = AwsClients(config, context)

    # --- the Target contract ------------------------------------------------------------------

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """`DescribeSecret` only; changes nothing.

        Blocked when the identity may not describe the secret, when the secret is
        missing (and `create` is false) or scheduled for deletion, or when Secrets
        Manager cannot be reached. Manual review when the secret has Secrets Manager's
        own rotation turned on: two rotators would overwrite each other.
        """
        secret = self.config.secret_id
        try:
            described = await self._describe()
        except TransientError as exc:
            return PreflightResult(Readiness.BLOCKED, f"Secrets Manager is unreachable: {exc}")
        except PermanentError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        if described is None:
            if self.config.create:
                return PreflightResult(Readiness.READY)
            return PreflightResult(
                Readiness.BLOCKED,
                f"secret {secret} does not exist in {self.config.region} and create is false",
            )
        if described.get("DeletedDate") is not None:
            return PreflightResult(Readiness.BLOCKED, f"secret {secret} is scheduled for deletion")
        if described.get("RotationEnabled"):
            return PreflightResult(
                Readiness.MANUAL_REVIEW,
                f"secret {secret} has Secrets Manager rotation enabled; "
                "keyshift and its rotation function would overwrite each other",
            )
        return PreflightResult(Readiness.READY)

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Make the version the secret's `AWSCURRENT` (see the module docstring).

        Idempotent: the version is found by its derived token; if it is already
        current nothing is written (a leftover `AWSPENDING` from an interrupted run is
        removed). A missing secret is created with the value when `create` is true.
        """
        delivery = request.delivery
        token = request_token(delivery.version_id)
        described = await self._describe(value=delivery.value)
        if described is None:
            if not self.config.create:
                raise PermanentError(
                    f"secret {self.config.secret_id} does not exist in "
                    f"{self.config.region} and create is false"
                )
            created = await self._create(token, delivery.value)
            if created is not None:
                return self._detail(created["ARN"], token, previous=None, written=True)
            # Someone created it between our look and our write: publish as to any secret.
            described = await self._describe(value=delivery.value)
            if described is None:
                raise TransientError(f"secret {self.config.secret_id} vanished while publishing")
        if described.get("DeletedDate") is not None:
            raise PermanentError(f"secret {self.config.secret_id} is scheduled for deletion")
        stages = _stages(described)
        current = _holder(stages, CURRENT)
        if current == token:
            # Published before; an interrupted run may have left the pending label.
            if PENDING in stages[token]:
                await self._remove_label(PENDING, token, delivery.value)
            previous = _holder(stages, PREVIOUS)
            return self._detail(described["ARN"], token, previous=previous, written=False)
        put = await self._call(
            "PutSecretValue",
            delivery.value,
            SecretId=self.config.secret_id,
            ClientRequestToken=token,
            SecretString=delivery.value.reveal(),
            VersionStages=[PENDING],
        )
        await self._move_label(CURRENT, token, current, delivery.value)
        if PENDING in (put.get("VersionStages") or stages.get(token, [])):
            await self._remove_label(PENDING, token, delivery.value)
        return self._detail(described["ARN"], token, previous=current, written=True)

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Give `AWSCURRENT` back to the version that held it before the failed one.

        Only when the failed version is current (otherwise it was never switched to,
        and only a leftover `AWSPENDING` is removed). The version restored is the one
        labelled `AWSPREVIOUS`, or else the previous keyshift version if it is in
        the secret. Secrets Manager then labels the failed version `AWSPREVIOUS`.

        With no earlier version (the secret was created by the failed publish, or
        its older versions are gone) `AWSCURRENT` cannot be taken away: Secrets
        Manager keeps it on exactly one version, and deleting the secret would
        break every reader. The value is left in place, the failed version gets the
        staging label `KEYSHIFT_ROLLED_BACK` so operators can see it, and the detail
        says `restored: null, marked: true`. Idempotent: a repeat finds the version
        no longer current (or already marked) and changes nothing.
        """
        failed = request.failed
        token = request_token(failed.version_id)
        described = await self._describe()
        if described is None:
            return StepResult({"secret_id": self.config.secret_id, "rolled_back": False})
        stages = _stages(described)
        detail: dict[str, Any] = {
            "secret_arn": described["ARN"],
            "aws_version_id": token,
            "rolled_back": False,
        }
        labels = stages.get(token)
        if labels is None:
            return StepResult(detail)  # the failed version never reached the secret
        if PENDING in labels:
            await self._remove_label(PENDING, token)
        if CURRENT not in labels:
            return StepResult(detail)  # never switched to, or rolled back already
        restore = _holder(stages, PREVIOUS)
        if restore is None and request.previous is not None:
            candidate = request_token(request.previous.version_id)
            restore = candidate if candidate in stages else None
        if restore is not None and restore != token:
            await self._move_label(CURRENT, restore, token)
            return StepResult({**detail, "rolled_back": True, "restored": restore})
        # No version to give AWSCURRENT back to: mark the failed one instead.
        if ROLLED_BACK not in labels:
            await self._move_label(ROLLED_BACK, token, None)
        return StepResult({**detail, "restored": None, "marked": True})

    # --- Secrets Manager calls ----------------------------------------------------------------

    def client(self) -> Any:
        """This target's boto3 Secrets Manager client, made on first use. Raises
        ConfigError when a configured key reference cannot be read."""
        return self.aws.client(SECRETS_MANAGER)

    async def _call(self, action: str, value: Secret | None, **params: Any) -> dict[str, Any]:
        """One Secrets Manager call in a worker thread, its errors translated; a known
        value is scrubbed from AWS's message as a second defence."""
        handled: dict[str, type[Exception]] = {}
        if action == "DescribeSecret":
            handled[_NOT_FOUND] = _Missing
        if action == "CreateSecret":
            handled[_EXISTS] = _Exists
        return await self.aws.call(
            SECRETS_MANAGER,
            action,
            self.config.secret_id,
            secrets=[value.reveal()] if value is not None else [],
            handled=handled,
            **params,
        )

    async def _describe(self, value: Secret | None = None) -> dict[str, Any] | None:
        """The secret's description, or None if it does not exist."""
        try:
            return await self._call("DescribeSecret", value, SecretId=self.config.secret_id)
        except _Missing:
            return None

    async def _create(self, token: str, value: Secret) -> dict[str, Any] | None:
        """CreateSecret with the first version; None if the secret exists by now."""
        try:
            return await self._call(
                "CreateSecret",
                value,
                Name=self.config.secret_id,
                ClientRequestToken=token,
                SecretString=value.reveal(),
            )
        except _Exists:
            return None

    async def _move_label(
        self, label: str, to: str, away_from: str | None, value: Secret | None = None
    ) -> None:
        """Attach `label` to version `to`, taking it from `away_from` (None: a label no
        version holds yet)."""
        move = {"MoveToVersionId": to}
        if away_from is not None:
            move["RemoveFromVersionId"] = away_from
        await self._call(
            "UpdateSecretVersionStage",
            value,
            SecretId=self.config.secret_id,
            VersionStage=label,
            **move,
        )

    async def _remove_label(self, label: str, version: str, value: Secret | None = None) -> None:
        await self._call(
            "UpdateSecretVersionStage",
            value,
            SecretId=self.config.secret_id,
            VersionStage=label,
            RemoveFromVersionId=version,
        )

    def _detail(self, arn: str, token: str, *, previous: str | None, written: bool) -> StepResult:
        return StepResult(
            {
                "secret_arn": arn,
                "aws_version_id": token,
                "previous_aws_version_id": previous,
                "written": written,
            }
        )


class _Missing(Exception):
    """DescribeSecret found no such secret (handled, never escapes)."""


class _Exists(Exception):
    """CreateSecret found the secret already there (handled, never escapes)."""


def _stages(described: Mapping[str, Any]) -> dict[str, list[str]]:
    return {k: list(v) for k, v in (described.get("VersionIdsToStages") or {}).items()}


def _holder(stages: Mapping[str, list[str]], label: str) -> str | None:
    """The version a staging label is attached to (a label is on at most one)."""
    return next((version for version, labels in stages.items() if label in labels), None)
