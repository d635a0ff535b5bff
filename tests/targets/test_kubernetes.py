"""`kubernetes_secret` and `kubernetes_rollout_restart` through the real kubernetes client
against a local HTTPS double of the API server."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from pydantic import ValidationError

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.domain.states import RotationState
from keyshift.errors import PermanentError, TransientError
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store.store import Store
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
)
from keyshift.targets.kubernetes import (
    KubernetesRolloutRestartConfig,
    KubernetesRolloutRestartTarget,
    KubernetesSecretConfig,
    KubernetesSecretTarget,
)
from keyshift.testing import FakeClock, capture_logs
from tests.certs import cert_delivery, issue, make_ca
from tests.doubles.kubernetes import KubernetesDouble, rule
from tests.doubles.tls import TlsFiles, make_pki
from tests.helpers import save_estate, value_of, versions

NS = "payments"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets/app-secrets"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_pki(tmp_path_factory.mktemp("k8s-pki"))


@pytest.fixture
def api(pki: TlsFiles) -> Iterator[KubernetesDouble]:
    with KubernetesDouble(pki) as double:
        yield double


@pytest.fixture
def kubeconfig(api: KubernetesDouble, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)


def new_value() -> str:
    return "S3CRET-" + secrets.token_hex(12)


def delivery(
    value: str,
    version_id: str = "v2",
    rotation_id: str = "rot-2",
    attributes: dict[str, str] | None = None,
) -> Delivery:
    return Delivery(
        credential="payments-api",
        rotation_id=rotation_id,
        version_id=version_id,
        fingerprint=f"fp-{version_id}",
        value=Secret(value),
        attributes=attributes or {},
    )


class RecordingSleep:
    """Sleeps no wall time; records each delay and moves a clock by it."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.now = NOW

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += timedelta(seconds=seconds)

    def context(self) -> PluginContext:
        return PluginContext(now=lambda: self.now, sleep=self, env={})


def secret_target(kubeconfig: Path, **config: Any) -> tuple[KubernetesSecretTarget, RecordingSleep]:
    sleep = RecordingSleep()
    settings = {
        "kubeconfig": str(kubeconfig),
        "namespace": NS,
        "secret": "app-secrets",
        "key": "client-secret",
        **config,
    }
    model = KubernetesSecretConfig.model_validate(settings)
    return KubernetesSecretTarget(model, sleep.context()), sleep


def restart_target(
    kubeconfig: Path, **config: Any
) -> tuple[KubernetesRolloutRestartTarget, RecordingSleep]:
    sleep = RecordingSleep()
    settings = {
        "kubeconfig": str(kubeconfig),
        "namespace": NS,
        "kind": "Deployment",
        "name": "payments-api",
        **config,
    }
    model = KubernetesRolloutRestartConfig.model_validate(settings)
    return KubernetesRolloutRestartTarget(model, sleep.context()), sleep


def publish(
    t: KubernetesSecretTarget | KubernetesRolloutRestartTarget,
    value: str,
    previous: str | None = None,
) -> StepResult:
    before = delivery(previous, "v1", "rot-1") if previous is not None else None
    return asyncio.run(t.publish(PublishRequest(delivery(value), before)))


def rollback(
    t: KubernetesSecretTarget | KubernetesRolloutRestartTarget,
    failed: str,
    previous: str | None,
) -> StepResult:
    before = delivery(previous, "v1", "rot-1") if previous is not None else None
    return asyncio.run(t.rollback(RollbackRequest(delivery(failed), before)))


def writes(api: KubernetesDouble) -> list[str]:
    return [method for method, _ in api.writes]


# --- kubernetes_secret: publish -------------------------------------------------------------


def test_publish_sets_the_key_keeps_other_keys_and_annotates_the_version(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    old = new_value()
    api.add_secret(NS, "app-secrets", {"client-secret": old, "db-url": "postgres://db/app"})
    t, _ = secret_target(kubeconfig)
    value = new_value()

    result = publish(t, value, previous=old)

    assert api.secret_data(NS, "app-secrets") == {
        "client-secret": value,
        "db-url": "postgres://db/app",
    }
    stored = api.secret(NS, "app-secrets")
    assert stored is not None
    assert stored["metadata"]["annotations"] == {
        "keyshift.io/rotation-id": "rot-2",
        "keyshift.io/version-id": "v2",
        "keyshift.io/fingerprint": "fp-v2",
    }
    assert api.writes == [("PATCH", SECRET_PATH)]
    [patch] = api.logged("PATCH")
    assert patch.content_type == "application/merge-patch+json"
    assert dict(result.detail) == {
        "namespace": NS,
        "secret": "app-secrets",
        "key": "client-secret",
        "change": "updated",
        "resource_version": stored["metadata"]["resourceVersion"],
        "conflicts": 0,
    }


def test_publishing_the_value_the_key_already_holds_writes_nothing(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    value = new_value()
    api.add_secret(NS, "app-secrets", {"client-secret": "before"})
    t, _ = secret_target(kubeconfig)

    first = publish(t, value)
    second = publish(t, value)

    assert (first.detail["change"], second.detail["change"]) == ("updated", "unchanged")
    assert writes(api) == ["PATCH"]
    assert api.secret_data(NS, "app-secrets") == {"client-secret": value}


def test_a_conflicting_write_between_read_and_patch_is_reread_and_both_changes_survive(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"client-secret": "old", "db-url": "postgres://db/a"})
    api.before_next_write(NS, "app-secrets", {"db-url": "postgres://db/b"})
    t, sleep = secret_target(kubeconfig)
    value = new_value()

    result = publish(t, value)

    assert api.secret_data(NS, "app-secrets") == {
        "client-secret": value,
        "db-url": "postgres://db/b",
    }
    assert result.detail["conflicts"] == 1
    assert [r.method for r in api.logged(prefix=SECRET_PATH)] == ["GET", "PATCH", "GET", "PATCH"]
    assert writes(api) == ["PATCH"], "the stale patch was refused, only the re-read one applied"
    assert sleep.calls == [0.2]


def test_a_secret_that_keeps_changing_is_given_up_transiently_and_never_overwritten(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"client-secret": "theirs"})
    for i in range(6):
        api.before_next_write(NS, "app-secrets", {"counter": str(i)})
    t, sleep = secret_target(kubeconfig)

    with pytest.raises(TransientError, match="Secret payments/app-secrets: still changing"):
        publish(t, new_value())

    assert api.secret_data(NS, "app-secrets") == {"client-secret": "theirs", "counter": "5"}
    assert writes(api) == []
    assert sleep.calls == [0.2, 0.4, 0.8, 1.6, 3.2]


