"""The `kms_key` provider and the `kms_rewrap` / `kms_alias` targets against moto in server
mode, through the real boto3 client: a new key like the old one, found again by its tag;
a probe that a disabled key refuses; data keys re-wrapped, verified and kept byte for
byte for rollback; bad blobs and bad configs refused by name."""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.domain.secret import Secret
from keyshift.errors import EstateInvalid, PermanentError
from keyshift.providers import PROVIDERS, ProviderKind
from keyshift.providers.base import (
    AdoptRequest,
    CreateRequest,
    IssuedVersion,
    PreflightRequest,
    Readiness,
    RevokeRequest,
    VerifyRequest,
)
from keyshift.providers.kms_key import ROTATION_TAG, KmsKeyConfig, KmsKeyProvider
from keyshift.service.estate import parse_estate
from keyshift.targets import TARGETS, TargetKind
from keyshift.targets.aws_kms import (
    KmsAliasConfig,
    KmsAliasTarget,
    KmsRewrapConfig,
    KmsRewrapTarget,
    kept_name,
)
from keyshift.targets.base import Delivery, PublishRequest, RollbackRequest
from keyshift.testing import assert_provider_contract
from tests.doubles.moto import (
    BUCKET,
    DUMMY_KEY_ID,
    DUMMY_SECRET_KEY,
    REGION,
    MotoServer,
    key_behind_alias,
    key_of,
    key_state,
)

ALIAS = "alias/app-data"
ENV = {"AWS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_KEY": DUMMY_SECRET_KEY}


def connection(endpoint: str) -> dict[str, Any]:
    return {
        "region": REGION,
        "endpoint_url": endpoint,
        "access_key_id_from": "env:AWS_KEY_ID",
        "secret_access_key_from": "env:AWS_SECRET_KEY",
    }


def first_key(kms: Any) -> str:
    """A key made outside keyshift, named by ALIAS; its id."""
    tags = [{"TagKey": "team", "TagValue": "payments"}]
    return key_behind_alias(kms, ALIAS, Description="app data keys", Tags=tags)


def provider(endpoint: str, **config: Any) -> KmsKeyProvider:
    settings = {**connection(endpoint), "alias": ALIAS, **config}
    return KmsKeyProvider(KmsKeyConfig.model_validate(settings), PluginContext(env=ENV))


def create(p: KmsKeyProvider, rotation: str = "rot-1") -> IssuedVersion:
    request = CreateRequest("app-data", rotation, f"keyshift:{rotation}", Policy(), None)
    return asyncio.run(p.create(request))


def alias_key(kms: Any) -> str:
    return key_of(kms, ALIAS)


def delivery(version: IssuedVersion, version_id: str = "ver-2") -> Delivery:
    return Delivery(
        credential="app-data",
        rotation_id="rot-1",
        version_id=version_id,
        fingerprint=version.fingerprint or "",
        value=version.value,
        attributes=version.attributes,
    )


def rewrap(endpoint: str, **config: Any) -> KmsRewrapTarget:
    settings = {**connection(endpoint), **config}
    return KmsRewrapTarget(KmsRewrapConfig.model_validate(settings), PluginContext(env=ENV))


def data_key(kms: Any, key: str = ALIAS, **context: str) -> tuple[bytes, bytes]:
    """(plaintext, ciphertext blob) of a new data key under `key`."""
    extra = {"EncryptionContext": context} if context else {}
    made = kms.generate_data_key(KeyId=key, KeySpec="AES_256", **extra)
    return made["Plaintext"], made["CiphertextBlob"]


@dataclass(frozen=True)
class FileAndObject:
    """A data key in the file `path`, another in the object `k.bin`, both under the alias's
    key, and a kms_rewrap target over both."""

    target: KmsRewrapTarget
    path: Path
    file_plain: bytes
    file_blob: bytes
    object_plain: bytes
    object_blob: bytes


def file_and_object(endpoint: str, kms: Any, s3: Any, tmp_path: Path) -> FileAndObject:
    file_plain, file_blob = data_key(kms)
    object_plain, object_blob = data_key(kms)
    path = tmp_path / "key.bin"
    path.write_bytes(file_blob)
    s3.put_object(Bucket=BUCKET, Key="k.bin", Body=object_blob)
    target = rewrap(endpoint, files=[str(path)], s3=[{"bucket": BUCKET, "key": "k.bin"}])
    return FileAndObject(target, path, file_plain, file_blob, object_plain, object_blob)


