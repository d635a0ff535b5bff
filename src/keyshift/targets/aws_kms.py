"""The cutover of a `kms_key` credential: `kms_rewrap` re-encrypts the stored data keys to
the new KMS key, `kms_alias` moves the alias to it.

`kms_rewrap` reads each blob (a file, or an S3 object) holding a ciphertext blob that
KMS made (`Encrypt`, `GenerateDataKey`), raw bytes or base64 (`format`), and for each:

1. `ReEncrypt` to the new key (`DestinationKeyId`). KMS answers with the key the blob
   was under (`SourceKeyId`): a blob already under the new key was re-wrapped before
   (a step run again after a crash) and is only checked; a blob under a key other
   than the one the new key replaces is refused, since it is not this credential's.
2. Verify before writing: `Decrypt` of the old blob and of the new one (under the new
   key) must give the same plaintext. Only SHA-256 digests are compared, in memory; the
   plaintext is dropped at once and never logged, returned or raised.
3. Keep the old blob byte for byte beside it, as `NAME.keyshift-previous-<version id>`
   (a file next to the file, with its mode; an object next to the object), then write
   the new blob: a file atomically (temp file, rename, same mode and owner), an object
   with `PutObject` (same content type and metadata).

Rollback writes each kept blob back, byte for byte, newest first, and removes the
copy; a blob without a copy was not re-wrapped and is left alone. Idempotent: a copy
written back and removed is not written again. The copies of a rotation that
completed stay (under the old key, disabled, not deleted): an operator removes them.

`kms_alias` moves the version's alias (`UpdateAlias`) to the new key; rollback moves
it back to the key it replaced, if it still names the new one.

Messages and step details name paths, buckets, object keys, key ids and AWS error
codes, never a blob or a plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keyshift.aws import AwsClients, AwsConnection, Service
from keyshift.context import PluginContext
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError
from keyshift.targets import base
from keyshift.targets.base import BaseTarget, Delivery, PreflightResult, Readiness, StepResult
from keyshift.targets.file import _atomic_write, _read_or_none, _remove

__all__ = [
    "KEPT_SUFFIX",
    "KmsAliasConfig",
    "KmsAliasTarget",
    "KmsRewrapConfig",
    "KmsRewrapTarget",
    "S3Blob",
    "kept_name",
]

KMS: Final = Service("KMS", "kms")
S3: Final = Service("S3", "s3")
KEPT_SUFFIX: Final = ".keyshift-previous-"
_NOT_FOUND: Final = "NotFoundException"
_NO_OBJECT: Final = frozenset({"NoSuchKey", "HTTP 404"})
"""How S3 says an object is missing (`HTTP 404`: an answer without an error body)."""
ConfigT = TypeVar("ConfigT", bound=AwsConnection)


def kept_name(name: str, version_id: str) -> str:
    """Where the blob `name` is kept while version `version_id` replaces it."""
    return f"{name}{KEPT_SUFFIX}{version_id}"


class S3Blob(BaseModel):
    """An S3 object holding one ciphertext blob."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    key: str = Field(min_length=1, max_length=900)
    """The object key (short enough that the kept copy's key fits S3's 1,024 bytes)."""


class KmsRewrapConfig(AwsConnection):
    """The blobs to re-wrap; `region`, `endpoint_url` and the key references (those of
    every AWS plugin) say where KMS and S3 are and as whom to call them."""

    files: list[str] = Field(default_factory=list)
    """Absolute paths of files on this host, each holding one ciphertext blob."""
    s3: list[S3Blob] = Field(default_factory=list)
    """S3 objects, each holding one ciphertext blob (`bucket`, `key`)."""
    format: Literal["binary", "base64"] = "binary"
    """How each blob is stored: the raw `CiphertextBlob` bytes, or base64 text."""
    encryption_context: dict[str, str] = Field(default_factory=dict)
    """The encryption context the blobs were made with (the same for every blob); the
    re-wrapped blobs keep it."""

    @field_validator("files")
    @classmethod
    def _absolute(cls, files: list[str]) -> list[str]:
        for path in files:
            if not Path(path).is_absolute():
                raise ValueError(f"{path} is not an absolute path")
            if KEPT_SUFFIX in Path(path).name:
                raise ValueError(f"{path} is a copy keyshift keeps, not a blob")
        if len(set(files)) != len(files):
            raise ValueError("a file is listed twice")
        return files

    @model_validator(mode="after")
    def _some_blob(self) -> KmsRewrapConfig:
        if not self.files and not self.s3:
            raise ValueError("list at least one blob in files or s3")
        if len({(b.bucket, b.key) for b in self.s3}) != len(self.s3):
            raise ValueError("an S3 object is listed twice")
        return self


