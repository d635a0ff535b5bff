"""The `aws_secretsmanager` target against moto in server mode, through the real boto3 client."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from pydantic import ValidationError

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase, RotationState
from keyshift.errors import PermanentError, PluginError, TransientError
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store.store import Store
from keyshift.targets import TARGETS, TargetKind
from keyshift.targets.aws_secretsmanager import (
    ROLLED_BACK,
    AwsSecretsManagerConfig,
    AwsSecretsManagerTarget,
    request_token,
)
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
)
from keyshift.testing import FakeClock
from tests.doubles.moto import (
    DUMMY_KEY_ID,
    DUMMY_SECRET_KEY,
    MotoServer,
)
from tests.helpers import save_estate, value_of, versions

REGION = "eu-west-1"
NAME = "payments/api-key"
ENV = {"AWS_KEY_ID": DUMMY_KEY_ID, "AWS_SECRET_KEY": DUMMY_SECRET_KEY}


@pytest.fixture
def sm(aws: MotoServer) -> Any:
    """An administrator's client, to set up and inspect secrets."""
    return aws.client("secretsmanager")


def new_secret() -> str:
    return "S3CRET-" + secrets.token_hex(8)


def delivery(value: str, version_id: str = "ver-2") -> Delivery:
    return Delivery(
        credential="payments-api",
        rotation_id="rot-1",
        version_id=version_id,
        fingerprint=f"fp-{version_id}",
        value=Secret(value),
    )


def target(
    endpoint: str, env: dict[str, str] | None = None, **config: Any
) -> AwsSecretsManagerTarget:
    settings = {
        "secret_id": NAME,
        "region": REGION,
        "endpoint_url": endpoint,
        "access_key_id_from": "env:AWS_KEY_ID",
        "secret_access_key_from": "env:AWS_SECRET_KEY",
        **config,
    }
    context = PluginContext(env=ENV if env is None else env)
    return AwsSecretsManagerTarget(AwsSecretsManagerConfig.model_validate(settings), context)


def publish(t: AwsSecretsManagerTarget, value: str, version_id: str = "ver-2") -> StepResult:
    return asyncio.run(t.publish(PublishRequest(delivery(value, version_id), None)))


def rollback(t: AwsSecretsManagerTarget, failed: str, previous: str | None) -> StepResult:
    before = delivery(previous, "ver-1") if previous is not None else None
    return asyncio.run(t.rollback(RollbackRequest(delivery(failed), before)))


def preflight(t: AwsSecretsManagerTarget) -> tuple[Readiness, str]:
    result = asyncio.run(t.preflight(PreflightRequest("payments-api")))
    return result.readiness, result.reason


def stages(sm: Any, name: str = NAME) -> dict[str, list[str]]:
    """Every version of the secret with its labels (versions without labels included)."""
    listed = sm.list_secret_version_ids(SecretId=name, IncludeDeprecated=True)["Versions"]
    return {v["VersionId"]: sorted(v.get("VersionStages", [])) for v in listed}