def test_a_missing_secret_without_create_is_a_clear_permanent_error(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    t, _ = secret_target(kubeconfig)

    with pytest.raises(PermanentError) as failure:
        publish(t, new_value())

    assert str(failure.value) == (
        "Secret payments/app-secrets does not exist; create it first or set create: true"
    )
    assert api.writes == []


def test_create_true_creates_an_opaque_secret_marked_with_its_rotation(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    t, _ = secret_target(kubeconfig, create=True)
    value = new_value()

    result = publish(t, value)

    stored = api.secret(NS, "app-secrets")
    assert stored is not None
    assert stored["type"] == "Opaque"
    assert api.secret_data(NS, "app-secrets") == {"client-secret": value}
    assert stored["metadata"]["annotations"] == {
        "keyshift.io/rotation-id": "rot-2",
        "keyshift.io/version-id": "v2",
        "keyshift.io/fingerprint": "fp-v2",
        "keyshift.io/created-by-rotation": "rot-2",
    }
    assert result.detail["change"] == "created"
    assert writes(api) == ["POST"]


def test_a_secret_created_by_someone_else_meanwhile_is_reread_and_updated(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    t, _ = secret_target(kubeconfig, create=True)
    value = new_value()
    real_handle = api.handle

    def create_first(method: str, path: str, *args: Any) -> Any:
        # Another writer creates the Secret just after our read said it was missing.
        if method == "POST" and api.secret(NS, "app-secrets") is None:
            api.add_secret(NS, "app-secrets", {"other": "theirs"})
        return real_handle(method, path, *args)

    api.handle = create_first  # type: ignore[method-assign]

    result = publish(t, value)

    assert api.secret_data(NS, "app-secrets") == {"other": "theirs", "client-secret": value}
    assert result.detail["change"] == "updated"
    assert result.detail["conflicts"] == 1


def test_an_immutable_secret_is_refused_permanently(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"client-secret": "old"}, immutable=True)
    t, _ = secret_target(kubeconfig)

    with pytest.raises(PermanentError, match="Secret payments/app-secrets is immutable"):
        publish(t, new_value())
    assert api.secret_data(NS, "app-secrets") == {"client-secret": "old"}


# --- kubernetes_secret: rollback ------------------------------------------------------------


def test_rollback_restores_the_previous_value_and_its_annotations(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    old, value = new_value(), new_value()
    api.add_secret(NS, "app-secrets", {"client-secret": old, "db-url": "postgres://db/app"})
    t, _ = secret_target(kubeconfig)
    publish(t, value, previous=old)

    result = rollback(t, value, old)
    again = rollback(t, value, old)

    assert api.secret_data(NS, "app-secrets") == {
        "client-secret": old,
        "db-url": "postgres://db/app",
    }
    stored = api.secret(NS, "app-secrets")
    assert stored is not None
    assert stored["metadata"]["annotations"]["keyshift.io/version-id"] == "v1"
    assert (result.detail["change"], again.detail["change"]) == ("updated", "unchanged")
    assert writes(api) == ["PATCH", "PATCH"]


def test_rollback_without_a_previous_version_removes_the_key_and_keeps_the_others(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"db-url": "postgres://db/app"})
    t, _ = secret_target(kubeconfig)
    value = new_value()
    publish(t, value)

    result = rollback(t, value, None)
    again = rollback(t, value, None)

    assert api.secret_data(NS, "app-secrets") == {"db-url": "postgres://db/app"}
    stored = api.secret(NS, "app-secrets")
    assert stored is not None
    assert "annotations" not in stored["metadata"]
    assert (result.detail["change"], again.detail["change"]) == ("removed", "unchanged")
    assert writes(api) == ["PATCH", "PATCH"]


def test_rollback_deletes_a_secret_this_rotation_created_when_it_holds_only_that_key(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    t, _ = secret_target(kubeconfig, create=True)
    value = new_value()
    publish(t, value)

    result = rollback(t, value, None)
    again = rollback(t, value, None)

    assert api.secret(NS, "app-secrets") is None
    assert (result.detail["change"], again.detail["change"]) == ("deleted", "absent")
    assert writes(api) == ["POST", "DELETE"]


def test_rollback_keeps_a_created_secret_that_others_have_added_keys_to(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    t, _ = secret_target(kubeconfig, create=True)
    value = new_value()
    publish(t, value)
    api.change_secret(NS, "app-secrets", {"added-later": "theirs"})

    result = rollback(t, value, None)

    assert api.secret_data(NS, "app-secrets") == {"added-later": "theirs"}
    assert result.detail["change"] == "removed"


def test_rollback_leaves_a_value_this_rotation_did_not_write(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"client-secret": "set-by-hand"})
    t, _ = secret_target(kubeconfig)

    result = rollback(t, new_value(), None)

    assert api.secret_data(NS, "app-secrets") == {"client-secret": "set-by-hand"}
    assert result.detail["change"] == "unchanged"
    assert api.writes == []


# --- kubernetes_secret: preflight -----------------------------------------------------------


def test_preflight_allowed_is_ready_and_writes_nothing(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"client-secret": "old"})
    t, _ = secret_target(kubeconfig)

    result = asyncio.run(t.preflight(PreflightRequest("payments-api")))

    assert result.readiness == Readiness.READY
    assert [(r["verb"], r["resource"], r.get("name")) for r in api.reviews] == [
        ("get", "secrets", "app-secrets"),
        ("patch", "secrets", "app-secrets"),
    ]
    assert all(r["namespace"] == NS for r in api.reviews)
    assert api.writes == []


@pytest.mark.parametrize(
    ("granted", "create", "denied"),
    [
        ("get", False, "patch secrets/app-secrets"),
        ("patch", False, "get secrets/app-secrets"),
        ("get,patch", True, "create secrets in namespace"),
    ],
    ids=["patch denied", "get denied", "create denied"],
)
def test_preflight_denied_is_blocked_naming_the_verb_and_writes_nothing(
    api: KubernetesDouble, kubeconfig: Path, granted: str, create: bool, denied: str
) -> None:
    api.add_secret(NS, "app-secrets", {"client-secret": "old"})
    api.rules = [rule(granted, "secrets", names="app-secrets")]
    t, _ = secret_target(kubeconfig, create=create)

    result = asyncio.run(t.preflight(PreflightRequest("payments-api")))

    assert result.readiness == Readiness.BLOCKED
    assert f"not allowed to {denied}" in result.reason
    assert f"namespace {NS}" in result.reason
    assert api.writes == []
    assert api.logged("PATCH") == api.logged("POST", prefix="/api/") == []


def test_preflight_blocks_a_missing_secret_without_create(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    t, _ = secret_target(kubeconfig)
    result = asyncio.run(t.preflight(PreflightRequest("payments-api")))
    assert result == result.__class__(
        Readiness.BLOCKED, "Secret payments/app-secrets does not exist and create is false"
    )


def test_preflight_against_an_unreachable_server_is_blocked(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.__exit__()
    t, _ = secret_target(kubeconfig)

    result = asyncio.run(t.preflight(PreflightRequest("payments-api")))

    assert result.readiness == Readiness.BLOCKED
    assert "Kubernetes API unreachable" in result.reason


def test_a_missing_kubeconfig_blocks_preflight(tmp_path: Path) -> None:
    t, _ = secret_target(tmp_path / "nowhere.yaml")
    result = asyncio.run(t.preflight(PreflightRequest("payments-api")))
    assert result.readiness == Readiness.BLOCKED
    assert "Kubernetes client config" in result.reason


# --- kubernetes_secret: several keys ----------------------------------------------------------

USER_KEYS = {"DB_USER": "username", "DB_PASSWORD": "password"}


def user_version(
    value: str, user: str, version_id: str = "v2", rotation_id: str = "rot-2"
) -> Delivery:
    """A version of an alternating_users credential: the password and the role it belongs to."""
    return delivery(value, version_id, rotation_id, attributes={"username": user})


def keys_target(kubeconfig: Path, **config: Any) -> tuple[KubernetesSecretTarget, RecordingSleep]:
    return secret_target(kubeconfig, key=None, keys=USER_KEYS, **config)


def test_keys_are_all_set_in_one_patch_and_the_secrets_other_keys_stay(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    old, value = new_value(), new_value()
    api.add_secret(
        NS, "app-secrets", {"DB_USER": "app_a", "DB_PASSWORD": old, "DB_HOST": "db.internal"}
    )
    t, _ = keys_target(kubeconfig)

    result = asyncio.run(
        t.publish(PublishRequest(user_version(value, "app_b"), user_version(old, "app_a", "v1")))
    )
    again = asyncio.run(t.publish(PublishRequest(user_version(value, "app_b"), None)))

    assert api.secret_data(NS, "app-secrets") == {
        "DB_USER": "app_b",
        "DB_PASSWORD": value,
        "DB_HOST": "db.internal",
    }
    assert api.writes == [("PATCH", SECRET_PATH)], "one patch; the repeat wrote nothing"
    assert (result.detail["change"], again.detail["change"]) == ("updated", "unchanged")
    assert result.detail["keys"] == "DB_USER, DB_PASSWORD"
    assert "key" not in result.detail


def test_keys_survive_a_conflicting_write_and_keep_what_the_other_writer_set(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"DB_USER": "app_a", "DB_PASSWORD": "old"})
    api.before_next_write(NS, "app-secrets", {"DB_HOST": "db-2.internal"})
    t, sleep = keys_target(kubeconfig)
    value = new_value()

    result = asyncio.run(t.publish(PublishRequest(user_version(value, "app_b"), None)))

    assert api.secret_data(NS, "app-secrets") == {
        "DB_USER": "app_b",
        "DB_PASSWORD": value,
        "DB_HOST": "db-2.internal",
    }
    assert result.detail["conflicts"] == 1
    assert [r.method for r in api.logged(prefix=SECRET_PATH)] == ["GET", "PATCH", "GET", "PATCH"]
    assert writes(api) == ["PATCH"], "the stale patch was refused, only the re-read one applied"
    assert sleep.calls == [0.2]


def test_a_created_secret_holds_every_key(api: KubernetesDouble, kubeconfig: Path) -> None:
    t, _ = keys_target(kubeconfig, create=True)
    value = new_value()

    result = asyncio.run(t.publish(PublishRequest(user_version(value, "app_b"), None)))

    assert api.secret_data(NS, "app-secrets") == {"DB_USER": "app_b", "DB_PASSWORD": value}
    assert result.detail["change"] == "created"
    assert writes(api) == ["POST"]


def test_rollback_restores_every_key_to_the_previous_version(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    old, value = new_value(), new_value()
    api.add_secret(NS, "app-secrets", {"DB_USER": "app_a", "DB_PASSWORD": old, "DB_HOST": "db"})
    t, _ = keys_target(kubeconfig)
    failed, previous = user_version(value, "app_b"), user_version(old, "app_a", "v1", "rot-1")
    asyncio.run(t.publish(PublishRequest(failed, previous)))

    result = asyncio.run(t.rollback(RollbackRequest(failed, previous)))
    again = asyncio.run(t.rollback(RollbackRequest(failed, previous)))

    assert api.secret_data(NS, "app-secrets") == {
        "DB_USER": "app_a",
        "DB_PASSWORD": old,
        "DB_HOST": "db",
    }
    assert (result.detail["change"], again.detail["change"]) == ("updated", "unchanged")
    assert writes(api) == ["PATCH", "PATCH"]


def test_rollback_without_a_previous_version_removes_the_keys_publish_wrote(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"DB_HOST": "db.internal"})
    t, _ = keys_target(kubeconfig)
    failed = user_version(new_value(), "app_b")
    asyncio.run(t.publish(PublishRequest(failed, None)))

    result = asyncio.run(t.rollback(RollbackRequest(failed, None)))
    again = asyncio.run(t.rollback(RollbackRequest(failed, None)))

    assert api.secret_data(NS, "app-secrets") == {"DB_HOST": "db.internal"}
    assert (result.detail["change"], again.detail["change"]) == ("removed", "unchanged")
    assert writes(api) == ["PATCH", "PATCH"]


def test_rollback_without_a_previous_version_leaves_keys_holding_someone_elses_value(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"DB_HOST": "db.internal"})
    t, _ = keys_target(kubeconfig)
    failed = user_version(new_value(), "app_b")
    asyncio.run(t.publish(PublishRequest(failed, None)))
    api.change_secret(NS, "app-secrets", {"DB_USER": "set-by-hand"})

    result = asyncio.run(t.rollback(RollbackRequest(failed, None)))

    assert api.secret_data(NS, "app-secrets") == {
        "DB_HOST": "db.internal",
        "DB_USER": "set-by-hand",
    }
    assert result.detail["change"] == "removed"


def test_rollback_deletes_a_secret_this_rotation_created_holding_only_its_keys(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    t, _ = keys_target(kubeconfig, create=True)
    failed = user_version(new_value(), "app_b")
    asyncio.run(t.publish(PublishRequest(failed, None)))

    result = asyncio.run(t.rollback(RollbackRequest(failed, None)))

    assert api.secret(NS, "app-secrets") is None
    assert result.detail["change"] == "deleted"
    assert writes(api) == ["POST", "DELETE"]


def test_a_key_mapped_to_a_field_the_version_lacks_fails_naming_it_and_writes_nothing(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"DB_USER": "app_a", "DB_PASSWORD": "old"})
    t, _ = keys_target(kubeconfig)

    with pytest.raises(PermanentError) as failure:
        asyncio.run(t.publish(PublishRequest(delivery(new_value()), None)))

    assert str(failure.value) == "version v2 has no field 'username' (it has: value)"
    assert api.writes == []
    assert api.secret_data(NS, "app-secrets") == {"DB_USER": "app_a", "DB_PASSWORD": "old"}


def test_keys_are_named_by_describe_and_preflight_never_their_values(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"DB_USER": "app_a", "DB_PASSWORD": "old-password"})
    t, _ = keys_target(kubeconfig)

    described = KubernetesSecretTarget.describe(t.config)
    ready = asyncio.run(t.preflight(PreflightRequest("payments-api")))

    assert described["keys"] == "DB_USER, DB_PASSWORD"
    assert "key" not in described
    assert ready.readiness == Readiness.READY
    assert "keys DB_USER, DB_PASSWORD" in ready.reason
    assert "old-password" not in ready.reason + str(described)


def test_one_key_is_still_described_as_key_so_stored_evidence_recomputes_the_same(
    kubeconfig: Path,
) -> None:
    t, _ = secret_target(kubeconfig)
    assert KubernetesSecretTarget.describe(t.config)["key"] == "client-secret"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"keys": USER_KEYS}, "give either key or keys (not both)"),
        ({"key": None}, "give either key or keys (not both)"),
        ({"key": None, "keys": {}}, "keys must map at least one key to a field"),
        ({"key": None, "keys": {"DB USER": "username"}}, "key 'DB USER' must consist"),
    ],
    ids=["both", "neither", "empty keys", "bad key name"],
)
def test_secret_config_takes_exactly_one_of_key_and_keys(
    change: dict[str, Any], message: str
) -> None:
    settings = {"namespace": NS, "secret": "s", "key": "k", **change}
    with pytest.raises(ValidationError, match=re.escape(message)):
        KubernetesSecretConfig.model_validate(settings)