class KmsAliasConfig(AwsConnection):
    """Where KMS is and as whom to call it (the fields of every AWS plugin); the alias
    moved is the version's own, from its `kms_key` provider."""


@dataclass(frozen=True)
class _Keys:
    """The new key of a delivery and the key it replaces (ARNs)."""

    new: str
    new_id: str
    replaces: str | None
    replaces_id: str | None
    alias: str


def _keys(delivery: Delivery) -> _Keys:
    attributes = delivery.attributes
    if "key_arn" not in attributes or "alias" not in attributes:
        raise PermanentError(
            f"version {delivery.version_id} is not a KMS key version (a kms_key credential's)"
        )
    return _Keys(
        new=str(attributes["key_arn"]),
        new_id=str(attributes.get("key_id") or attributes["key_arn"]),
        replaces=attributes.get("replaces_key_arn"),
        replaces_id=attributes.get("replaces_key_id"),
        alias=str(attributes["alias"]),
    )


class _Missing(Exception):
    """The object or key does not exist (handled, never escapes)."""


class _Blob:
    """One stored ciphertext blob: its bytes as stored, and where it is kept."""

    name: str

    async def read(self) -> bytes | None:
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def read_kept(self, version_id: str) -> bytes | None:
        raise NotImplementedError

    async def keep(self, data: bytes, version_id: str) -> None:
        raise NotImplementedError

    async def drop_kept(self, version_id: str) -> None:
        raise NotImplementedError


class _FileBlob(_Blob):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.name = path

    def _mode(self) -> int:
        try:
            return stat.S_IMODE(self.path.stat().st_mode)
        except FileNotFoundError:
            return 0o600

    async def read(self) -> bytes | None:
        return _read_or_none(self.path, self.name)

    async def write(self, data: bytes) -> None:
        _atomic_write(self.path, data, self.name, new_mode=self._mode())

    def _kept(self, version_id: str) -> Path:
        return self.path.with_name(kept_name(self.path.name, version_id))

    async def read_kept(self, version_id: str) -> bytes | None:
        return _read_or_none(self._kept(version_id), self.name)

    async def keep(self, data: bytes, version_id: str) -> None:
        _atomic_write(self._kept(version_id), data, self.name, new_mode=self._mode())

    async def drop_kept(self, version_id: str) -> None:
        _remove(self._kept(version_id), self.name)


class _S3Blob(_Blob):
    def __init__(self, blob: S3Blob, aws: AwsClients) -> None:
        self.blob = blob
        self.aws = aws
        self.name = f"s3://{blob.bucket}/{blob.key}"
        self._head: dict[str, Any] = {}

    async def _get(self, key: str) -> bytes | None:
        try:
            answer = await self.aws.call(
                S3,
                "GetObject",
                self.name,
                handled=dict.fromkeys(_NO_OBJECT, _Missing),
                Bucket=self.blob.bucket,
                Key=key,
            )
        except _Missing:
            return None
        if key == self.blob.key:
            self._head = {
                k: answer[k] for k in ("ContentType", "Metadata") if answer.get(k) is not None
            }
        body = answer["Body"]
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    async def _put(self, key: str, data: bytes) -> None:
        await self.aws.call(
            S3, "PutObject", self.name, Bucket=self.blob.bucket, Key=key, Body=data, **self._head
        )

    async def read(self) -> bytes | None:
        return await self._get(self.blob.key)

    async def write(self, data: bytes) -> None:
        await self._put(self.blob.key, data)

    async def read_kept(self, version_id: str) -> bytes | None:
        return await self._get(kept_name(self.blob.key, version_id))

    async def keep(self, data: bytes, version_id: str) -> None:
        await self._put(kept_name(self.blob.key, version_id), data)

    async def drop_kept(self, version_id: str) -> None:
        await self.aws.call(
            S3,
            "DeleteObject",
            self.name,
            Bucket=self.blob.bucket,
            Key=kept_name(self.blob.key, version_id),
        )


class _AwsTarget(BaseTarget[ConfigT]):
    """A target that calls AWS: its config is an `AwsConnection`, its clients `self.aws`."""

    def __init__(self, config: ConfigT, context: PluginContext) -> None:
        super().__init__(config, context)
        self.aws = AwsClients(config, context)