def opened(kms: Any, blob: bytes, **context: str) -> tuple[bytes, str]:
    """(plaintext, key ARN) a blob decrypts to."""
    extra = {"EncryptionContext": context} if context else {}
    answer = kms.decrypt(CiphertextBlob=blob, **extra)
    return answer["Plaintext"], answer["KeyId"]


# --- the provider -------------------------------------------------------------------------


def test_kms_key_is_registered_with_its_config() -> None:
    assert PROVIDERS[ProviderKind.KMS_KEY] is KmsKeyProvider
    assert TARGETS[TargetKind.KMS_REWRAP] is KmsRewrapTarget
    assert TARGETS[TargetKind.KMS_ALIAS] is KmsAliasTarget


def test_provider_keeps_the_contract(aws: MotoServer, kms: Any) -> None:
    first_key(kms)
    asyncio.run(assert_provider_contract(provider(aws.endpoint)))


def test_create_makes_a_key_like_the_current_one_and_leaves_the_alias(
    aws: MotoServer, kms: Any
) -> None:
    old = first_key(kms)
    version = create(provider(aws.endpoint))
    new = version.attributes["key_id"]
    assert new != old
    assert version.value.reveal() == ""  # a KMS key exports nothing
    assert version.fingerprint == f"kms:{new}"
    assert version.provider_ref == version.attributes["key_arn"]
    assert version.attributes["replaces_key_id"] == old
    metadata = kms.describe_key(KeyId=new)["KeyMetadata"]
    assert (metadata["Description"], metadata["KeySpec"], metadata["KeyUsage"]) == (
        "app data keys",
        "SYMMETRIC_DEFAULT",
        "ENCRYPT_DECRYPT",
    )
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=new)["Tags"]}
    assert tags == {
        "team": "payments",
        ROTATION_TAG: "keyshift:rot-1",
        "keyshift:credential": "app-data",
    }
    assert alias_key(kms) == old, "the alias moves at the cutover, not at create"


def test_create_repeated_after_a_crash_finds_the_key_it_made(aws: MotoServer, kms: Any) -> None:
    first_key(kms)
    p = provider(aws.endpoint)
    one, two = create(p), create(p)
    assert one.provider_ref == two.provider_ref
    assert len(kms.list_keys()["Keys"]) == 2, "the first key and one new key, not two"
    assert create(p, "rot-2").provider_ref != one.provider_ref


def test_verify_is_refused_once_the_key_is_disabled_and_revoke_is_idempotent(
    aws: MotoServer, kms: Any
) -> None:
    old = first_key(kms)
    p = provider(aws.endpoint)
    new = create(p)
    adopted = asyncio.run(p.adopt_existing(AdoptRequest("app-data")))
    assert adopted is not None
    assert adopted.attributes["key_id"] == old
    old_version = IssuedVersion(adopted.provider_ref, Secret(""), adopted.attributes)
    assert asyncio.run(p.verify(VerifyRequest("app-data", old_version))).ok
    kms.update_alias(AliasName=ALIAS, TargetKeyId=new.attributes["key_id"])

    result = asyncio.run(p.revoke(RevokeRequest("app-data", "rot-1", old_version)))
    assert (result.already_gone, result.detail["state"]) == (False, "Disabled")
    assert key_state(kms, old) == "Disabled"
    refused = asyncio.run(p.verify(VerifyRequest("app-data", old_version)))
    assert not refused.ok
    assert "DisabledException" in refused.detail
    again = asyncio.run(p.revoke(RevokeRequest("app-data", "rot-1", old_version)))
    assert again.already_gone
    assert asyncio.run(p.verify(VerifyRequest("app-data", new))).ok


def test_revoke_refuses_to_disable_the_key_the_alias_still_names(aws: MotoServer, kms: Any) -> None:
    old = first_key(kms)
    p = provider(aws.endpoint)
    adopted = asyncio.run(p.adopt_existing(AdoptRequest("app-data")))
    assert adopted is not None
    version = IssuedVersion(adopted.provider_ref, Secret(""), adopted.attributes)
    with pytest.raises(PermanentError, match=f"alias {ALIAS} still names key {old}"):
        asyncio.run(p.revoke(RevokeRequest("app-data", "rot-1", version)))
    assert key_state(kms, old) == "Enabled"


