"""The `azure_keyvault` target against the local Key Vault double, through the real
azure-keyvault-secrets SDK and azure-identity tokens from the Graph double, over TLS."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.identity.aio import ClientSecretCredential
from azure.keyvault.secrets.aio import SecretClient
from pydantic import ValidationError

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase, RotationState
from keyshift.errors import PermanentError, TransientError
from keyshift.service import rotations
from keyshift.store.store import Store
from keyshift.targets import TARGETS, TargetKind
from keyshift.targets.azure_keyvault import (
    TAG_FINGERPRINT,
    TAG_RESTORED,
    TAG_ROLLED_BACK,
    TAG_ROTATION,
    TAG_VERSION,
    AzureKeyVaultConfig,
    AzureKeyVaultTarget,
)
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
)
from keyshift.testing import FakeClock, capture_logs
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli
from tests.doubles.graph import GraphDouble
from tests.doubles.keyvault import VAULT_SCOPE, KeyVaultDouble
from tests.doubles.tls import TlsFiles
from tests.helpers import rotations_of, save_estate, value_of, versions

SECRET_NAME = "payments-db-password"
NAME = "payments-db"


@pytest.fixture
def backend() -> str:
    """keyshift's own store: SQLite is enough here; the store suite covers PostgreSQL."""
    return "sqlite"


@pytest.fixture
def graph(tls: TlsFiles) -> Iterator[GraphDouble]:
    with GraphDouble(tls, client_secret=ADMIN_SECRET) as double:
        double.scopes.add(VAULT_SCOPE)
        yield double


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _integration(graph: GraphDouble, tls: TlsFiles) -> dict[str, Any]:
    return {
        "tenant_id": graph.tenant_id,
        "client_id": graph.client_id,
        "auth": {"method": "client_secret", "secret_from": f"env:{ADMIN_ENV}"},
        "authority": graph.authority,
        "graph_url": graph.graph_url,
        "ca_bundle": str(tls.ca_path),
    }


def _config(vault: KeyVaultDouble, **extra: Any) -> dict[str, Any]:
    return {
        "integration": "contoso",
        "vault_url": vault.vault_url,
        "secret_name": SECRET_NAME,
        # The double listens on 127.0.0.1, not on a subdomain of vault.azure.net.
        "verify_challenge_resource": False,
        **extra,
    }


def target(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock, **extra: Any
) -> AzureKeyVaultTarget:
    context = PluginContext(
        now=clock.now,
        sleep=clock.sleep,
        env={ADMIN_ENV: ADMIN_SECRET},
        integrations={"contoso": EntraIntegration.model_validate(_integration(graph, tls))},
    )
    return AzureKeyVaultTarget(AzureKeyVaultConfig.model_validate(_config(vault, **extra)), context)


def new_value() -> str:
    return "S3CRET-" + secrets.token_hex(12)


def delivery(value: str, version_id: str = "v2", rotation_id: str = "rot-2") -> Delivery:
    return Delivery(
        credential=NAME,
        rotation_id=rotation_id,
        version_id=version_id,
        fingerprint=f"fp-{version_id}",
        value=Secret(value),
    )


def publish(t: AzureKeyVaultTarget, new: Delivery, previous: Delivery | None = None) -> StepResult:
    return asyncio.run(t.publish(PublishRequest(new, previous)))


def rollback(t: AzureKeyVaultTarget, failed: Delivery, previous: Delivery | None) -> StepResult:
    return asyncio.run(t.rollback(RollbackRequest(failed, previous)))


def writes(vault: KeyVaultDouble) -> list[str]:
    return [f"{r.method} {r.path}" for r in vault.logged() if r.method in ("PUT", "PATCH")]


# --- registration and configuration -------------------------------------------------------


def test_azure_keyvault_is_registered_as_a_publishing_target_through_entra() -> None:
    assert TARGETS[TargetKind.AZURE_KEYVAULT] is AzureKeyVaultTarget
    assert AzureKeyVaultTarget.kind == "azure_keyvault"
    assert AzureKeyVaultTarget.phase == Phase.PUBLISH
    assert AzureKeyVaultTarget.integration_type == "entra"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("secret_name", "db_password", "letters, digits and '-'"),
        ("secret_name", "a" * 128, "1-127 characters"),
        ("secret_name", "", "1-127 characters"),
        ("vault_url", "http://kv.vault.azure.net", "https://"),
        ("vault_url", "https://kv.vault.azure.net/secrets/x", "without a path"),
        ("tags", {"keyshift-version": "x"}, "reserved"),
        ("tags", {f"t{i}": "x" for i in range(11)}, "at most 10 tags"),
        ("expires_after", "0s", "longer than 0s"),
    ],
)
def test_config_refuses_what_key_vault_would_refuse(field: str, value: Any, message: str) -> None:
    base = {"integration": "contoso", "vault_url": "https://kv.vault.azure.net", "secret_name": "s"}
    with pytest.raises(ValidationError, match=message):
        AzureKeyVaultConfig.model_validate({**base, field: value})