class KmsRewrapTarget(_AwsTarget[KmsRewrapConfig]):
    """Re-encrypts stored data keys to the new KMS key, verified, keeping the old blobs."""

    kind: ClassVar[str] = "kms_rewrap"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = KmsRewrapConfig
    serves: ClassVar[frozenset[str]] = frozenset({"kms_key"})
    """Only a KMS key version names a key to re-wrap to (checked at apply)."""

    @classmethod
    def describe(cls, config: KmsRewrapConfig) -> dict[str, str]:
        """Where it writes: the region, and how many files and objects (and which)."""
        where = {**config.where(), "files": ", ".join(config.files)}
        where["s3"] = ", ".join(f"s3://{b.bucket}/{b.key}" for b in config.s3)
        return {k: v for k, v in where.items() if v}

    def blobs(self) -> list[_Blob]:
        """The configured blobs, files first, in the order listed."""
        return [
            *(_FileBlob(path) for path in self.config.files),
            *(_S3Blob(blob, self.aws) for blob in self.config.s3),
        ]

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """Every blob can be read, and holds what `format` says. Changes nothing."""
        problems: list[str] = []
        for blob in self.blobs():
            try:
                stored = await blob.read()
                if stored is None:
                    problems.append(f"{blob.name} does not exist")
                else:
                    self._decode(blob, stored)
            except PermanentError as exc:
                problems.append(str(exc))
            except Exception as exc:  # a transient error: cannot tell now
                problems.append(f"{blob.name}: {type(exc).__name__}")
        if problems:
            return PreflightResult(Readiness.BLOCKED, "; ".join(problems))
        return PreflightResult(Readiness.READY)

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Re-wrap every blob to the new key, verified, keeping each old blob (see the
        module docstring). Stops at the first blob that cannot be re-wrapped (missing,
        not a ciphertext, under another key, refused by KMS): the engine's rollback then
        writes back the blobs re-wrapped so far.

        Idempotent: a blob already under the new key is verified and left as it is."""
        keys = _keys(request.delivery)
        version_id = request.delivery.version_id
        rewrapped: list[str] = []
        already: list[str] = []
        for blob in self.blobs():
            stored = await blob.read()
            if stored is None:
                raise PermanentError(f"{blob.name} does not exist; nothing to re-wrap")
            ciphertext = self._decode(blob, stored)
            answer = await self._kms(
                "ReEncrypt",
                blob.name,
                CiphertextBlob=ciphertext,
                DestinationKeyId=keys.new,
                **self._contexts(),
            )
            source = str(answer.get("SourceKeyId", ""))
            if source == keys.new:
                await self._verify(blob, None, ciphertext, keys)
                already.append(blob.name)
                continue
            if keys.replaces is not None and source != keys.replaces:
                raise PermanentError(
                    f"{blob.name} is under key {source}, not under {keys.replaces} (which the "
                    "new key replaces); it is not this credential's to re-wrap"
                )
            fresh: bytes = answer["CiphertextBlob"]
            await self._verify(blob, ciphertext, fresh, keys)
            await blob.keep(stored, version_id)
            await blob.write(self._encode(stored, fresh))
            rewrapped.append(blob.name)
        return StepResult(
            {
                "key_id": keys.new_id,
                "from_key_id": keys.replaces_id,
                "blobs": len(rewrapped) + len(already),
                "rewrapped": rewrapped,
                "already_rewrapped": already,
                "verified": "each blob decrypts under the new key to the same plaintext",
            }
        )

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Write back, newest first, every blob kept when the failed version replaced it,
        and remove the kept copy. A blob without a copy is left as it is. Idempotent."""
        version_id = request.failed.version_id
        restored: list[str] = []
        for blob in reversed(self.blobs()):
            kept = await blob.read_kept(version_id)
            if kept is None:
                continue
            await blob.read()  # an object's content type and metadata, to keep them
            await blob.write(kept)
            await blob.drop_kept(version_id)
            restored.append(blob.name)
        return StepResult({"restored": restored, "rolled_back": bool(restored)})

    # --- blobs and KMS ------------------------------------------------------------------------

    def _contexts(self) -> dict[str, Any]:
        context = self.config.encryption_context
        if not context:
            return {}
        return {"SourceEncryptionContext": context, "DestinationEncryptionContext": context}

    async def _kms(self, action: str, subject: str, **params: Any) -> dict[str, Any]:
        return await self.aws.call(KMS, action, subject, **params)

    async def _verify(self, blob: _Blob, old: bytes | None, new: bytes, keys: _Keys) -> None:
        """`new` decrypts under the new key, to what `old` decrypts to (when given). Only
        digests are compared; the plaintexts are dropped here."""
        context = self.config.encryption_context
        extra = {"EncryptionContext": context} if context else {}
        opened = await self._kms("Decrypt", blob.name, CiphertextBlob=new, KeyId=keys.new, **extra)
        digest = hashlib.sha256(opened.pop("Plaintext")).digest()
        del opened
        if old is None:
            return
        before = await self._kms("Decrypt", blob.name, CiphertextBlob=old, **extra)
        expected = hashlib.sha256(before.pop("Plaintext")).digest()
        del before
        if not hmac.compare_digest(digest, expected):
            raise PermanentError(
                f"{blob.name}: the re-wrapped blob does not decrypt to the same data key; "
                "nothing was written"
            )

    def _decode(self, blob: _Blob, stored: bytes) -> bytes:
        if self.config.format == "binary":
            if not stored:
                raise PermanentError(f"{blob.name} is empty, not a ciphertext blob")
            return stored
        try:
            decoded = base64.b64decode(b"".join(stored.split()), validate=True)
        except (binascii.Error, ValueError):
            raise PermanentError(f"{blob.name} is not base64 (format: base64)") from None
        if not decoded:
            raise PermanentError(f"{blob.name} is empty, not a ciphertext blob")
        return decoded

    def _encode(self, stored: bytes, fresh: bytes) -> bytes:
        """The new blob as stored: raw, or base64 ending as the old one did."""
        if self.config.format == "binary":
            return fresh
        trailing = stored[len(stored.rstrip()) :]
        return base64.b64encode(fresh) + trailing