def value_at(sm: Any, stage: str, name: str = NAME) -> str:
    return str(sm.get_secret_value(SecretId=name, VersionStage=stage)["SecretString"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- publish ----------------------------------------------------------------------------------


def test_publish_makes_the_new_value_current_and_the_old_one_previous(
    aws: MotoServer, sm: Any
) -> None:
    old, new = new_secret(), new_secret()
    created = sm.create_secret(Name=NAME, SecretString=old)

    result = publish(target(aws.endpoint), new)

    token = request_token("ver-2")
    assert value_at(sm, "AWSCURRENT") == new
    assert value_at(sm, "AWSPREVIOUS") == old
    assert stages(sm) == {created["VersionId"]: ["AWSPREVIOUS"], token: ["AWSCURRENT"]}
    assert dict(result.detail) == {
        "secret_arn": created["ARN"],
        "aws_version_id": token,
        "previous_aws_version_id": created["VersionId"],
        "written": True,
    }
    assert new not in repr(result.detail)
    assert old not in repr(result.detail)


def test_request_token_is_a_uuid_fixed_by_the_keyshift_version_id() -> None:
    token = request_token("ver-2")

    assert token == request_token("ver-2")
    assert token != request_token("ver-3")
    assert len(token) == 36
    assert token.count("-") == 4


def test_repeated_publish_of_the_same_version_creates_no_new_version(
    aws: MotoServer, sm: Any
) -> None:
    sm.create_secret(Name=NAME, SecretString=new_secret())
    value = new_secret()
    t = target(aws.endpoint)

    publish(t, value)
    again = publish(t, value)

    assert len(stages(sm)) == 2
    assert again.detail["written"] is False
    assert again.detail["aws_version_id"] == request_token("ver-2")
    assert value_at(sm, "AWSCURRENT") == value


def test_publish_interrupted_after_the_write_is_completed_by_a_repeat(
    aws: MotoServer, sm: Any
) -> None:
    old, value = new_secret(), new_secret()
    first = sm.create_secret(Name=NAME, SecretString=old)["VersionId"]
    token = request_token("ver-2")
    # What a crash right after PutSecretValue leaves behind.
    sm.put_secret_value(
        SecretId=NAME, SecretString=value, ClientRequestToken=token, VersionStages=["AWSPENDING"]
    )

    result = publish(target(aws.endpoint), value)

    assert stages(sm) == {first: ["AWSPREVIOUS"], token: ["AWSCURRENT"]}
    assert result.detail["written"] is True


def test_publish_interrupted_before_the_pending_label_was_removed_only_removes_it(
    aws: MotoServer, sm: Any
) -> None:
    first = sm.create_secret(Name=NAME, SecretString=new_secret())["VersionId"]
    value, token = new_secret(), request_token("ver-2")
    sm.put_secret_value(
        SecretId=NAME, SecretString=value, ClientRequestToken=token, VersionStages=["AWSPENDING"]
    )
    sm.update_secret_version_stage(
        SecretId=NAME, VersionStage="AWSCURRENT", MoveToVersionId=token, RemoveFromVersionId=first
    )

    result = publish(target(aws.endpoint), value)

    assert stages(sm) == {first: ["AWSPREVIOUS"], token: ["AWSCURRENT"]}
    assert result.detail["written"] is False
    assert result.detail["previous_aws_version_id"] == first


def test_missing_secret_is_created_with_the_version_when_create_is_true(
    aws: MotoServer, sm: Any
) -> None:
    value = new_secret()
    t = target(aws.endpoint, create=True)

    result = publish(t, value)
    publish(t, value)

    token = request_token("ver-2")
    assert stages(sm) == {token: ["AWSCURRENT"]}
    assert value_at(sm, "AWSCURRENT") == value
    assert result.detail["secret_arn"] == sm.describe_secret(SecretId=NAME)["ARN"]
    assert result.detail["previous_aws_version_id"] is None


def test_missing_secret_with_create_false_is_refused_and_nothing_is_created(
    aws: MotoServer, sm: Any
) -> None:
    value = new_secret()

    with pytest.raises(PermanentError, match="does not exist in eu-west-1 and create is false"):
        publish(target(aws.endpoint), value)

    assert sm.list_secrets()["SecretList"] == []


def test_secret_scheduled_for_deletion_is_refused(aws: MotoServer, sm: Any) -> None:
    sm.create_secret(Name=NAME, SecretString=new_secret())
    sm.delete_secret(SecretId=NAME, RecoveryWindowInDays=7)
    t = target(aws.endpoint)

    assert preflight(t) == (Readiness.BLOCKED, f"secret {NAME} is scheduled for deletion")
    with pytest.raises(PermanentError, match="scheduled for deletion"):
        publish(t, new_secret())


def test_secret_named_by_arn_is_published(aws: MotoServer, sm: Any) -> None:
    arn = sm.create_secret(Name=NAME, SecretString=new_secret())["ARN"]
    value = new_secret()

    result = publish(target(aws.endpoint, secret_id=arn), value)

    assert value_at(sm, "AWSCURRENT") == value
    assert result.detail["secret_arn"] == arn


# --- rollback ---------------------------------------------------------------------------------


def test_rollback_gives_awscurrent_back_to_the_old_version(aws: MotoServer, sm: Any) -> None:
    old, new = new_secret(), new_secret()
    first = sm.create_secret(Name=NAME, SecretString=old)["VersionId"]
    t = target(aws.endpoint)
    publish(t, new)

    result = rollback(t, new, old)
    repeated = rollback(t, new, old)

    token = request_token("ver-2")
    assert value_at(sm, "AWSCURRENT") == old
    assert stages(sm) == {first: ["AWSCURRENT"], token: ["AWSPREVIOUS"]}
    assert result.detail["rolled_back"] is True
    assert result.detail["restored"] == first
    assert repeated.detail["rolled_back"] is False
    assert old not in repr(result.detail)
    assert new not in repr(result.detail)


def test_rollback_of_a_version_that_never_became_current_only_drops_its_pending_label(
    aws: MotoServer, sm: Any
) -> None:
    first = sm.create_secret(Name=NAME, SecretString=new_secret())["VersionId"]
    token = request_token("ver-2")
    new = new_secret()
    sm.put_secret_value(
        SecretId=NAME, SecretString=new, ClientRequestToken=token, VersionStages=["AWSPENDING"]
    )

    result = rollback(target(aws.endpoint), new, None)

    assert stages(sm)[first] == ["AWSCURRENT"]
    assert stages(sm)[token] == []
    assert result.detail["rolled_back"] is False


def test_rollback_without_an_earlier_version_keeps_the_value_and_marks_the_version(
    aws: MotoServer, sm: Any
) -> None:
    value = new_secret()
    t = target(aws.endpoint, create=True)
    publish(t, value)

    result = rollback(t, value, None)
    repeated = rollback(t, value, None)

    token = request_token("ver-2")
    assert stages(sm) == {token: sorted(["AWSCURRENT", ROLLED_BACK])}
    assert value_at(sm, "AWSCURRENT") == value, "the secret is never deleted"
    assert dict(result.detail) == {
        "secret_arn": sm.describe_secret(SecretId=NAME)["ARN"],
        "aws_version_id": token,
        "rolled_back": False,
        "restored": None,
        "marked": True,
    }
    assert repeated.detail == result.detail


def test_rollback_of_a_secret_that_does_not_exist_changes_nothing(aws: MotoServer, sm: Any) -> None:
    result = rollback(target(aws.endpoint), new_secret(), None)

    assert result.detail == {"secret_id": NAME, "rolled_back": False}
    assert sm.list_secrets()["SecretList"] == []


# --- preflight --------------------------------------------------------------------------------


def test_preflight_is_ready_for_an_existing_secret_and_changes_nothing(
    aws: MotoServer, sm: Any
) -> None:
    sm.create_secret(Name=NAME, SecretString=new_secret())
    before = stages(sm)

    assert preflight(target(aws.endpoint)) == (Readiness.READY, "")
    assert stages(sm) == before


def test_preflight_for_a_missing_secret_depends_on_create(aws: MotoServer, sm: Any) -> None:
    assert preflight(target(aws.endpoint, create=True)) == (Readiness.READY, "")
    readiness, reason = preflight(target(aws.endpoint))
    assert readiness is Readiness.BLOCKED
    assert reason == f"secret {NAME} does not exist in eu-west-1 and create is false"
    assert sm.list_secrets()["SecretList"] == []


def test_preflight_is_blocked_when_secrets_manager_is_unreachable() -> None:
    t = target(f"http://127.0.0.1:{free_port()}")

    readiness, reason = preflight(t)

    assert readiness is Readiness.BLOCKED
    assert reason.startswith("Secrets Manager is unreachable")
    assert "EndpointConnectionError" in reason


def test_preflight_asks_for_review_when_aws_rotation_is_enabled(aws: MotoServer) -> None:
    """moto wants a real Lambda for RotateSecret; the description is answered instead."""
    t = target(aws.endpoint)
    described = {"ARN": f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{NAME}-AbCdEf"}
    inject(t, "DescribeSecret", 200, {**described, "Name": NAME, "RotationEnabled": True})

    readiness, reason = preflight(t)

    assert readiness is Readiness.MANUAL_REVIEW
    assert reason == (
        f"secret {NAME} has Secrets Manager rotation enabled; "
        "keyshift and its rotation function would overwrite each other"
    )


def test_preflight_is_blocked_naming_the_action_the_identity_may_not_do(
    aws: MotoServer, sm: Any
) -> None:
    """moto evaluates the IAM user's policy: it may write but not describe."""
    sm.create_secret(Name=NAME, SecretString=new_secret())
    key_id, key = aws.limited_user("keyshift", ["secretsmanager:PutSecretValue"])
    env = {"AWS_KEY_ID": key_id, "AWS_SECRET_KEY": key}
    t = target(aws.endpoint, env=env)
    value = new_secret()

    with aws.iam_enforced():
        readiness, reason = preflight(t)
        with pytest.raises(PermanentError) as caught:
            publish(t, value)

    assert readiness is Readiness.BLOCKED
    assert reason == (
        f"access denied: the identity may not secretsmanager:DescribeSecret on {NAME} (HTTP 403)"
    )
    assert "secretsmanager:DescribeSecret" in str(caught.value)
    assert value not in str(caught.value)
    assert key not in reason + str(caught.value)


def test_preflight_is_blocked_when_a_key_reference_cannot_be_read(aws: MotoServer) -> None:
    t = target(aws.endpoint, env={"AWS_KEY_ID": DUMMY_KEY_ID})

    readiness, reason = preflight(t)

    assert readiness is Readiness.BLOCKED
    assert "AWS_SECRET_KEY is not set" in reason
    with pytest.raises(PermanentError, match="AWS_SECRET_KEY is not set"):
        publish(t, new_secret())


# --- errors injected in AWS's own answer shape --------------------------------------------------


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def inject(
    t: AwsSecretsManagerTarget, action: str, status: int, answer: str | dict[str, Any]
) -> list[str]:
    """Answer `action` as Secrets Manager would, before the request leaves the client: an
    AWS JSON error for an error code, or the given body. Returns the actions answered so."""
    answered: list[str] = []
    if isinstance(answer, str):
        body = json.dumps({"__type": answer, "Message": f"{answer} for the test"}).encode()
    else:
        body = json.dumps(answer).encode()

    def respond(request: Any, **_: Any) -> AWSResponse:
        answered.append(action)
        headers = {"Content-Type": "application/x-amz-json-1.1"}
        return AWSResponse(request.url, status, headers, _Raw(body))

    t.client().meta.events.register(f"before-send.secrets-manager.{action}", respond)
    return answered


@pytest.mark.parametrize(
    ("action", "status", "code", "error"),
    [
        ("DescribeSecret", 400, "ThrottlingException", TransientError),
        ("PutSecretValue", 500, "InternalServiceError", TransientError),
        ("UpdateSecretVersionStage", 429, "TooManyRequestsException", TransientError),
        ("PutSecretValue", 400, "AccessDeniedException", PermanentError),
        ("PutSecretValue", 400, "InvalidRequestException", PermanentError),
        ("DescribeSecret", 400, "InvalidParameterException", PermanentError),
    ],
)
def test_aws_errors_are_transient_or_permanent_and_name_the_code_and_secret(
    aws: MotoServer,
    sm: Any,
    action: str,
    status: int,
    code: str,
    error: type[PluginError],
) -> None:
    sm.create_secret(Name=NAME, SecretString=new_secret())
    t = target(aws.endpoint)
    answered = inject(t, action, status, code)
    value = new_secret()

    with pytest.raises(PluginError) as caught:
        publish(t, value)

    assert type(caught.value) is error
    assert answered == [action], "botocore does not retry on its own clock"
    assert code in str(caught.value)
    assert NAME in str(caught.value)
    assert value not in str(caught.value)


def test_access_denied_in_aws_json_shape_blocks_preflight_naming_the_action(
    aws: MotoServer,
) -> None:
    t = target(aws.endpoint)
    inject(t, "DescribeSecret", 400, "AccessDeniedException")

    assert preflight(t) == (
        Readiness.BLOCKED,
        f"access denied: the identity may not secretsmanager:DescribeSecret on {NAME} "
        "(AccessDeniedException)",
    )


def test_unreachable_endpoint_on_publish_is_transient() -> None:
    value = new_secret()

    with pytest.raises(TransientError, match="EndpointConnectionError") as caught:
        publish(target(f"http://127.0.0.1:{free_port()}"), value)

    assert value not in str(caught.value)


def test_debug_logs_of_botocore_never_hold_the_value(
    aws: MotoServer, sm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sm.create_secret(Name=NAME, SecretString=new_secret())
    value = new_secret()
    caplog.set_level(logging.DEBUG)

    t = target(aws.endpoint)
    publish(t, value)
    rollback(t, value, None)

    assert any(r.name.startswith("botocore") for r in caplog.records), "debug logging was on"
    assert value not in caplog.text


# --- config and registry ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"access_key_id_from": "env:K"}, "set access_key_id_from and secret_access_key_from"),
        ({"create": True, "secret_id": "arn:aws:secretsmanager:x"}, "create needs secret_id"),
        ({"endpoint_url": "ftp://example.com"}, "must start with http:// or https://"),
        ({"endpoint_url": "https://u:p@example.com"}, "endpoint_url must not carry credentials"),
        ({"region": "Ireland"}, "region"),
        ({"access_key_id_from": "AKIAINLINE", "secret_access_key_from": "env:S"}, "env:NAME"),
        ({"secret_id": ""}, "secret_id"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_config_is_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AwsSecretsManagerConfig.model_validate({"secret_id": NAME, "region": REGION, **config})


def test_target_is_registered_as_a_publishing_step() -> None:
    assert TARGETS[TargetKind.AWS_SECRETSMANAGER] is AwsSecretsManagerTarget
    assert AwsSecretsManagerTarget.phase is Phase.PUBLISH
    assert AwsSecretsManagerTarget.Config is AwsSecretsManagerConfig


# --- through the engine -----------------------------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open({"KEYSHIFT_HOME": str(tmp_path / "home")})
    yield store
    store.close()


def test_engine_rotates_a_random_credential_into_secrets_manager(
    aws: MotoServer, sm: Any, sqlite_store: Store, tmp_path: Path
) -> None:
    action = {
        "type": "aws_secretsmanager",
        "order": 10,
        "on_failure": "abort",
        "config": {
            "secret_id": NAME,
            "region": REGION,
            "endpoint_url": aws.endpoint,
            "access_key_id_from": "env:AWS_KEY_ID",
            "secret_access_key_from": "env:AWS_SECRET_KEY",
            "create": True,
        },
    }
    estate = {
        "credentials": [
            {
                "name": "api-key",
                "owner": "team-test",
                "policy": {"grace_period": "1h", "max_lifetime": "90d"},
                "provider": {"type": "random", "length": 32},
                "actions": [action],
            }
        ]
    }
    apply_estate(sqlite_store, load_estate(save_estate(tmp_path, estate)), actor="test")
    clock = FakeClock()

    def rotate() -> RotationState:
        _, state = asyncio.run(
            rotations.rotate(sqlite_store, "api-key", actor="test", context=clock.context(ENV))
        )
        return state

    states = [rotate(), rotate()]

    first, second = versions(sqlite_store, "api-key")
    assert states == [RotationState.COMPLETED, RotationState.GRACE]
    assert value_at(sm, "AWSCURRENT") == value_of(sqlite_store, second)
    assert value_at(sm, "AWSPREVIOUS") == value_of(sqlite_store, first)
    assert stages(sm) == {
        request_token(first.id): ["AWSPREVIOUS"],
        request_token(second.id): ["AWSCURRENT"],
    }