# --- error mapping --------------------------------------------------------------------------


def test_forbidden_is_permanent_with_the_status_reason_and_object(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"client-secret": "old"})
    api.rules = [rule("get", "secrets")]
    t, _ = secret_target(kubeconfig)

    with pytest.raises(PermanentError) as failure:
        publish(t, new_value())

    message = str(failure.value)
    assert message.startswith("Secret payments/app-secrets: HTTP 403 Forbidden: ")
    assert 'cannot patch resource "secrets"' in message
    assert api.secret_data(NS, "app-secrets") == {"client-secret": "old"}


def test_a_wrong_token_is_permanent_unauthorized(api: KubernetesDouble, tmp_path: Path) -> None:
    config = api.write_kubeconfig(tmp_path / "kubeconfig", token="revoked-token")
    t, _ = secret_target(config)

    with pytest.raises(PermanentError, match="HTTP 401 Unauthorized: Unauthorized"):
        publish(t, new_value())


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(500, None, None), (503, 5, 5.0), (429, 7, 7.0)],
    ids=["500", "503 with Retry-After", "429 with Retry-After"],
)
def test_throttling_and_server_errors_are_transient_with_retry_after(
    api: KubernetesDouble,
    kubeconfig: Path,
    status: int,
    retry_after: int | None,
    expected: float | None,
) -> None:
    api.add_secret(NS, "app-secrets", {"client-secret": "old"})
    api.fail(1, status, retry_after)
    t, _ = secret_target(kubeconfig)

    with pytest.raises(TransientError) as failure:
        publish(t, new_value())

    assert failure.value.retry_after == expected
    assert f"Secret payments/app-secrets: HTTP {status}" in str(failure.value)
    assert api.writes == []


