"""moto in server mode: a local AWS endpoint for tests that drive the real boto3 client.

`ThreadedMotoServer` serves every moto service on one port; clients reach it with
`endpoint_url` and any credentials while IAM checks are off (moto's default).
`iam_enforced()` turns moto's IAM policy evaluation on for a block, so a client
signing with a limited IAM user's key gets AccessDenied as from AWS. moto's
Secrets Manager answers such a denial with an XML body and status 403, where AWS
answers JSON `AccessDeniedException`; tests of the JSON shape inject it instead.

moto's KMS encrypts and decrypts with a disabled key, or one pending deletion; AWS
refuses them (`DisabledException`, `KMSInvalidStateException`:
https://docs.aws.amazon.com/kms/latest/developerguide/key-state.html). While a server
of `moto_server()` runs, its KMS refuses them too (`Encrypt`, `Decrypt`, `ReEncrypt`,
`GenerateDataKey`), so a test can prove that a disabled key no longer works.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import requests
from moto.core.exceptions import JsonRESTError
from moto.kms.models import KmsBackend
from moto.server import ThreadedMotoServer

DUMMY_KEY_ID = "AKIAKEYSHIFTTEST0001"
DUMMY_SECRET_KEY = "moto-dummy-secret-access-key"  # moto accepts any key
REGION = "eu-west-1"
"""The region of the clients and of the bucket the fixtures make."""
BUCKET = "keyshift-test-blobs"
"""The bucket the `s3` fixture makes."""


@dataclass(frozen=True)
class MotoServer:
    endpoint: str

    def client(self, service: str, region: str = "eu-west-1", **keys: str) -> Any:
        """A boto3 client for this server; dummy keys unless others are given."""
        return boto3.session.Session(
            aws_access_key_id=keys.get("key_id", DUMMY_KEY_ID),
            aws_secret_access_key=keys.get("secret_key", DUMMY_SECRET_KEY),
            region_name=region,
        ).client(service, endpoint_url=self.endpoint)

    def reset(self) -> None:
        """Forget every resource (between tests sharing one server)."""
        requests.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()

    @contextmanager
    def iam_enforced(self) -> Iterator[None]:
        """Evaluate IAM policies for every request inside the block."""
        self._set_auth("0")
        try:
            yield
        finally:
            self._set_auth("inf")

    def limited_user(self, name: str, actions: list[str]) -> tuple[str, str]:
        """An IAM user allowed only `actions` on every resource; its (key id, secret key)."""
        iam = self.client("iam", region="us-east-1")
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def _set_auth(self, count: str) -> None:
        url = f"{self.endpoint}/moto-api/reset-auth"
        requests.post(url, data=count.encode(), timeout=10).raise_for_status()


def _refuse_unusable(backend: KmsBackend, key_id: str) -> None:
    """Raise as AWS KMS does for a key that is not enabled."""
    state = backend.keys[key_id].key_state
    if state == "Disabled":
        raise JsonRESTError("DisabledException", f"{backend.keys[key_id].arn} is disabled.")
    if state != "Enabled":
        raise JsonRESTError(
            "KMSInvalidStateException", f"{backend.keys[key_id].arn} is pending deletion."
        )


@contextmanager
def _kms_refuses_unusable_keys() -> Iterator[None]:
    original_encrypt, original_decrypt = KmsBackend.encrypt, KmsBackend.decrypt

    def encrypt(self: KmsBackend, key_id: str, *args: Any, **kwargs: Any) -> Any:
        _refuse_unusable(self, self.any_id_to_key_id(key_id))
        return original_encrypt(self, key_id, *args, **kwargs)

    def decrypt(self: KmsBackend, *args: Any, **kwargs: Any) -> Any:
        plaintext, arn = original_decrypt(self, *args, **kwargs)
        _refuse_unusable(self, self.any_id_to_key_id(arn))
        return plaintext, arn

    KmsBackend.encrypt = encrypt  # type: ignore[method-assign]
    KmsBackend.decrypt = decrypt  # type: ignore[method-assign]
    try:
        yield
    finally:
        KmsBackend.encrypt = original_encrypt  # type: ignore[method-assign]
        KmsBackend.decrypt = original_decrypt  # type: ignore[method-assign]


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    """Start moto on a free port of 127.0.0.1; stopped on exit."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        with _kms_refuses_unusable_keys():
            host, port = server.get_host_and_port()
            yield MotoServer(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[MotoServer]:
    """One moto server for the tests of a module (import this fixture and `aws`)."""
    with moto_server() as server:
        yield server


@pytest.fixture
def aws(moto_endpoint: MotoServer) -> MotoServer:
    """The module's moto server, with every resource of the test before forgotten."""
    moto_endpoint.reset()
    return moto_endpoint


@pytest.fixture
def kms(aws: MotoServer) -> Any:
    """An administrator's KMS client, to set up and inspect keys."""
    return aws.client("kms", region=REGION)


@pytest.fixture
def s3(aws: MotoServer) -> Any:
    """An administrator's S3 client, with the bucket BUCKET made in REGION."""
    client = aws.client("s3", region=REGION)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return client


def key_behind_alias(kms: Any, alias: str, **create: Any) -> str:
    """A KMS key made with `create` (CreateKey's parameters) and named by `alias`; its id."""
    key = str(kms.create_key(**create)["KeyMetadata"]["KeyId"])
    kms.create_alias(AliasName=alias, TargetKeyId=key)
    return key


def key_state(kms: Any, key: str) -> str:
    """`Enabled`, `Disabled`, `PendingDeletion`... of a key (id, ARN or alias)."""
    return str(kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"])


def key_of(kms: Any, alias: str) -> str:
    """The id of the key an alias names."""
    return str(kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"])