def test_revoke_schedules_deletion_when_a_pending_window_is_set(aws: MotoServer, kms: Any) -> None:
    old = first_key(kms)
    p = provider(aws.endpoint, pending_window_days=7)
    new = create(p)
    kms.update_alias(AliasName=ALIAS, TargetKeyId=new.attributes["key_id"])
    version = IssuedVersion("arn", Secret(""), {"key_arn": new.attributes["replaces_key_arn"]})
    result = asyncio.run(p.revoke(RevokeRequest("app-data", "rot-1", version)))
    assert result.detail["state"] == "PendingDeletion"
    assert key_state(kms, old) == "PendingDeletion"


def test_preflight_blocks_a_missing_alias_and_a_disabled_key(aws: MotoServer, kms: Any) -> None:
    p = provider(aws.endpoint)
    missing = asyncio.run(p.preflight(PreflightRequest("app-data")))
    assert missing.readiness == Readiness.BLOCKED
    assert f"alias {ALIAS} does not exist" in missing.reason
    old = first_key(kms)
    assert asyncio.run(p.preflight(PreflightRequest("app-data"))).readiness == Readiness.READY
    kms.disable_key(KeyId=old)
    disabled = asyncio.run(p.preflight(PreflightRequest("app-data")))
    assert disabled.readiness == Readiness.BLOCKED
    assert "Disabled, not Enabled" in disabled.reason


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"alias": "app-data"}, "provider.alias: must be alias/NAME"),
        ({"alias": "alias/aws/s3"}, "provider.alias: alias/aws/ names an AWS managed key"),
        ({"alias": ALIAS, "mode": "rotate_material"}, "provider.mode: must be one of new_key"),
        ({"alias": ALIAS, "pending_window_days": 3}, "provider.pending_window_days: input"),
        ({"alias": ALIAS, "access_key_id_from": "env:K"}, "provider: set access_key_id_from"),
        ({}, "provider.alias: is required"),
    ],
)
def test_a_bad_provider_config_names_the_field(config: dict[str, Any], error: str) -> None:
    estate = {
        "credentials": [
            {
                "name": "app-data",
                "owner": "team-payments",
                "environment": "dev",
                "provider": {"type": "kms_key", "region": REGION, **config},
            }
        ]
    }
    with pytest.raises(EstateInvalid) as raised:
        parse_estate(estate)
    assert f"credentials[0].{error}" in str(raised.value)


def test_a_kms_key_without_a_kms_alias_action_is_refused_at_apply() -> None:
    rewrap_only = {"type": "kms_rewrap", "order": 10, "config": {"region": REGION, "files": ["/k"]}}
    estate = {
        "credentials": [
            {
                "name": "app-data",
                "owner": "team-payments",
                "environment": "dev",
                "provider": {"type": "kms_key", "region": REGION, "alias": ALIAS},
                "actions": [rewrap_only],
            }
        ]
    }
    with pytest.raises(EstateInvalid) as raised:
        parse_estate(estate)
    assert "credentials[0].actions: app-data (kms_key) needs a kms_alias action" in str(
        raised.value
    )


