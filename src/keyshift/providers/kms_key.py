"""`kms_key`: an AWS KMS key that consumers reach through an alias, rotated by making a
new key and moving the alias to it (`mode: new_key`).

A KMS key has no value anyone can export: a version here is the key itself, named by
its ARN. Its public attributes (`key_id`, `key_arn`, `alias`, and `replaces_key_id` /
`replaces_key_arn`, the key the alias named when this one was made) are what the
actions need; the sealed value is empty and the fingerprint is `kms:` and the key id.

- create: `CreateKey` with the current key's spec, usage, description, key policy and
  tags, tagged `keyshift:rotation` with the rotation's marker. A create repeated after
  a crash finds the tagged key (`ListKeys`, `ListResourceTags`) instead of making a
  second one.
- the cutover is two kinds of actions (`keyshift.targets.aws_kms`): `kms_rewrap`
  re-encrypts the data keys stored under the old key to the new one, verified blob by
  blob, and `kms_alias` moves the alias. Both undo on rollback.
- verify: `Encrypt` and `Decrypt` of a fixed probe (no secret) with the key, as a
  consumer would; a disabled key refuses, so the revocation is proven too.
- revoke: `DisableKey` on the old key, then `ScheduleKeyDeletion` when
  `pending_window_days` is set (off by default: a disabled key can be enabled again,
  a deleted one and every blob under it are gone). It runs only after the grace
  period, and the engine revokes only when every publish action succeeded (a failed
  `kms_rewrap` rolls back, or leaves the old key valid). It refuses while the alias
  still names the old key.
- the first rotation adopts the key the alias names (it was made outside keyshift),
  so that it is the old key disabled at the end.

`mode: rotate_material` (KMS's on-demand rotation, `RotateKeyOnDemand`) is not
implemented: KMS keeps the old material inside the same key and never disables it,
and moto, which the tests drive, records such a rotation without changing the material,
so a re-wrap to it could not be shown to happen. See docs/kms.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

from pydantic import BaseModel, Field, field_validator

from keyshift.aws import AwsClients, AwsConnection, Service
from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError
from keyshift.providers import base
from keyshift.providers.base import (
    AdoptedVersion,
    Capability,
    IssuedVersion,
    PreflightResult,
    Readiness,
    RevokeResult,
    VerifyResult,
    VersionInfo,
)

__all__ = ["FINGERPRINT_PREFIX", "KMS", "KmsKeyConfig", "KmsKeyProvider", "rotation_tag"]

KMS: Final = Service("KMS", "kms")
FINGERPRINT_PREFIX: Final = "kms:"
ROTATION_TAG: Final = "keyshift:rotation"
CREDENTIAL_TAG: Final = "keyshift:credential"
PROBE: Final = b"keyshift probe: not a secret"
"""What verify encrypts and decrypts to show the key works."""
_NOT_FOUND: Final = "NotFoundException"
_GONE_STATES: Final = frozenset({"Disabled", "PendingDeletion", "PendingReplicaDeletion"})
_OWN_TAGS: Final = (ROTATION_TAG, CREDENTIAL_TAG)
_ALIAS: Final = re.compile(r"alias/[a-zA-Z0-9/_-]{1,250}")


class KmsKeyConfig(AwsConnection):
    """The alias consumers use and how a new version is made; `region`, `endpoint_url`
    and the key references are those of every AWS plugin."""

    alias: str
    """The alias consumers encrypt with, `alias/NAME`; it names the current key."""
    mode: Literal["new_key"] = "new_key"
    """`new_key`: each version is a new KMS key, and the alias moves to it.
    (`rotate_material` is not implemented; see docs/kms.md.)"""
    pending_window_days: int | None = Field(default=None, ge=7, le=30)
    """After disabling the old key, schedule its deletion with this waiting period (7 to
    30 days). Unset (the default): the old key stays disabled, and can be enabled again."""

    @field_validator("alias")
    @classmethod
    def _customer_alias(cls, alias: str) -> str:
        if not _ALIAS.fullmatch(alias):
            raise ValueError("must be alias/NAME (NAME of letters, digits, '/', '_' and '-')")
        if alias.startswith("alias/aws/"):
            raise ValueError("alias/aws/ names an AWS managed key, which keyshift cannot rotate")
        return alias


def rotation_tag(marker: str) -> dict[str, str]:
    """The tag a key made for the rotation with `marker` carries."""
    return {"TagKey": ROTATION_TAG, "TagValue": marker}


class _Missing(Exception):
    """The key or alias does not exist (handled, never escapes)."""


class KmsKeyProvider:
    """Makes KMS keys, proves them with a probe, and disables the old key at the end."""

    kind: ClassVar[str] = "kms_key"
    Config: ClassVar[type[BaseModel]] = KmsKeyConfig
    capability_fields: ClassVar[tuple[str, ...]] = ()
    holds_no_value: ClassVar[bool] = True
    """A KMS key exports nothing: versions carry an empty value and a public fingerprint."""
    required_actions: ClassVar[Mapping[str, str]] = {
        "kms_alias": "consumers encrypt through the alias, and the old key is disabled "
        "only once the alias names the new one"
    }
    """Checked at apply: without the alias moved, no rotation could ever complete."""
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.DUAL_ACTIVE, Capability.AUTHENTICATES, Capability.ADOPTS_EXISTING}
    )

    @classmethod
    def describe(
        cls, config: KmsKeyConfig, integrations: Mapping[str, BaseModel]
    ) -> dict[str, str]:
        """Where it acts: the region (and a non-default endpoint) and the alias."""
        return {"issuer": "AWS KMS", **config.where(), "alias": config.alias, "mode": config.mode}

    def __init__(self, config: KmsKeyConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.aws = AwsClients(config, context)

    # --- the Provider contract ----------------------------------------------------------------

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """`DescribeKey` of the alias only; changes nothing. Blocked when KMS cannot be
        reached, the alias is missing, or its key is not an enabled, symmetric
        encrypt/decrypt key made by KMS and managed by the customer (only those can be
        copied, and only their ciphertexts can be re-wrapped)."""
        try:
            key = await self._describe(self.config.alias)
        except PermanentError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        except Exception as exc:  # a transient error: KMS is unreachable now
            return PreflightResult(Readiness.BLOCKED, f"KMS is unreachable: {exc}")
        if key is None:
            return PreflightResult(
                Readiness.BLOCKED,
                f"alias {self.config.alias} does not exist in {self.config.region}",
            )
        problem = _not_rotatable(key)
        if problem:
            return PreflightResult(Readiness.BLOCKED, f"{self.config.alias}: {problem}")
        return PreflightResult(Readiness.READY, f"{self.config.alias} names key {key['KeyId']}")

    async def create(self, request: base.CreateRequest) -> IssuedVersion:
        """A new key like the one the alias names now (spec, usage, description, key
        policy, tags), tagged with the rotation's marker. The alias does not move here.

        Idempotent: a key tagged with `request.marker` is returned instead of a second
        one (a worker stopped between `CreateKey` and storing the version)."""
        current = await self._describe(self.config.alias)
        if current is None:
            raise PermanentError(
                f"alias {self.config.alias} does not exist in {self.config.region}"
            )
        problem = _not_rotatable(current)
        if problem:
            raise PermanentError(f"{self.config.alias}: {problem}")
        made = await self._tagged(ROTATION_TAG, request.marker)
        if made:
            key = made[0]
        else:
            tags = await self._tags(current["KeyId"])
            policy = await self._call(
                "GetKeyPolicy", current["KeyId"], KeyId=current["KeyId"], PolicyName="default"
            )
            created = await self._call(
                "CreateKey",
                self.config.alias,
                KeySpec=current.get("KeySpec", "SYMMETRIC_DEFAULT"),
                KeyUsage=current.get("KeyUsage", "ENCRYPT_DECRYPT"),
                Description=current.get("Description") or "",
                Policy=policy["Policy"],
                Tags=[
                    *({"TagKey": k, "TagValue": v} for k, v in tags.items() if k not in _OWN_TAGS),
                    rotation_tag(request.marker),
                    {"TagKey": CREDENTIAL_TAG, "TagValue": request.credential},
                ],
            )
            key = created["KeyMetadata"]
        return IssuedVersion(
            provider_ref=key["Arn"],
            value=Secret(""),  # a KMS key exports nothing: there is no value to seal
            attributes={
                "key_id": key["KeyId"],
                "key_arn": key["Arn"],
                "alias": self.config.alias,
                "region": self.config.region,
                "replaces_key_id": current["KeyId"],
                "replaces_key_arn": current["Arn"],
            },
            fingerprint=FINGERPRINT_PREFIX + key["KeyId"],
        )

    async def adopt_existing(self, request: base.AdoptRequest) -> AdoptedVersion | None:
        """The key the alias names on the first rotation, made outside keyshift: it becomes
        the old version, disabled when the rotation ends."""
        key = await self._describe(self.config.alias)
        if key is None:
            return None
        return AdoptedVersion(
            provider_ref=key["Arn"],
            attributes={"key_id": key["KeyId"], "key_arn": key["Arn"], "alias": self.config.alias},
        )

    async def verify(self, request: base.VerifyRequest) -> VerifyResult:
        """Encrypt the probe with the key and decrypt it again, as a consumer would.
        Refused (ok False) when KMS refuses either: a disabled, deleted or missing key,
        or an identity that may not use it. Changes nothing."""
        key = _key_of(request.version)
        try:
            sealed = await self._call("Encrypt", key, KeyId=key, Plaintext=PROBE)
            opened = await self._call(
                "Decrypt", key, KeyId=key, CiphertextBlob=sealed["CiphertextBlob"]
            )
        except PermanentError as exc:
            return VerifyResult(ok=False, detail=str(exc))
        except _Missing:
            return VerifyResult(ok=False, detail=f"key {key} does not exist")
        if opened.get("Plaintext") != PROBE:
            return VerifyResult(ok=False, detail=f"key {key} did not decrypt the probe")
        return VerifyResult(ok=True, detail=f"key {key} encrypts and decrypts")

    async def revoke(self, request: base.RevokeRequest) -> RevokeResult:
        """`DisableKey`, then `ScheduleKeyDeletion` if `pending_window_days` is set.

        Refused (PermanentError) while the alias still names the key: disabling it would
        cut off every consumer that encrypts through the alias. Succeeds when the key is
        already disabled, pending deletion or gone (and still schedules the deletion of a
        disabled key when configured)."""
        key = _key_of(request.version)
        named = await self._describe(self.config.alias)
        if named is not None and key in (named["KeyId"], named["Arn"]):
            raise PermanentError(
                f"alias {self.config.alias} still names key {named['KeyId']}; disabling it "
                "would cut off the consumers that encrypt through the alias (a kms_alias "
                "action moves the alias at the cutover)"
            )
        described = await self._describe(key)
        if described is None:
            return RevokeResult(already_gone=True, detail={"key_id": key, "state": "not found"})
        state = str(described.get("KeyState", ""))
        detail = {"key_id": described["KeyId"], "key_arn": described["Arn"]}
        if state not in _GONE_STATES:
            await self._call("DisableKey", key, KeyId=described["KeyId"])
            state = "Disabled"
        if self.config.pending_window_days is not None and state == "Disabled":
            scheduled = await self._call(
                "ScheduleKeyDeletion",
                key,
                KeyId=described["KeyId"],
                PendingWindowInDays=self.config.pending_window_days,
            )
            state = "PendingDeletion"
            detail["deletion_date"] = str(scheduled.get("DeletionDate", ""))
        return RevokeResult(
            already_gone=described.get("KeyState") in _GONE_STATES,
            detail={**detail, "state": state},
        )

    async def list_versions(self, request: base.ListRequest) -> list[VersionInfo]:
        """The keys keyshift made for this credential (tagged `keyshift:credential`)."""
        found = await self._tagged(CREDENTIAL_TAG, request.credential)
        return [
            VersionInfo(
                provider_ref=key["Arn"],
                marker=None,
                created_at=key.get("CreationDate"),
                expires_at=None,
            )
            for key in sorted(found, key=lambda k: k.get("CreationDate") or 0)
        ]

    async def aclose(self) -> None:
        return None

    # --- KMS calls ----------------------------------------------------------------------------

    async def _call(self, action: str, subject: str, **params: Any) -> dict[str, Any]:
        return await self.aws.call(KMS, action, subject, handled={_NOT_FOUND: _Missing}, **params)

    async def _describe(self, key: str) -> dict[str, Any] | None:
        """The key's metadata (`key` an id, ARN or alias), or None if it does not exist."""
        try:
            answer = await self._call("DescribeKey", key, KeyId=key)
        except _Missing:
            return None
        metadata: dict[str, Any] = answer["KeyMetadata"]
        return metadata

    async def _tags(self, key_id: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        marker: str | None = None
        while True:
            page = await self._call(
                "ListResourceTags", key_id, KeyId=key_id, **({"Marker": marker} if marker else {})
            )
            tags.update({t["TagKey"]: t["TagValue"] for t in page.get("Tags", [])})
            marker = page.get("NextMarker") if page.get("Truncated") else None
            if not marker:
                return tags

    async def _tagged(self, tag: str, value: str) -> list[dict[str, Any]]:
        """The keys of the region tagged `tag` = `value` (a scan of `ListKeys`: KMS has no
        search by tag), with their metadata."""
        found: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            page = await self._call(
                "ListKeys", self.config.region, **({"Marker": marker} if marker else {})
            )
            for entry in page.get("Keys", []):
                try:
                    tags = await self._tags(entry["KeyId"])
                except _Missing:
                    continue  # deleted between the list and the look
                if tags.get(tag) == value:
                    described = await self._describe(entry["KeyId"])
                    if described is not None:
                        found.append(described)
            marker = page.get("NextMarker") if page.get("Truncated") else None
            if not marker:
                return found


def _key_of(version: IssuedVersion) -> str:
    return str(version.attributes.get("key_arn") or version.provider_ref)


def _not_rotatable(key: Mapping[str, Any]) -> str | None:
    """Why keyshift cannot rotate this key by making a new one like it, or None."""
    name = f"key {key.get('KeyId')}"
    if key.get("KeyManager") == "AWS":
        return f"{name} is AWS managed and cannot be replaced"
    if key.get("KeyState") != "Enabled":
        return f"{name} is {key.get('KeyState')}, not Enabled"
    if key.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
        return f"{name} is for {key.get('KeyUsage')}; only ENCRYPT_DECRYPT keys wrap data keys"
    if key.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
        return f"{name} is {key.get('KeySpec')}; only SYMMETRIC_DEFAULT keys are re-wrapped"
    if key.get("Origin", "AWS_KMS") != "AWS_KMS":
        return f"{name} has origin {key.get('Origin')}; keyshift makes keys with AWS_KMS"
    if key.get("MultiRegion"):
        return f"{name} is a multi-Region key; keyshift replaces single-Region keys only"
    return None