def test_a_request_left_unanswered_is_transient_after_the_request_timeout(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"client-secret": "old"})
    api.hang(1, seconds=5)
    t, _ = secret_target(kubeconfig, request_timeout="300ms")

    with pytest.raises(TransientError, match="Kubernetes API unreachable"):
        publish(t, new_value())
    assert api.writes == []
    assert len(api.logged("GET")) == 1, "urllib3 does not retry behind the engine's back"


def test_no_value_reaches_details_errors_or_logs(api: KubernetesDouble, kubeconfig: Path) -> None:
    old, value = new_value(), new_value()
    encoded = base64.b64encode(value.encode()).decode()
    api.add_secret(NS, "app-secrets", {"client-secret": old})
    t, _ = secret_target(kubeconfig)
    seen: list[str] = []

    with capture_logs(secrets=[old, value, encoded]):
        seen.append(repr(publish(t, value, previous=old).detail))
        seen.append(repr(rollback(t, value, old).detail))
        # A server whose error text quotes the value it was sent: scrubbed from ours.
        api.fail(1, 422, message=f"data[client-secret]: Invalid value: {value} / {encoded}")
        with pytest.raises(PermanentError) as failure:
            publish(t, value, previous=old)

    error = failure.value
    seen += [str(error), repr(error.args)]
    assert error.__cause__ is None
    assert "[REDACTED]" in str(error)
    for text in seen:
        assert value not in text
        assert old not in text
        assert encoded not in text


