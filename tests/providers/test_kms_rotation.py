"""`kms_key` rotations end to end, through keyshift's engine, the real boto3 client and moto
in server mode: the data keys in files and S3 objects are re-wrapped to a new key and
the alias moves to it, while the old key stays enabled through the grace period and is
disabled only after it; a re-wrap that fails puts every blob back byte for byte and the
alias on the old key, which stays enabled; throttling is retried; a worker killed at any
step is resumed without a second key or a blob re-wrapped wrongly; and no data key or
blob reaches the logs, the CLI output or the audit trail."""

from __future__ import annotations

import asyncio
import base64
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keyshift.domain.states import RotationState
from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.store import Store
from keyshift.targets.aws_kms import kept_name
from keyshift.testing import FakeClock, capture_logs
from tests.conftest import Cli, run_subprocess
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
from tests.doubles.moto_proxy import MotoProxy
from tests.helpers import rotations_of, save_estate, steps, versions

CREDENTIAL = "app-data-key"
ALIAS = "alias/app-data"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_KEY,
    "AWS_DEFAULT_REGION": REGION,
}

# One store backend: what is under test here is KMS and the blobs, not the store.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3's standard chain finds moto's dummy keys, here and in the CLI's processes."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


class Blobs:
    """Data keys under the alias's key: two files (raw, base64) and two S3 objects; the
    plaintext of each, to compare with what the re-wrapped blob decrypts to."""

    def __init__(self, kms: Any, s3: Any, tmp_path: Path) -> None:
        self.kms, self.s3, self.dir = kms, s3, tmp_path / "blobs"
        self.dir.mkdir()
        self.plain: dict[str, bytes] = {}
        self.stored: dict[str, bytes] = {}
        for name in ("raw.bin", "b64.txt", "s3:one.bin", "s3:two.bin"):
            made = kms.generate_data_key(KeyId=ALIAS, KeySpec="AES_256")
            data = made["CiphertextBlob"]
            if name.endswith(".txt"):
                data = base64.b64encode(data) + b"\n"
            self.plain[name] = made["Plaintext"]
            self.stored[name] = data
            self.write(name, data)

    def write(self, name: str, data: bytes) -> None:
        if name.startswith("s3:"):
            self.s3.put_object(Bucket=BUCKET, Key=name[3:], Body=data)
        else:
            (self.dir / name).write_bytes(data)

    def read(self, name: str) -> bytes:
        if name.startswith("s3:"):
            return bytes(self.s3.get_object(Bucket=BUCKET, Key=name[3:])["Body"].read())
        return (self.dir / name).read_bytes()

    def opened(self, name: str) -> tuple[bytes, str]:
        """(plaintext, key ARN) the stored blob decrypts to."""
        data = self.read(name)
        if name.endswith(".txt"):
            data = base64.b64decode(data)
        answer = self.kms.decrypt(CiphertextBlob=data)
        return answer["Plaintext"], answer["KeyId"]

    def kept(self) -> list[str]:
        files = [p.name for p in self.dir.iterdir() if ".keyshift-previous-" in p.name]
        objects = [o["Key"] for o in self.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        return sorted(files + [k for k in objects if ".keyshift-previous-" in k])

    def all_under(self, key_arn: str) -> bool:
        return all(self.opened(n) == (self.plain[n], key_arn) for n in self.plain)

    def unchanged(self) -> bool:
        return all(self.read(n) == self.stored[n] for n in self.stored)


def first_key(kms: Any) -> str:
    return key_behind_alias(kms, ALIAS, Description="app data keys")


def alias_key(kms: Any) -> str:
    return key_of(kms, ALIAS)


def estate(
    endpoint: str,
    blobs: Blobs,
    *,
    grace: str = "10m",
    objects: list[str] | None = None,
    alias_order: int = 30,
) -> dict[str, Any]:
    """The alias's key; the raw file and the S3 objects in one kms_rewrap action, the
    base64 file in another, and the alias moved last."""
    aws = {"region": REGION, "endpoint_url": endpoint}
    objects = objects if objects is not None else ["one.bin", "two.bin"]
    return {
        "credentials": [
            {
                "name": CREDENTIAL,
                "owner": "team-payments",
                "environment": "dev",
                "policy": {"grace_period": grace},
                "provider": {"type": "kms_key", "alias": ALIAS, **aws},
                "actions": [
                    {
                        "type": "kms_rewrap",
                        "order": 10,
                        "on_failure": "abort",
                        "config": {
                            **aws,
                            "files": [str(blobs.dir / "raw.bin")],
                            "s3": [{"bucket": BUCKET, "key": k} for k in objects],
                        },
                    },
                    {
                        "type": "kms_rewrap",
                        "order": 20,
                        "on_failure": "abort",
                        "config": {
                            **aws,
                            "files": [str(blobs.dir / "b64.txt")],
                            "format": "base64",
                        },
                    },
                    {
                        "type": "kms_alias",
                        "order": alias_order,
                        "on_failure": "abort",
                        "config": aws,
                    },
                ],
            }
        ]
    }


def rotate(store: Store, clock: FakeClock) -> RotationState:
    _, state = asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context(AWS_ENV))
    )
    return state