def test_config_keeps_a_valid_vault_url_without_trailing_slash() -> None:
    config = AzureKeyVaultConfig.model_validate(
        {"integration": "c", "vault_url": "https://kv.vault.azure.net/", "secret_name": "a-1"}
    )
    assert config.vault_url == "https://kv.vault.azure.net"
    assert config.verify_challenge_resource is True


# --- publish --------------------------------------------------------------------------------


def test_publish_writes_a_version_with_content_type_expiry_and_tags_but_no_value_in_tags(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    value = new_value()
    t = target(
        vault,
        graph,
        tls,
        clock,
        content_type="text/plain",
        expires_after="90d",
        tags={"team": "pay"},
    )

    result = publish(t, delivery(value))

    [stored] = vault.versions(SECRET_NAME)
    assert stored.value == value
    assert stored.content_type == "text/plain"
    assert stored.enabled
    assert stored.expires == int((clock.now() + timedelta(days=90)).timestamp())
    assert stored.tags == {
        "team": "pay",
        TAG_ROTATION: "rot-2",
        TAG_VERSION: "v2",
        TAG_FINGERPRINT: "fp-v2",
    }
    assert dict(result.detail) == {
        "vault": vault.vault_url,
        "secret_name": SECRET_NAME,
        "key_vault_version": stored.version,
    }
    [put] = vault.logged("PUT")
    assert put.path == f"/secrets/{SECRET_NAME}"
    assert put.tags == stored.tags
    assert value not in repr(vault.requests)
    assert value not in repr(result.detail)


def test_the_sdk_meets_the_bearer_challenge_and_signs_in_for_the_vault_resource(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    publish(target(vault, graph, tls, clock), delivery(new_value()))

    first = vault.requests[0]
    assert (first.authorized, first.status) == (False, 401), "the SDK's first try has no token"
    assert all(r.authorized for r in vault.requests[1:])
    token_requests = [r for r in graph.requests if r.path.endswith("/oauth2/v2.0/token")]
    assert token_requests, "a token was fetched from the Entra double"


def test_publishing_the_same_version_again_writes_nothing(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    t = target(vault, graph, tls, clock)
    value = new_value()
    first = publish(t, delivery(value))

    again = publish(t, delivery(value))

    assert len(vault.versions(SECRET_NAME)) == 1
    assert len(vault.logged("PUT")) == 1
    assert again.detail["key_vault_version"] == "unchanged"
    assert again.detail["current_version"] == first.detail["key_vault_version"]


def test_publishing_a_new_version_over_an_older_one_adds_a_version(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    t = target(vault, graph, tls, clock)
    old, new = new_value(), new_value()
    publish(t, delivery(old, "v1", "rot-1"))

    publish(t, delivery(new, "v2", "rot-2"), delivery(old, "v1", "rot-1"))

    assert [v.value for v in vault.versions(SECRET_NAME)] == [old, new]


# --- rollback -------------------------------------------------------------------------------


def test_rollback_restores_the_previous_value_as_a_new_version_once(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    t = target(vault, graph, tls, clock, content_type="text/plain")
    old, new = new_value(), new_value()
    before, failed = delivery(old, "v1", "rot-1"), delivery(new, "v2", "rot-2")
    publish(t, before)
    published = publish(t, failed, before)

    result = rollback(t, failed, before)
    again = rollback(t, failed, before)

    stored = vault.versions(SECRET_NAME)
    assert [v.value for v in stored] == [old, new, old]
    restore = stored[-1]
    assert restore.tags[TAG_FINGERPRINT] == "fp-v1"
    assert restore.tags[TAG_VERSION] == "v1"
    assert restore.tags[TAG_RESTORED] == "v1"
    assert restore.tags[TAG_ROLLED_BACK] == "v2"
    assert restore.tags[TAG_ROTATION] == "rot-2"
    assert restore.content_type == "text/plain"
    assert stored[1].enabled, "the failed version is kept for analysis"
    assert result.detail["action"] == "restored"
    assert result.detail["key_vault_version"] == restore.version
    assert result.detail["replaced_version"] == published.detail["key_vault_version"]
    assert again.detail["key_vault_version"] == "unchanged"
    assert len(vault.logged("PUT")) == 3


def test_rollback_without_a_previous_version_disables_the_failed_one_and_deletes_nothing(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    t = target(vault, graph, tls, clock)
    failed = delivery(new_value())
    publish(t, failed)

    result = rollback(t, failed, None)
    again = rollback(t, failed, None)

    [stored] = vault.versions(SECRET_NAME)
    assert not stored.enabled
    assert result.detail["action"] == "disabled"
    assert result.detail["key_vault_version"] == stored.version
    assert again.detail["key_vault_version"] == "unchanged"
    assert [r.method for r in vault.logged() if r.method not in ("GET",)] == ["PUT", "PATCH"]
    assert vault.logged("DELETE", authorized=False) == []


def test_rollback_leaves_a_version_someone_else_wrote_since_alone(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    t = target(vault, graph, tls, clock)
    before, failed = delivery(new_value(), "v1"), delivery(new_value(), "v2")
    publish(t, failed, before)
    vault.put(SECRET_NAME, "written-by-someone-else")

    result = rollback(t, failed, before)

    assert result.detail["key_vault_version"] == "unchanged"
    assert len(vault.versions(SECRET_NAME)) == 2
    assert writes(vault) == [f"PUT /secrets/{SECRET_NAME}"]


def test_rollback_when_publish_never_reached_the_vault_changes_nothing(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    result = rollback(
        target(vault, graph, tls, clock), delivery(new_value(), "v2"), delivery("old", "v1")
    )

    assert result.detail["key_vault_version"] == "unchanged"
    assert vault.versions(SECRET_NAME) == []
    assert writes(vault) == []


# --- preflight ------------------------------------------------------------------------------


def test_preflight_is_ready_for_an_existing_secret_and_writes_nothing(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    vault.put(SECRET_NAME, "existing")

    result = asyncio.run(target(vault, graph, tls, clock).preflight(PreflightRequest(NAME)))

    assert result.readiness == Readiness.READY
    assert "set is proven at publish time" in result.reason
    assert writes(vault) == []
    assert len(vault.versions(SECRET_NAME)) == 1


def test_preflight_is_ready_when_the_secret_does_not_exist_yet(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    result = asyncio.run(target(vault, graph, tls, clock).preflight(PreflightRequest(NAME)))

    assert result.readiness == Readiness.READY
    assert "does not exist yet" in result.reason
    assert [r.status for r in vault.logged("GET")] == [404]
    assert writes(vault) == []


@pytest.mark.parametrize(
    ("model", "inner"), [("access_policy", "ForbiddenByPolicy"), ("rbac", "ForbiddenByRbac")]
)
def test_preflight_without_get_permission_is_blocked_naming_it_and_nothing_is_written(
    tls: TlsFiles, graph: GraphDouble, clock: FakeClock, model: Any, inner: str
) -> None:
    with KeyVaultDouble(tls, graph, permission_model=model) as vault:
        vault.revoke(graph.client_id, "get")

        result = asyncio.run(target(vault, graph, tls, clock).preflight(PreflightRequest(NAME)))

        assert result.readiness == Readiness.BLOCKED
        assert f"Forbidden/{inner}" in result.reason
        assert "lacks the secrets get permission" in result.reason
        assert SECRET_NAME in result.reason
        assert vault.vault_url in result.reason
        assert writes(vault) == []


def test_preflight_of_an_unreachable_vault_is_blocked(
    graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    with KeyVaultDouble(tls, graph) as gone:
        t = target(gone, graph, tls, clock)
    # The double has stopped: its port refuses connections.

    result = asyncio.run(t.preflight(PreflightRequest(NAME)))

    assert result.readiness == Readiness.BLOCKED
    assert "unreachable" in result.reason


def test_preflight_when_keyshift_cannot_sign_in_is_blocked(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    t = target(vault, graph, tls, clock)
    t.context.env[ADMIN_ENV] = "not-the-admin-secret"  # type: ignore[index]

    result = asyncio.run(t.preflight(PreflightRequest(NAME)))

    assert result.readiness == Readiness.BLOCKED
    assert "could not get a token" in result.reason
    assert "invalid_client AADSTS7000215" in result.reason
    assert vault.logged() == []


# --- failures -------------------------------------------------------------------------------


def test_throttling_is_a_transient_error_carrying_retry_after_and_a_retry_succeeds(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    t = target(vault, graph, tls, clock)
    value = new_value()
    vault.fail_next(1, 429, retry_after=7, methods=("PUT",))

    with pytest.raises(TransientError) as caught:
        publish(t, delivery(value))
    assert caught.value.retry_after == 7.0
    assert "429" in str(caught.value)
    assert vault.versions(SECRET_NAME) == []

    publish(t, delivery(value))
    assert [v.value for v in vault.versions(SECRET_NAME)] == [value]


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock, status: int
) -> None:
    vault.fail_next(1, status)

    with pytest.raises(TransientError, match=str(status)) as caught:
        publish(target(vault, graph, tls, clock), delivery(new_value()))
    assert caught.value.retry_after is None


def test_a_vault_that_does_not_answer_times_out_as_a_transient_error(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    vault.hang_next(1)

    with pytest.raises(TransientError, match="unreachable"):
        publish(target(vault, graph, tls, clock, timeout="1s"), delivery(new_value()))


def test_set_refused_with_403_is_permanent_and_names_the_code_vault_and_secret(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    value = new_value()
    vault.revoke(graph.client_id, "set")

    with capture_logs(secrets=[value]), pytest.raises(PermanentError) as caught:
        publish(target(vault, graph, tls, clock), delivery(value))

    message = str(caught.value)
    assert "HTTP 403 Forbidden/ForbiddenByPolicy" in message
    assert "secrets set permission" in message
    assert vault.vault_url in message
    assert SECRET_NAME in message
    assert value not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert vault.versions(SECRET_NAME) == []


def test_an_injected_403_on_set_is_permanent(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    vault.fail_next(1, 403, methods=("PUT",))

    with pytest.raises(PermanentError, match="ForbiddenByPolicy"):
        publish(target(vault, graph, tls, clock), delivery(new_value()))


def test_the_sdk_refuses_a_challenge_outside_the_vault_domain_unless_told_otherwise(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock
) -> None:
    t = target(vault, graph, tls, clock, verify_challenge_resource=True)

    with pytest.raises(PermanentError, match="verify_challenge_resource"):
        publish(t, delivery(new_value()))

    assert vault.logged() == [], "no request carried a token"
    assert vault.versions(SECRET_NAME) == []


def test_no_value_reaches_logs_details_or_errors(
    vault: KeyVaultDouble,
    graph: GraphDouble,
    tls: TlsFiles,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    old, new = new_value(), new_value()
    before, failed = delivery(old, "v1", "rot-1"), delivery(new, "v2", "rot-2")
    t = target(vault, graph, tls, clock)
    details: list[Any] = []
    errors: list[str] = []

    with capture_logs(secrets=[old, new, ADMIN_SECRET]) as events:
        details.append(publish(t, before).detail)
        details.append(publish(t, failed, before).detail)
        vault.fail_next(1, 500, methods=("PUT",))
        with pytest.raises(TransientError) as transient:
            rollback(t, failed, before)
        errors.append(str(transient.value))
        details.append(rollback(t, failed, before).detail)
        details.append(asyncio.run(t.preflight(PreflightRequest(NAME))).reason)

    assert events, "the target logged its writes"
    for text in [repr(details), *errors, caplog.text, repr(vault.requests)]:
        for value in (old, new, ADMIN_SECRET):
            assert value not in text
    assert [v.value for v in vault.versions(SECRET_NAME)] == [old, new, old]


def test_the_double_lists_versions_in_pages_through_the_sdk(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles
) -> None:
    for i in range(30):
        vault.put(SECRET_NAME, f"value-{i}")

    async def listed() -> list[str]:
        credential = ClientSecretCredential(
            graph.tenant_id,
            graph.client_id,
            ADMIN_SECRET,
            authority=graph.authority,
            disable_instance_discovery=True,
            transport=AsyncioRequestsTransport(connection_verify=str(tls.ca_path)),
        )
        async with (
            credential,
            SecretClient(
                vault.vault_url,
                credential,
                transport=AsyncioRequestsTransport(connection_verify=str(tls.ca_path)),
                verify_challenge_resource=False,
            ) as client,
        ):
            return [
                p.version or ""
                async for p in client.list_properties_of_secret_versions(
                    SECRET_NAME, max_page_size=10
                )
            ]

    found = asyncio.run(listed())

    assert sorted(found) == sorted(v.version for v in vault.versions(SECRET_NAME))
    assert len([r for r in vault.logged("GET") if r.path.endswith("/versions")]) == 3


# --- through the engine ---------------------------------------------------------------------


def test_rotation_publishes_to_the_primary_then_the_secondary_vault(
    tls: TlsFiles, graph: GraphDouble, ks_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    env = {**ks_env, ADMIN_ENV: ADMIN_SECRET}
    with (
        KeyVaultDouble(tls, graph, name="kv-primary") as primary,
        KeyVaultDouble(tls, graph, name="kv-secondary") as secondary,
    ):
        estate = {
            "integrations": [{"name": "contoso", "type": "entra", **_integration(graph, tls)}],
            "credentials": [
                {
                    "name": NAME,
                    "owner": "team-payments",
                    "policy": {"grace_period": "0s"},
                    "provider": {"type": "random", "length": 32},
                    "actions": [
                        {
                            "type": "azure_keyvault",
                            "order": 20,
                            "on_failure": "abort",
                            "config": _config(secondary),
                        },
                        {
                            "type": "azure_keyvault",
                            "order": 10,
                            "on_failure": "abort",
                            "config": _config(primary, content_type="text/plain"),
                        },
                    ],
                }
            ],
        }
        cli = Cli(env)
        applied = cli("apply", "-f", str(save_estate(tmp_path, estate)))
        assert applied.exit_code == 0, applied.output
        primary.fail_next(1, 429, retry_after=3, methods=("PUT",))
        clock = FakeClock()

        _, state = asyncio.run(
            rotations.rotate(store, NAME, actor="test", context=clock.context(env))
        )

        assert state == RotationState.COMPLETED
        assert rotations_of(store, NAME)[-1].state == RotationState.COMPLETED.value
        assert 3.0 in clock.sleeps, "the throttled write was retried after Retry-After"
        current = value_of(store, versions(store, NAME)[-1])
        [at_primary] = primary.versions(SECRET_NAME)
        [at_secondary] = secondary.versions(SECRET_NAME)
        assert at_primary.value == current
        assert at_secondary.value == current
        assert at_primary.content_type == "text/plain"
        [first_write] = [r for r in primary.logged("PUT") if r.status == 200]
        [second_write] = secondary.logged("PUT")
        assert first_write.seq < second_write.seq, "order 10 is written before order 20"
        export = cli("audit", "export", "--format", "jsonl")
        assert at_primary.version in export.output
        assert current not in export.output


def test_the_double_refuses_a_token_for_another_audience_with_the_challenge(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles
) -> None:
    async def graph_token() -> str:
        async with ClientSecretCredential(
            graph.tenant_id,
            graph.client_id,
            ADMIN_SECRET,
            authority=graph.authority,
            disable_instance_discovery=True,
            transport=AsyncioRequestsTransport(connection_verify=str(tls.ca_path)),
        ) as credential:
            return (await credential.get_token("https://graph.microsoft.com/.default")).token

    token = asyncio.run(graph_token())
    answer = httpx.get(
        f"{vault.vault_url}/secrets/{SECRET_NAME}/?api-version=7.4",
        headers={"Authorization": f"Bearer {token}"},
        verify=tls.client_context(),
    )

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "Unauthorized"
    assert "AKV10022" in answer.json()["error"]["message"]
    challenge = answer.headers["WWW-Authenticate"]
    assert f'authorization="{graph.authority}/{graph.tenant_id}"' in challenge
    assert 'resource="https://vault.azure.net"' in challenge
    assert vault.logged() == []


def test_an_action_naming_a_non_entra_integration_is_refused_at_apply(
    ks_env: dict[str, str], tmp_path: Path
) -> None:
    estate = {
        "integrations": [
            {
                "name": "db-admin",
                "type": "postgres",
                "dsn": "postgresql://admin@db:5432/app",
                "password_from": "env:DB_ADMIN_PASSWORD",
            }
        ],
        "credentials": [
            {
                "name": NAME,
                "owner": "team-payments",
                "provider": {"type": "random"},
                "actions": [
                    {
                        "type": "azure_keyvault",
                        "order": 10,
                        "config": {
                            "integration": "db-admin",
                            "vault_url": "https://payments-kv.vault.azure.net",
                            "secret_name": SECRET_NAME,
                        },
                    }
                ],
            }
        ],
    }

    applied = Cli(ks_env)("apply", "-f", str(save_estate(tmp_path, estate)))

    assert applied.exit_code != 0
    assert "credentials[0].actions[0].config.integration" in applied.output
    assert "integration 'db-admin' is of type postgres, not entra" in applied.output