def test_the_process_wide_client_configuration_is_neither_used_nor_changed(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    bogus = k8s.Configuration(host="https://127.0.0.1:9")
    k8s.Configuration.set_default(bogus)
    try:
        api.add_secret(NS, "app-secrets", {"client-secret": "old"})
        t, _ = secret_target(kubeconfig)
        value = new_value()
        publish(t, value)
        assert api.secret_data(NS, "app-secrets") == {"client-secret": value}
        assert k8s.Configuration.get_default_copy().host == "https://127.0.0.1:9"
    finally:
        k8s.Configuration.set_default(None)


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"context": "prod", "kubeconfig": None}, "context needs a kubeconfig"),
        ({"key": "bad key"}, "key must consist"),
        ({"secret": "App_Secrets"}, "DNS subdomain"),
        ({"namespace": "Payments"}, "namespace must be a DNS label"),
        ({"create": True, "extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_secret_config_refuses_what_the_api_would(change: dict[str, Any], field: str) -> None:
    settings = {"kubeconfig": "/k", "namespace": NS, "secret": "s", "key": "k", **change}
    with pytest.raises(ValidationError, match=field):
        KubernetesSecretConfig.model_validate(settings)


def test_restart_config_knows_three_kinds_and_defaults_to_waiting_five_minutes() -> None:
    config = KubernetesRolloutRestartConfig.model_validate(
        {"namespace": NS, "kind": "StatefulSet", "name": "db"}
    )
    assert (config.wait, config.timeout, config.kubeconfig) == (True, timedelta(minutes=5), None)
    with pytest.raises(ValidationError, match="Deployment"):
        KubernetesRolloutRestartConfig.model_validate({"namespace": NS, "kind": "Pod", "name": "x"})


@pytest.mark.parametrize(
    ("field", "kind"),
    [("deployment", "Deployment"), ("statefulset", "StatefulSet"), ("daemonset", "DaemonSet")],
)
def test_restart_config_takes_a_workload_kind_as_shorthand_for_kind_and_name(
    field: str, kind: str
) -> None:
    config = KubernetesRolloutRestartConfig.model_validate(
        {"namespace": NS, field: "payments-api", "wait": False}
    )

    assert (config.kind, config.name, config.wait) == (kind, "payments-api", False)
    assert KubernetesRolloutRestartTarget.describe(config)["workload"] == f"{kind}/payments-api"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"deployment": "api", "kind": "Deployment", "name": "api"},
            "give either deployment or kind and name, not both",
        ),
        ({"deployment": "api", "name": "web"}, "give either deployment or kind and name"),
        (
            {"deployment": "api", "statefulset": "db"},
            "give one workload: deployment and statefulset are both set",
        ),
        ({"daemonset": ["a"]}, "daemonset must be the workload's name"),
        ({"deployment": "Payments_API"}, "deployment must be a DNS subdomain name"),
    ],
    ids=["both forms", "shorthand and name", "two shorthands", "not a name", "invalid name"],
)
def test_restart_config_refuses_mixed_or_doubled_shorthands_naming_the_field(
    given: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        KubernetesRolloutRestartConfig.model_validate({"namespace": NS, **given})


# --- kubernetes_rollout_restart -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet", "DaemonSet"])
def test_restart_sets_restarted_at_and_waits_until_the_rollout_is_complete(
    api: KubernetesDouble, kubeconfig: Path, kind: str
) -> None:
    api.add_workload(kind, NS, "payments-api", rollout_reads=2)
    t, sleep = restart_target(kubeconfig, kind=kind)

    result = publish(t, new_value())

    workload = api.workload(kind, NS, "payments-api")
    annotations = workload.obj["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/restartedAt"] == "2025-03-01T12:00:00Z"
    assert workload.generation == 2
    plural = {"Deployment": "deployments", "StatefulSet": "statefulsets"}.get(kind, "daemonsets")
    path = f"/apis/apps/v1/namespaces/{NS}/{plural}/payments-api"
    assert [(r.method, r.path) for r in api.logged(prefix="/apis/apps")] == [
        ("GET", path),
        ("PATCH", path),
        ("GET", path),  # the controller has not seen the new generation
        ("GET", path),  # rolling
        ("GET", path),  # complete
    ]
    assert api.logged("PATCH")[0].content_type == "application/strategic-merge-patch+json"
    assert sleep.calls == [2.0, 2.0]
    assert dict(result.detail) == {
        "kind": kind,
        "namespace": NS,
        "name": "payments-api",
        "generation": 2,
        "restarted_at": "2025-03-01T12:00:00Z",
        "restarted": True,
        "rolled_out": True,
        "status_checks": 3,
    }


def test_restart_without_wait_does_not_read_the_rollout(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_workload("Deployment", NS, "payments-api", rollout_reads=None)
    t, sleep = restart_target(kubeconfig, wait=False)

    result = publish(t, new_value())

    assert [r.method for r in api.logged(prefix="/apis/apps")] == ["GET", "PATCH"]
    assert sleep.calls == []
    assert "rolled_out" not in result.detail


def test_publishing_again_for_the_same_version_does_not_restart_twice(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_workload("Deployment", NS, "payments-api", rollout_reads=0)
    t, _ = restart_target(kubeconfig)
    value = new_value()

    first = publish(t, value)
    second = publish(t, value)

    assert (first.detail["restarted"], second.detail["restarted"]) == (True, False)
    assert second.detail["restarted_at"] == first.detail["restarted_at"]
    assert writes(api) == ["PATCH"]
    assert api.workload("Deployment", NS, "payments-api").generation == 2


def test_rollback_restarts_again(api: KubernetesDouble, kubeconfig: Path) -> None:
    api.add_workload("Deployment", NS, "payments-api", rollout_reads=0)
    t, sleep = restart_target(kubeconfig)
    value = new_value()
    publish(t, value)
    sleep.now += timedelta(minutes=3)

    result = rollback(t, value, new_value())
    rollback(t, value, new_value())

    assert writes(api) == ["PATCH", "PATCH"]
    assert result.detail["restarted_at"] == "2025-03-01T12:03:00Z"
    assert api.workload("Deployment", NS, "payments-api").generation == 3


def test_a_rollout_that_never_completes_fails_at_the_timeout_saying_what_was_seen(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_workload("Deployment", NS, "payments-api", replicas=4, rollout_reads=None)
    t, sleep = restart_target(kubeconfig, timeout="10s", interval="3s")

    with pytest.raises(PermanentError) as failure:
        publish(t, new_value())

    assert str(failure.value) == (
        "Deployment payments/payments-api did not finish rolling out within 10s "
        "(5 status checks); last seen: 1 out of 4 new replicas have been updated"
    )
    assert sleep.calls == [3.0, 3.0, 3.0, 1.0]


def test_a_deployment_past_its_progress_deadline_fails_without_waiting_longer(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    workload = api.add_workload("Deployment", NS, "payments-api", rollout_reads=None)
    workload.deadline_exceeded = True
    t, sleep = restart_target(kubeconfig)

    with pytest.raises(PermanentError, match="exceeded its progress deadline"):
        publish(t, new_value())
    assert sleep.calls == [2.0]


def test_a_paused_deployment_is_not_restarted(api: KubernetesDouble, kubeconfig: Path) -> None:
    api.add_workload("Deployment", NS, "payments-api", paused=True)
    t, _ = restart_target(kubeconfig)

    with pytest.raises(PermanentError, match="is paused; resume its rollout first"):
        publish(t, new_value())
    blocked = asyncio.run(t.preflight(PreflightRequest("payments-api")))
    assert blocked.readiness == Readiness.BLOCKED
    assert api.writes == []


def test_an_on_delete_statefulset_is_not_restarted(api: KubernetesDouble, kubeconfig: Path) -> None:
    api.add_workload("StatefulSet", NS, "payments-api", strategy="OnDelete")
    t, _ = restart_target(kubeconfig, kind="StatefulSet")

    with pytest.raises(PermanentError, match="OnDelete update strategy"):
        publish(t, new_value())
    assert api.writes == []


def test_a_missing_workload_is_permanent_with_the_status(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    t, _ = restart_target(kubeconfig)

    with pytest.raises(PermanentError) as failure:
        publish(t, new_value())

    assert str(failure.value) == (
        "Deployment payments/payments-api: HTTP 404 NotFound: "
        'deployments.apps "payments-api" not found'
    )


def test_restart_preflight_checks_patch_on_the_workload_and_changes_nothing(
    api: KubernetesDouble, kubeconfig: Path
) -> None:
    api.add_workload("DaemonSet", NS, "payments-api")
    t, _ = restart_target(kubeconfig, kind="DaemonSet")

    ready = asyncio.run(t.preflight(PreflightRequest("payments-api")))
    api.rules = [rule("get", "daemonsets", "apps")]
    blocked = asyncio.run(t.preflight(PreflightRequest("payments-api")))

    assert ready.readiness == Readiness.READY
    assert blocked.readiness == Readiness.BLOCKED
    assert blocked.reason.startswith(
        "not allowed to patch daemonsets/payments-api in namespace payments"
    )
    assert {(r["verb"], r["group"], r["resource"]) for r in api.reviews} == {
        ("get", "apps", "daemonsets"),
        ("patch", "apps", "daemonsets"),
    }
    assert api.writes == []


def test_restart_errors_map_like_the_secret_target(api: KubernetesDouble, kubeconfig: Path) -> None:
    api.add_workload("Deployment", NS, "payments-api")
    t, _ = restart_target(kubeconfig)

    api.fail(1, 429, retry_after=3)
    with pytest.raises(TransientError) as throttled:
        publish(t, new_value())
    api.fail(1, 403)
    with pytest.raises(PermanentError, match="HTTP 403 Forbidden: injected failure"):
        publish(t, new_value())

    assert throttled.value.retry_after == 3.0
    assert api.writes == []


# --- through the engine ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])  # the store is not what is under test here
def test_a_rotation_writes_the_secret_before_it_restarts_the_workload(
    store: Store, api: KubernetesDouble, kubeconfig: Path, tmp_path: Path
) -> None:
    api.add_secret(NS, "app-secrets", {"db-url": "postgres://db/app"})
    api.add_workload("Deployment", NS, "payments-api", rollout_reads=3)
    common = {"kubeconfig": str(kubeconfig), "namespace": NS}
    estate = {
        "credentials": [
            {
                "name": "payments-api",
                "owner": "team-payments",
                "policy": {"grace_period": "1h", "max_lifetime": "90d"},
                "provider": {"type": "random", "length": 32},
                "actions": [
                    {
                        "type": "kubernetes_rollout_restart",
                        "order": 20,
                        "on_failure": "abort",
                        "config": {**common, "kind": "Deployment", "name": "payments-api"},
                    },
                    {
                        "type": "kubernetes_secret",
                        "order": 10,
                        "on_failure": "abort",
                        "config": {**common, "secret": "app-secrets", "key": "client-secret"},
                    },
                ],
            }
        ]
    }
    apply_estate(store, load_estate(save_estate(tmp_path, estate)), actor="test")
    clock = FakeClock()

    _, state = asyncio.run(
        rotations.rotate(store, "payments-api", actor="test", context=clock.context())
    )

    assert state == RotationState.COMPLETED
    [version] = versions(store, "payments-api")
    assert api.secret_data(NS, "app-secrets") == {
        "db-url": "postgres://db/app",
        "client-secret": value_of(store, version),
    }
    assert [method for method, _ in api.writes] == ["PATCH", "PATCH"]
    assert api.writes[0][1] == SECRET_PATH
    assert api.writes[1][1] == f"/apis/apps/v1/namespaces/{NS}/deployments/payments-api"
    assert clock.sleeps == [2.0, 2.0, 2.0]
    stored = api.secret(NS, "app-secrets")
    assert stored is not None
    assert stored["metadata"]["annotations"]["keyshift.io/version-id"] == version.id


# --- kubernetes_secret: kubernetes.io/tls -------------------------------------------------


def tls_target(kubeconfig: Path, **config: Any) -> KubernetesSecretTarget:
    settings = {
        "kubeconfig": str(kubeconfig),
        "namespace": NS,
        "secret": "web-tls",
        "secret_type": "kubernetes.io/tls",
        **config,
    }
    return KubernetesSecretTarget(
        KubernetesSecretConfig.model_validate(settings), RecordingSleep().context()
    )


def test_a_tls_secret_is_created_with_the_full_chain_and_the_key(
    api: KubernetesDouble, kubeconfig: Path, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "ca")
    version = issue(ca)
    t = tls_target(kubeconfig, create=True, keys={"ca.crt": "chain"})
    result = asyncio.run(t.publish(PublishRequest(cert_delivery(version), None)))
    stored = api.secret(NS, "web-tls")
    assert stored is not None
    assert stored["type"] == "kubernetes.io/tls"
    assert api.secret_data(NS, "web-tls") == {
        "tls.crt": version.attributes["certificate"] + ca.cert_path.read_text(),
        "tls.key": version.value.reveal(),
        "ca.crt": ca.cert_path.read_text(),
    }
    assert result.detail["change"] == "created"
    assert writes(api) == ["POST"]


def test_a_tls_secret_is_updated_in_one_patch_and_rolled_back_to_the_previous_pair(
    api: KubernetesDouble, kubeconfig: Path, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "ca")
    old, new = cert_delivery(issue(ca), "v1"), cert_delivery(issue(ca), "v2")
    t = tls_target(kubeconfig, create=True)
    asyncio.run(t.publish(PublishRequest(old, None)))
    before = api.secret_data(NS, "web-tls")
    asyncio.run(t.publish(PublishRequest(new, old)))
    assert api.secret_data(NS, "web-tls") == {
        "tls.crt": new.attributes["certificate"] + new.attributes["chain"],
        "tls.key": new.value.reveal(),
    }
    asyncio.run(t.rollback(RollbackRequest(new, old)))
    assert api.secret_data(NS, "web-tls") == before
    assert writes(api) == ["POST", "PATCH", "PATCH"]


def test_an_opaque_secret_is_not_turned_into_a_tls_secret(
    api: KubernetesDouble, kubeconfig: Path, tmp_path: Path
) -> None:
    api.add_secret(NS, "web-tls", {"tls.crt": "x", "tls.key": "y"})
    t = tls_target(kubeconfig)
    result = asyncio.run(t.preflight(PreflightRequest("web-tls")))
    assert result.readiness == Readiness.BLOCKED
    assert "is of type Opaque, not kubernetes.io/tls" in result.reason
    version = cert_delivery(issue(make_ca(tmp_path / "ca")))
    with pytest.raises(PermanentError, match="type cannot change"):
        asyncio.run(t.publish(PublishRequest(version, None)))
    assert writes(api) == []


def test_a_tls_secret_takes_no_single_key_and_keeps_its_two_keys() -> None:
    base = {"kubeconfig": "/k", "namespace": NS, "secret": "s", "secret_type": "kubernetes.io/tls"}
    with pytest.raises(ValidationError, match="takes no key"):
        KubernetesSecretConfig.model_validate({**base, "key": "tls.crt"})
    with pytest.raises(ValidationError, match=r"may not set tls\.key"):
        KubernetesSecretConfig.model_validate({**base, "keys": {"tls.key": "value"}})


def test_rolling_back_the_first_certificate_of_a_tls_secret_keyshift_did_not_create_fails(
    api: KubernetesDouble, kubeconfig: Path, tmp_path: Path
) -> None:
    """A TLS Secret must hold tls.crt and tls.key, so the API server refuses removing
    them: the rollback says so rather than leaving a Secret it could not make valid."""
    api.add_secret(NS, "web-tls", {"tls.crt": "c", "tls.key": "k"}, type="kubernetes.io/tls")
    new = cert_delivery(issue(make_ca(tmp_path / "ca")))
    t = tls_target(kubeconfig)
    asyncio.run(t.publish(PublishRequest(new, None)))
    with pytest.raises(PermanentError, match=r"Required value"):
        asyncio.run(t.rollback(RollbackRequest(new, None)))
    assert api.secret_data(NS, "web-tls") == {
        "tls.crt": new.attributes["certificate"] + new.attributes["chain"],
        "tls.key": new.value.reveal(),
    }