def resume(store: Store, clock: FakeClock) -> None:
    asyncio.run(rotations.resume(store, actor="test", context=clock.context(AWS_ENV)))


def test_blobs_are_rewrapped_and_the_alias_moved_and_the_old_key_disabled_only_after_grace(
    aws: MotoServer, kms: Any, s3: Any, store: Store, tmp_path: Path
) -> None:
    old = first_key(kms)
    blobs = Blobs(kms, s3, tmp_path)
    apply_estate(store, parse_estate(estate(aws.endpoint, blobs)), actor="test")
    clock = FakeClock()

    assert rotate(store, clock) == RotationState.GRACE
    adopted, new = versions(store, CREDENTIAL)
    new_key, new_arn = new.attributes["key_id"], new.attributes["key_arn"]
    assert adopted.provider_ref.endswith(old)
    assert alias_key(kms) == new_key
    assert blobs.all_under(new_arn), "every data key decrypts under the new key, unchanged"
    assert key_state(kms, old) == "Enabled", "the old key stays usable through the grace period"
    assert len(blobs.kept()) == 4

    clock.advance(timedelta(minutes=5))
    resume(store, clock)
    assert key_state(kms, old) == "Enabled"
    clock.advance(timedelta(minutes=6))
    resume(store, clock)

    [rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.state == "completed"
    assert key_state(kms, old) == "Disabled"
    assert key_state(kms, new_key) == "Enabled"
    adopted, new = versions(store, CREDENTIAL)
    assert (adopted.status, new.status) == ("revoked", "current")
    journal = steps(store, rotation.id)
    names = [s.name for s in journal if s.status == "succeeded"]
    assert names == [
        "validated",
        "preflighted",
        "creating",
        "proving",
        "publishing:10:kms_rewrap",
        "publishing:20:kms_rewrap",
        "publishing:30:kms_alias",
        "verifying:provider",
        "revoking",
    ]
    revoking = next(s for s in journal if s.name == "revoking")
    assert revoking.detail["state"] == "Disabled"
    assert revoking.detail["revocation_proof"].startswith("refused")


def with_a_corrupt_object(
    aws: MotoServer, kms: Any, s3: Any, store: Store, tmp_path: Path, **options: Any
) -> Blobs:
    """The estate applied, its first action listing, after the raw file and `one.bin`, an
    object that holds no ciphertext KMS made: that action re-wraps two blobs, then fails."""
    blobs = Blobs(kms, s3, tmp_path)
    s3.put_object(Bucket=BUCKET, Key="corrupt.bin", Body=b"not a ciphertext blob")
    document = estate(aws.endpoint, blobs, objects=["one.bin", "corrupt.bin"], **options)
    apply_estate(store, parse_estate(document), actor="test")
    return blobs


def test_a_failed_rewrap_puts_every_blob_and_the_alias_back_and_keeps_the_old_key(
    aws: MotoServer, kms: Any, s3: Any, store: Store, tmp_path: Path
) -> None:
    old = first_key(kms)
    blobs = with_a_corrupt_object(aws, kms, s3, store, tmp_path)

    assert rotate(store, FakeClock()) == RotationState.ROLLED_BACK
    [rotation] = rotations_of(store, CREDENTIAL)
    assert f"ReEncrypt on s3://{BUCKET}/corrupt.bin" in (rotation.error or "")
    assert blobs.unchanged(), "every blob is back byte for byte"
    assert blobs.kept() == []
    assert alias_key(kms) == old
    assert key_state(kms, old) == "Enabled"
    journal = {s.name: s for s in steps(store, rotation.id)}
    assert journal["rollback:publishing:10:kms_rewrap"].detail["restored"] == [
        f"s3://{BUCKET}/one.bin",
        str(blobs.dir / "raw.bin"),
    ]
    assert "publishing:20:kms_rewrap" not in journal
    assert "publishing:30:kms_alias" not in journal


def test_an_alias_moved_before_a_failed_rewrap_is_moved_back(
    aws: MotoServer, kms: Any, s3: Any, store: Store, tmp_path: Path
) -> None:
    old = first_key(kms)
    blobs = with_a_corrupt_object(aws, kms, s3, store, tmp_path, alias_order=5)

    assert rotate(store, FakeClock()) == RotationState.ROLLED_BACK
    [rotation] = rotations_of(store, CREDENTIAL)
    journal = {s.name: s for s in steps(store, rotation.id)}
    assert journal["publishing:5:kms_alias"].detail["moved"] is True
    assert journal["rollback:publishing:5:kms_alias"].detail == {
        "alias": ALIAS,
        "key_id": old,
        "moved": True,
    }
    assert alias_key(kms) == old
    assert blobs.unchanged()
    assert key_state(kms, old) == "Enabled"


def test_a_rollback_by_hand_in_grace_puts_the_blobs_and_the_alias_back(
    aws: MotoServer, kms: Any, s3: Any, store: Store, tmp_path: Path
) -> None:
    """The old key was adopted on this first rotation, but a KMS key holds no value: it
    can be given back by its id, so the rollback by hand is not refused."""
    old = first_key(kms)
    blobs = Blobs(kms, s3, tmp_path)
    apply_estate(store, parse_estate(estate(aws.endpoint, blobs)), actor="test")
    clock = FakeClock()
    assert rotate(store, clock) == RotationState.GRACE
    [rotation] = rotations_of(store, CREDENTIAL)

    _, state = asyncio.run(
        rotations.roll_back(
            store, rotation.id, actor="test", reason="orders fail", context=clock.context()
        )
    )
    assert state == RotationState.ROLLED_BACK
    assert alias_key(kms) == old
    assert blobs.unchanged()
    assert blobs.kept() == []
    assert key_state(kms, old) == "Enabled"
    adopted, new = versions(store, CREDENTIAL)
    assert (adopted.status, new.status) == ("current", "disabled")


def test_a_missing_blob_stops_the_rotation_before_a_key_is_made(
    aws: MotoServer, kms: Any, s3: Any, store: Store, tmp_path: Path
) -> None:
    first_key(kms)
    blobs = Blobs(kms, s3, tmp_path)
    document = estate(aws.endpoint, blobs, objects=["one.bin", "missing.bin"])
    apply_estate(store, parse_estate(document), actor="test")
    assert rotate(store, FakeClock()) == RotationState.FAILED
    [rotation] = rotations_of(store, CREDENTIAL)
    assert f"s3://{BUCKET}/missing.bin does not exist" in (rotation.error or "")
    assert len(kms.list_keys()["Keys"]) == 1
    assert blobs.unchanged()


def test_an_alias_move_that_fails_puts_the_rewrapped_blobs_back(
    aws: MotoServer, kms: Any, s3: Any, store: Store, tmp_path: Path
) -> None:
    old = first_key(kms)
    blobs = Blobs(kms, s3, tmp_path)
    with MotoProxy(aws.endpoint) as proxy:
        apply_estate(store, parse_estate(estate(proxy.endpoint, blobs)), actor="test")
        proxy.fail("UpdateAlias", "AccessDeniedException", 1)
        assert rotate(store, FakeClock()) == RotationState.ROLLED_BACK
    assert blobs.unchanged()
    assert alias_key(kms) == old
    assert key_state(kms, old) == "Enabled"


def test_a_throttled_rewrap_is_retried_and_each_blob_rewrapped_once(
    aws: MotoServer, kms: Any, s3: Any, store: Store, tmp_path: Path
) -> None:
    first_key(kms)
    blobs = Blobs(kms, s3, tmp_path)
    with MotoProxy(aws.endpoint) as proxy:
        apply_estate(store, parse_estate(estate(proxy.endpoint, blobs)), actor="test")
        proxy.fail("ReEncrypt", "ThrottlingException", 1)
        assert rotate(store, FakeClock()) == RotationState.GRACE
        calls = proxy.calls("ReEncrypt")
    assert [c.status for c in calls].count(400) == 1
    assert len([c for c in calls if c.status == 200]) == 4, "one ReEncrypt per blob"
    _, new = versions(store, CREDENTIAL)
    assert blobs.all_under(new.attributes["key_arn"])


def test_no_data_key_or_blob_reaches_logs_output_or_the_audit_trail(
    aws: MotoServer, kms: Any, s3: Any, cli: Cli, store: Store, tmp_path: Path
) -> None:
    first_key(kms)
    blobs = Blobs(kms, s3, tmp_path)
    document = estate(aws.endpoint, blobs, grace="0s")
    assert cli("apply", "-f", str(save_estate(tmp_path, document))).exit_code == 0
    secrets = [
        *(base64.b64encode(p).decode() for p in blobs.plain.values()),
        *(p.hex() for p in blobs.plain.values()),
        *(base64.b64encode(b).decode()[:40] for b in blobs.stored.values()),
        *(b.hex()[:40] for b in blobs.stored.values() if not b.endswith(b"\n")),
    ]
    with capture_logs(secrets=secrets):
        rotated = cli("rotate", CREDENTIAL)
    assert rotated.exit_code == 0, rotated.output
    _, new = versions(store, CREDENTIAL)
    assert blobs.all_under(new.attributes["key_arn"])
    [rotation] = rotations_of(store, CREDENTIAL)
    shown = [
        rotated.output,
        cli("show", CREDENTIAL).output,
        cli("audit", "export", "--format", "jsonl").output,
        *(str(s.detail) + str(s.error) for s in steps(store, rotation.id)),
    ]
    assert "completed" in rotated.output
    assert "kms_rewrap" in shown[2], "the audit export holds the re-wrap steps"
    for text in shown:
        for secret in secrets:
            assert secret not in text


CRASH_BOUNDARIES = [
    "creating:issuer",
    "publishing:10:kms_rewrap",
    "publishing:30:kms_alias",
    "revoking:issuer",
]


@pytest.mark.slow
@pytest.mark.parametrize("boundary", CRASH_BOUNDARIES, ids=lambda b: "killed after " + b)
def test_a_rotation_killed_at_a_step_is_resumed_once_without_a_second_key_or_rewrap(
    boundary: str,
    aws: MotoServer,
    kms: Any,
    s3: Any,
    cli: Cli,
    store: Store,
    ks_env: dict[str, str],
    tmp_path: Path,
) -> None:
    old = first_key(kms)
    blobs = Blobs(kms, s3, tmp_path)
    document = estate(aws.endpoint, blobs, grace="0s")
    assert cli("apply", "-f", str(save_estate(tmp_path, document))).exit_code == 0
    env = {**ks_env, **AWS_ENV}

    crashed = run_subprocess(["rotate", CREDENTIAL], {**env, CRASH_AT: boundary})
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    resumed = run_subprocess(["resume"], env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    [rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.state == "completed", rotation.error
    assert len(kms.list_keys()["Keys"]) == 2, "the old key and one new key"
    _, new = versions(store, CREDENTIAL)
    assert alias_key(kms) == new.attributes["key_id"]
    assert key_state(kms, old) == "Disabled"
    assert blobs.all_under(new.attributes["key_arn"])
    # Each kept copy is the blob as it was before: nothing was re-wrapped twice over.
    for name, data in blobs.stored.items():
        kept = kept_name(name.removeprefix("s3:"), new.id)
        if name.startswith("s3:"):
            assert s3.get_object(Bucket=BUCKET, Key=kept)["Body"].read() == data
        else:
            assert (blobs.dir / kept).read_bytes() == data
    journal = steps(store, rotation.id)
    succeeded = [s.name for s in journal if s.status == "succeeded"]
    assert len(succeeded) == len(set(succeeded)), "every step succeeded exactly once"
    interrupted = [s.name for s in journal if (s.error or "").startswith("interrupted")]
    assert interrupted == [boundary.removesuffix(":issuer")]
    if boundary == "publishing:10:kms_rewrap":
        again = next(s for s in journal if s.name == boundary and s.status == "succeeded")
        assert again.detail["rewrapped"] == []
        assert len(again.detail["already_rewrapped"]) == 3