def test_kms_actions_on_another_kind_of_credential_are_refused_at_apply() -> None:
    estate = {
        "credentials": [
            {
                "name": "api-key",
                "owner": "team-payments",
                "environment": "dev",
                "provider": {"type": "random"},
                "actions": [
                    {"type": "kms_alias", "order": 10, "config": {"region": REGION}},
                    {
                        "type": "file",
                        "order": 20,
                        "config": {"path": "/x/k.env", "key": "K", "file_format": "env"},
                    },
                ],
            }
        ]
    }
    with pytest.raises(EstateInvalid) as raised:
        parse_estate(estate)
    assert (
        "credentials[0].actions[0].type: kms_alias works for kms_key credentials only, "
        "and api-key is random"
    ) in str(raised.value)
    assert "actions[1]" not in str(raised.value)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({}, "list at least one blob"),
        ({"files": ["relative/blob.bin"]}, "not an absolute path"),
        ({"files": ["/x/a", "/x/a"]}, "listed twice"),
        ({"s3": [{"bucket": "B", "key": "k"}]}, "bucket"),
        ({"files": ["/x/a"], "format": "hex"}, "format"),
    ],
)
def test_a_bad_rewrap_config_is_refused(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        KmsRewrapConfig.model_validate({"region": REGION, **config})


# --- kms_rewrap ---------------------------------------------------------------------------


def test_rewrap_moves_files_and_objects_to_the_new_key_with_the_same_data_keys(
    aws: MotoServer, kms: Any, s3: Any, tmp_path: Path
) -> None:
    old = first_key(kms)
    new = create(provider(aws.endpoint))
    raw_plain, raw_blob = data_key(kms)
    b64_plain, b64_blob = data_key(kms)
    s3_plain, s3_blob = data_key(kms)
    raw = tmp_path / "raw.bin"
    raw.write_bytes(raw_blob)
    raw.chmod(0o640)
    s3.put_object(Bucket=BUCKET, Key="keys/one.bin", Body=s3_blob, ContentType="x/blob")
    files = rewrap(aws.endpoint, files=[str(raw)], s3=[{"bucket": BUCKET, "key": "keys/one.bin"}])
    texts = rewrap(aws.endpoint, files=[str(tmp_path / "b64.txt")], format="base64")
    (tmp_path / "b64.txt").write_bytes(base64.b64encode(b64_blob) + b"\n")

    result = asyncio.run(files.publish(PublishRequest(delivery(new), None)))
    asyncio.run(texts.publish(PublishRequest(delivery(new), None)))

    assert result.detail["rewrapped"] == [str(raw), f"s3://{BUCKET}/keys/one.bin"]
    new_arn = new.attributes["key_arn"]
    assert opened(kms, raw.read_bytes()) == (raw_plain, new_arn)
    assert raw.stat().st_mode & 0o777 == 0o640
    stored = s3.get_object(Bucket=BUCKET, Key="keys/one.bin")
    assert stored["ContentType"] == "x/blob"
    assert opened(kms, stored["Body"].read()) == (s3_plain, new_arn)
    text = (tmp_path / "b64.txt").read_bytes()
    assert text.endswith(b"\n")
    assert opened(kms, base64.b64decode(text)) == (b64_plain, new_arn)
    # The old blobs are kept byte for byte, still under the old key.
    assert (tmp_path / kept_name("raw.bin", "ver-2")).read_bytes() == raw_blob
    kept = s3.get_object(Bucket=BUCKET, Key=kept_name("keys/one.bin", "ver-2"))["Body"].read()
    assert kept == s3_blob
    assert opened(kms, kept)[1].endswith(old)


def test_rewrap_run_again_finds_the_blobs_rewrapped_and_writes_nothing(
    aws: MotoServer, kms: Any, tmp_path: Path
) -> None:
    first_key(kms)
    new = create(provider(aws.endpoint))
    _, blob = data_key(kms)
    path = tmp_path / "key.bin"
    path.write_bytes(blob)
    target = rewrap(aws.endpoint, files=[str(path)])
    asyncio.run(target.publish(PublishRequest(delivery(new), None)))
    once = path.read_bytes()
    again = asyncio.run(target.publish(PublishRequest(delivery(new), None)))
    assert again.detail["rewrapped"] == []
    assert again.detail["already_rewrapped"] == [str(path)]
    assert path.read_bytes() == once
    assert (tmp_path / kept_name("key.bin", "ver-2")).read_bytes() == blob


def test_rollback_writes_every_kept_blob_back_byte_for_byte(
    aws: MotoServer, kms: Any, s3: Any, tmp_path: Path
) -> None:
    first_key(kms)
    new = create(provider(aws.endpoint))
    blobs = file_and_object(aws.endpoint, kms, s3, tmp_path)
    asyncio.run(blobs.target.publish(PublishRequest(delivery(new), None)))
    assert blobs.path.read_bytes() != blobs.file_blob

    undone = asyncio.run(blobs.target.rollback(RollbackRequest(delivery(new), None)))
    assert undone.detail["restored"] == [f"s3://{BUCKET}/k.bin", str(blobs.path)]
    assert blobs.path.read_bytes() == blobs.file_blob
    assert s3.get_object(Bucket=BUCKET, Key="k.bin")["Body"].read() == blobs.object_blob
    assert not (tmp_path / kept_name("key.bin", "ver-2")).exists()
    listed = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert [o["Key"] for o in listed] == ["k.bin"]
    twice = asyncio.run(blobs.target.rollback(RollbackRequest(delivery(new), None)))
    assert twice.detail["restored"] == []
    assert blobs.path.read_bytes() == blobs.file_blob


def test_a_corrupted_blob_stops_the_rewrap_and_is_left_as_it_was(
    aws: MotoServer, kms: Any, tmp_path: Path
) -> None:
    first_key(kms)
    new = create(provider(aws.endpoint))
    _, good = data_key(kms)
    (tmp_path / "a.bin").write_bytes(good)
    (tmp_path / "b.bin").write_bytes(b"not a ciphertext blob at all")
    target = rewrap(aws.endpoint, files=[str(tmp_path / "a.bin"), str(tmp_path / "b.bin")])
    with pytest.raises(PermanentError, match=r"KMS ReEncrypt on .*b\.bin: Invalid"):
        asyncio.run(target.publish(PublishRequest(delivery(new), None)))
    assert (tmp_path / "b.bin").read_bytes() == b"not a ciphertext blob at all"
    assert not (tmp_path / kept_name("b.bin", "ver-2")).exists()
    assert (tmp_path / kept_name("a.bin", "ver-2")).read_bytes() == good


def test_a_blob_under_another_key_is_not_rewrapped(
    aws: MotoServer, kms: Any, tmp_path: Path
) -> None:
    first_key(kms)
    other = kms.create_key(Description="someone else's")["KeyMetadata"]["KeyId"]
    new = create(provider(aws.endpoint))
    _, blob = data_key(kms, other)
    path = tmp_path / "other.bin"
    path.write_bytes(blob)
    target = rewrap(aws.endpoint, files=[str(path)])
    with pytest.raises(PermanentError, match=f"under key .*{other}"):
        asyncio.run(target.publish(PublishRequest(delivery(new), None)))
    assert path.read_bytes() == blob


def test_blobs_with_an_encryption_context_keep_it(
    aws: MotoServer, kms: Any, tmp_path: Path
) -> None:
    first_key(kms)
    new = create(provider(aws.endpoint))
    plain, blob = data_key(kms, tenant="t1")
    path = tmp_path / "key.bin"
    path.write_bytes(blob)
    target = rewrap(aws.endpoint, files=[str(path)], encryption_context={"tenant": "t1"})
    asyncio.run(target.publish(PublishRequest(delivery(new), None)))
    assert opened(kms, path.read_bytes(), tenant="t1") == (plain, new.attributes["key_arn"])


def test_preflight_names_the_blobs_it_cannot_read(
    aws: MotoServer, kms: Any, s3: Any, tmp_path: Path
) -> None:
    target = rewrap(
        aws.endpoint,
        files=[str(tmp_path / "missing.bin")],
        s3=[{"bucket": BUCKET, "key": "nope.bin"}],
        format="base64",
    )
    result = asyncio.run(target.preflight(PreflightRequest("app-data")))
    assert result.readiness == Readiness.BLOCKED
    assert str(tmp_path / "missing.bin") in result.reason
    assert f"s3://{BUCKET}/nope.bin does not exist" in result.reason


# --- kms_alias ----------------------------------------------------------------------------


def test_alias_moves_to_the_new_key_and_back_on_rollback(aws: MotoServer, kms: Any) -> None:
    old = first_key(kms)
    new = create(provider(aws.endpoint))
    target = KmsAliasTarget(
        KmsAliasConfig.model_validate(connection(aws.endpoint)), PluginContext(env=ENV)
    )
    moved = asyncio.run(target.publish(PublishRequest(delivery(new), None)))
    assert moved.detail == {
        "alias": ALIAS,
        "key_id": new.attributes["key_id"],
        "previous_key_id": old,
        "moved": True,
    }
    assert alias_key(kms) == new.attributes["key_id"]
    assert not asyncio.run(target.publish(PublishRequest(delivery(new), None))).detail["moved"]
    back = asyncio.run(target.rollback(RollbackRequest(delivery(new), None)))
    assert back.detail["moved"]
    assert alias_key(kms) == old
    assert not asyncio.run(target.rollback(RollbackRequest(delivery(new), None))).detail["moved"]


def test_debug_logs_of_botocore_never_hold_a_data_key_or_a_blob(
    aws: MotoServer, kms: Any, s3: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first_key(kms)
    new = create(provider(aws.endpoint))
    blobs = file_and_object(aws.endpoint, kms, s3, tmp_path)
    caplog.set_level(logging.DEBUG)

    asyncio.run(blobs.target.publish(PublishRequest(delivery(new), None)))
    rewrapped = [blobs.path.read_bytes(), s3.get_object(Bucket=BUCKET, Key="k.bin")["Body"].read()]
    asyncio.run(blobs.target.rollback(RollbackRequest(delivery(new), None)))

    assert any(r.name.startswith("botocore") for r in caplog.records), "debug logging was on"
    plain = (blobs.file_plain, blobs.object_plain, blobs.file_blob, blobs.object_blob)
    for data in (*plain, *rewrapped):
        assert base64.b64encode(data).decode()[:24] not in caplog.text
        assert repr(data)[2:26] not in caplog.text