class KmsAliasTarget(_AwsTarget[KmsAliasConfig]):
    """Moves the version's alias to its key; rollback moves it back."""

    kind: ClassVar[str] = "kms_alias"
    phase: ClassVar[Phase] = Phase.PUBLISH
    Config: ClassVar[type[BaseModel]] = KmsAliasConfig
    serves: ClassVar[frozenset[str]] = frozenset({"kms_key"})
    """Only a KMS key version names an alias and a key (checked at apply)."""

    @classmethod
    def describe(cls, config: KmsAliasConfig) -> dict[str, str]:
        """Where it acts: the region (the alias is the credential's)."""
        return config.where()

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
        """KMS answers `ListAliases`. Changes nothing."""
        try:
            await self.aws.call(KMS, "ListAliases", self.config.region, Limit=1)
        except Exception as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        return PreflightResult(Readiness.READY)

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Point the alias at the new key (`UpdateAlias`; `CreateAlias` if it is gone).
        Idempotent: an alias that names the key already is left alone."""
        keys = _keys(request.delivery)
        named = await self._named(keys.alias)
        if named == keys.new_id:
            return StepResult({"alias": keys.alias, "key_id": keys.new_id, "moved": False})
        action = "UpdateAlias" if named is not None else "CreateAlias"
        await self.aws.call(KMS, action, keys.alias, AliasName=keys.alias, TargetKeyId=keys.new_id)
        return StepResult(
            {"alias": keys.alias, "key_id": keys.new_id, "previous_key_id": named, "moved": True}
        )

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Point the alias back at the key the failed version replaced, when it names the
        failed one. Idempotent: otherwise nothing changes."""
        keys = _keys(request.failed)
        back = keys.replaces_id
        if back is None and request.previous is not None:
            back = request.previous.attributes.get("key_id")
        named = await self._named(keys.alias)
        if named != keys.new_id or back is None:
            return StepResult({"alias": keys.alias, "key_id": named, "moved": False})
        await self.aws.call(KMS, "UpdateAlias", keys.alias, AliasName=keys.alias, TargetKeyId=back)
        return StepResult({"alias": keys.alias, "key_id": back, "moved": True})

    async def _named(self, alias: str) -> str | None:
        """The key id the alias names, or None if there is no such alias."""
        try:
            answer = await self.aws.call(
                KMS, "DescribeKey", alias, handled={_NOT_FOUND: _Missing}, KeyId=alias
            )
        except _Missing:
            return None
        return str(answer["KeyMetadata"]["KeyId"])
