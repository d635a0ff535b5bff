"""`keyshift impact NAME`: every issuer and consumer a rotation touches, in run order, and
where each acts, without a value, a token or a URL's path, query or user:password."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keyshift.domain.estate import CredentialSpec, Policy
from keyshift.domain.location import this_host, url_origin
from keyshift.engine.plan import Plan, build_plan
from keyshift.engine.plugins import build_integrations, validate_config
from keyshift.providers import PROVIDERS
from keyshift.providers.postgres import PostgresProvider
from keyshift.providers.redis import RedisProvider
from keyshift.service import impact as impact_service
from keyshift.store.models import CredentialRow
from keyshift.store.store import Store
from keyshift.targets import TARGETS
from tests.conftest import Cli
from tests.helpers import save_estate

NAME = "payments-entra"
WEBHOOK_TOKEN = "whk-path-token-7c1d0e5a9b"
QUERY_TOKEN = "sig-query-token-3f8a2c4e6d"
ADMIN_SECRET = "entra-admin-secret-value-0e9d8c7b6a5f"


def _estate(tmp: Path) -> dict[str, Any]:
    """An Entra credential delivered to a file, Key Vault, Kubernetes and Secrets Manager,
    reloaded by a command, a rollout restart and a Spring refresh, checked and announced."""
    kubeconfig = tmp / "kubeconfig"
    return {
        "integrations": [
            {
                "name": "contoso",
                "type": "entra",
                "tenant_id": "11111111-2222-3333-4444-555555555555",
                "client_id": "keyshift-client",
                "auth": {"method": "client_secret", "secret_from": "env:KS_ENTRA_ADMIN"},
            }
        ],
        "credentials": [
            {
                "name": NAME,
                "owner": "team-payments",
                "environment": "prod",
                "provider": {
                    "type": "entra_client_secret",
                    "integration": "contoso",
                    "app_id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                },
                "actions": [
                    {
                        "type": "webhook",
                        "order": 90,
                        "on_failure": "continue",
                        "consumer": "change-feed",
                        "config": {
                            "url": f"https://hooks.example.com:8443/services/{WEBHOOK_TOKEN}"
                            f"?sig={QUERY_TOKEN}"
                        },
                    },
                    {
                        "type": "file",
                        "order": 10,
                        "consumer": "payments-api",
                        "config": {
                            "path": str(tmp / "appsettings.json"),
                            "key": "Entra:ClientSecret",
                            "file_format": "json",
                        },
                    },
                    {
                        "type": "azure_keyvault",
                        "order": 20,
                        "consumer": "payments-batch",
                        "config": {
                            "integration": "contoso",
                            "vault_url": "https://kv-payments.vault.azure.net",
                            "secret_name": "payments-client-secret",
                        },
                    },
                    {
                        "type": "kubernetes_secret",
                        "order": 30,
                        "config": {
                            "kubeconfig": str(kubeconfig),
                            "context": "aks-prod",
                            "namespace": "payments",
                            "secret": "entra-client",
                            "key": "client-secret",
                        },
                    },
                    {
                        "type": "aws_secretsmanager",
                        "order": 40,
                        "config": {"secret_id": "prod/payments/entra", "region": "eu-west-1"},
                    },
                    {
                        "type": "command",
                        "order": 50,
                        "consumer": "payments-api",
                        "config": {"argv": ["/usr/bin/systemctl", "reload", "payments-api"]},
                    },
                    {
                        "type": "kubernetes_rollout_restart",
                        "order": 60,
                        "config": {"namespace": "payments", "kind": "Deployment", "name": "api"},
                    },
                    {
                        "type": "spring_refresh",
                        "order": 70,
                        "config": {"url": "https://orders.internal:8080/actuator/refresh"},
                    },
                    {
                        "type": "http_check",
                        "order": 80,
                        "on_failure": "abort",
                        "config": {"url": f"https://payments.internal/health?key={QUERY_TOKEN}"},
                    },
                ],
            }
        ],
    }


@pytest.fixture
def applied(cli: Cli, tmp_path: Path) -> Cli:
    cli.env["KS_ENTRA_ADMIN"] = ADMIN_SECRET
    result = cli("apply", "-f", str(save_estate(tmp_path, _estate(tmp_path))))
    assert result.exit_code == 0, result.output
    return cli


def test_impact_lists_the_issuer_then_every_action_in_run_order_with_where_it_acts(
    applied: Cli, store: Store, tmp_path: Path
) -> None:
    rows = impact_service.impact(store, NAME)

    host = this_host()
    assert [(r.position, r.phase, r.order, r.type, r.on_failure, r.consumer) for r in rows] == [
        (1, "creating, revoking", None, "entra_client_secret", None, None),
        (2, "publishing", 10, "file", "abort", "payments-api"),
        (3, "publishing", 20, "azure_keyvault", "abort", "payments-batch"),
        (4, "publishing", 30, "kubernetes_secret", "abort", None),
        (5, "publishing", 40, "aws_secretsmanager", "abort", None),
        (6, "reloading", 50, "command", "abort", "payments-api"),
        (7, "reloading", 60, "kubernetes_rollout_restart", "abort", None),
        (8, "reloading", 70, "spring_refresh", "abort", None),
        (9, "verifying", 80, "http_check", "abort", None),
        (10, "notifying", 90, "webhook", "continue", "change-feed"),
    ]
    assert {r.runs_on for r in rows} == {host}
    assert [r.where for r in rows] == [
        {
            "integration": "contoso",
            "tenant": "11111111-2222-3333-4444-555555555555",
            "app_id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "changes": "client secrets (passwordCredentials) of the application",
        },
        {
            "path": str(tmp_path / "appsettings.json"),
            "format": "json",
            "keys": "Entra:ClientSecret",
        },
        {
            "vault": "https://kv-payments.vault.azure.net",
            "secret": "payments-client-secret",
            "integration": "contoso",
        },
        {
            "kubeconfig": str(tmp_path / "kubeconfig"),
            "context": "aks-prod",
            "namespace": "payments",
            "secret": "entra-client",
            "key": "client-secret",
        },
        {"region": "eu-west-1", "secret_id": "prod/payments/entra"},
        {"program": "/usr/bin/systemctl"},
        {
            "cluster": "in-cluster service account",
            "namespace": "payments",
            "workload": "Deployment/api",
        },
        {"url": "https://orders.internal:8080"},
        {"url": "https://payments.internal"},
        {"url": "https://hooks.example.com:8443"},
    ]


def test_impact_cli_prints_the_table_and_json_without_tokens_or_secret_values(
    applied: Cli,
) -> None:
    table = applied("impact", NAME)
    as_json = applied("impact", NAME, "--json")

    assert table.exit_code == 0, table.output
    assert as_json.exit_code == 0, as_json.output
    for needle in ("kv-payments.vault.azure.net", "Deployment/api", "eu-west-1", "aks-prod"):
        assert needle in table.output
    rows = json.loads(as_json.stdout)
    assert [r["type"] for r in rows][:3] == ["entra_client_secret", "file", "azure_keyvault"]
    assert rows[-1]["where"] == {"url": "https://hooks.example.com:8443"}
    for output in (table.output, as_json.output):
        for secret in (WEBHOOK_TOKEN, QUERY_TOKEN, ADMIN_SECRET, "reload payments-api"):
            assert secret not in output


def test_impact_names_the_integration_a_provider_and_an_action_left_out(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    estate = _estate(tmp_path)
    [credential] = estate["credentials"]
    del credential["provider"]["integration"]
    [vault] = [a for a in credential["actions"] if a["type"] == "azure_keyvault"]
    del vault["config"]["integration"]
    cli.env["KS_ENTRA_ADMIN"] = ADMIN_SECRET
    applied = cli("apply", "-f", str(save_estate(tmp_path, estate)))
    assert applied.exit_code == 0, applied.output

    rows = {r.type: r.where for r in impact_service.impact(store, NAME)}

    assert rows["entra_client_secret"]["integration"] == "contoso"
    assert rows["azure_keyvault"]["integration"] == "contoso"


def test_impact_of_an_unknown_credential_fails_with_one_line(applied: Cli) -> None:
    result = applied("impact", "nope")

    assert result.exit_code == 1
    assert result.output.strip() == "error: no credential named nope in the estate"


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_every_target_describes_where_it_acts(kind: str) -> None:
    assert callable(getattr(TARGETS[kind], "describe", None)), f"{kind} has no describe()"


@pytest.mark.parametrize("kind", sorted(PROVIDERS))
def test_every_provider_describes_what_it_changes(kind: str) -> None:
    assert callable(getattr(PROVIDERS[kind], "describe", None)), f"{kind} has no describe()"


def _integrations(kind: str, dsn: str) -> dict[str, Any]:
    return build_integrations({"db": {"type": kind, "dsn": dsn, "password_from": "env:X"}})


def test_database_providers_name_server_and_roles_without_the_admin_user() -> None:
    postgres = validate_config(
        PostgresProvider,
        {"integration": "db", "users": ["app_a", "app_b"], "group_role": "app"},
        "provider",
    )
    redis = validate_config(RedisProvider, {"integration": "db", "user": "cache-app"}, "provider")

    pg = PostgresProvider.describe(
        postgres, _integrations("postgres", "postgresql://ks_admin@db.internal:5433/orders")
    )
    rd = RedisProvider.describe(redis, _integrations("redis", "rediss://ks_admin@cache:6380/2"))

    assert pg == {
        "integration": "db",
        "server": "db.internal:5433/orders",
        "strategy": "alternating_users",
        "roles": "app_a, app_b",
        "group_role": "app",
    }
    assert rd == {
        "integration": "db",
        "server": "cache:6380/2",
        "strategy": "dual_password",
        "users": "cache-app",
    }
    assert "ks_admin" not in json.dumps([pg, rd])


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://user:pw@example.com/a/b?token=x#f", "https://example.com"),
        ("http://[::1]:8080/hook/abc", "http://[::1]:8080"),
        ("https://example.com:443", "https://example.com:443"),
    ],
)
def test_url_origin_keeps_only_scheme_host_and_port(url: str, origin: str) -> None:
    assert url_origin(url) == origin


def test_a_consumer_is_kept_in_the_plan_and_an_unset_one_leaves_the_hashed_form_as_before(
    applied: Cli, store: Store
) -> None:
    with store.transaction() as s:
        cred = s.execute(select(CredentialRow).where(CredentialRow.name == NAME)).scalar_one()
        plan = build_plan(
            CredentialSpec.model_validate(cred.spec["credential"]),
            Policy.model_validate(cred.spec["policy"]),
            integrations=cred.spec.get("integrations", {}),
        )
    actions = plan.to_json()["actions"]

    assert Plan.from_json(plan.to_json()) == plan
    assert [(a["type"], a.get("consumer")) for a in actions[:5]] == [
        ("file", "payments-api"),
        ("azure_keyvault", "payments-batch"),
        ("kubernetes_secret", None),
        ("aws_secretsmanager", None),
        ("command", "payments-api"),
    ]
    # The fields every action had before `consumer` existed: stored plans keep their hash.
    assert set(actions[2]) == {"key", "type", "order", "on_failure", "agent_id", "phase", "config"}
