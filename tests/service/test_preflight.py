"""`keyshift preflight NAME` (and `keyshift rotate NAME --dry-run`): the provider's row
first, then one row per action, each ready / manual review required / blocked with its
reason; exit 0 only when every step is ready; the rows recorded in the audit trail; and
nothing changed anywhere. Driven through the real SDKs against the Graph and Key Vault
doubles over TLS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyshift.context import PluginContext
from keyshift.domain.estate import CredentialSpec, Policy
from keyshift.domain.preflight import PreflightRequest, PreflightResult, Readiness
from keyshift.engine.engine import Engine
from keyshift.engine.plan import Plan, build_plan
from keyshift.errors import PermanentError
from keyshift.store.store import Store
from keyshift.testing import FakeConfig, FakeProvider
from tests.conftest import Cli
from tests.doubles.graph import GraphDouble, StoredApplication
from tests.doubles.keyvault import VAULT_SCOPE, KeyVaultDouble
from tests.doubles.tls import TlsFiles, make_pki
from tests.helpers import audit_details, rotations_of, save_estate, table_rows, versions

ADMIN_SECRET = "double-admin-secret-value"
ADMIN_ENV = "ENTRA_ADMIN_SECRET"
NAME = "payments-entra"
SECRET_NAME = "payments-client-secret"


@pytest.fixture
def backend() -> str:
    """keyshift's own store: SQLite is enough here; the store suite covers PostgreSQL."""
    return "sqlite"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def graph(tls: TlsFiles) -> Iterator[GraphDouble]:
    with GraphDouble(tls, client_secret=ADMIN_SECRET) as double:
        double.scopes.add(VAULT_SCOPE)
        yield double


@pytest.fixture
def app(graph: GraphDouble) -> StoredApplication:
    return graph.add_application("payments-api")


@pytest.fixture
def cli(ks_env: dict[str, str]) -> Cli:
    return Cli({**ks_env, ADMIN_ENV: ADMIN_SECRET})


def _estate(
    tmp: Path,
    graph: GraphDouble,
    vault: KeyVaultDouble,
    app: StoredApplication,
    *,
    name_integrations: bool = True,
) -> Path:
    """An Entra app secret published to Key Vault (order 10) and to a JSON file (order 20).
    Without `name_integrations`, the provider and the Key Vault action leave out the
    estate's one entra integration."""
    estate: dict[str, Any] = {
        "integrations": [{"name": "contoso", "type": "entra", **graph.integration(ADMIN_ENV)}],
        "credentials": [
            {
                "name": NAME,
                "owner": "team-payments",
                "policy": {"grace_period": "1h"},
                "provider": {
                    "type": "entra_client_secret",
                    "integration": "contoso",
                    "app_id": app.app_id,
                },
                "actions": [
                    {
                        "type": "azure_keyvault",
                        "order": 10,
                        "config": {
                            "integration": "contoso",
                            "vault_url": vault.vault_url,
                            "secret_name": SECRET_NAME,
                            # The double listens on 127.0.0.1, not under vault.azure.net.
                            "verify_challenge_resource": False,
                        },
                    },
                    {
                        "type": "file",
                        "order": 20,
                        "config": {
                            "path": str(tmp / "appsettings.json"),
                            "key": "Entra:ClientSecret",
                            "file_format": "json",
                        },
                    },
                ],
            }
        ],
    }
    if not name_integrations:
        [credential] = estate["credentials"]
        del credential["provider"]["integration"]
        del credential["actions"][0]["config"]["integration"]
    return save_estate(tmp, estate)


STEPS = ["provider:entra_client_secret", "publishing:10:azure_keyvault", "publishing:20:file"]


def _audited_rows(store: Store) -> list[list[str]]:
    """The audited rows as the table shows them (an empty reason prints as `-`)."""
    [entry] = audit_details(store, "rotation.preflight")
    return [[s["step"], s["readiness"], s["reason"] or "-"] for s in entry["steps"]]


def test_a_revoked_key_vault_permission_blocks_that_step_exits_1_and_touches_nothing(
    cli: Cli,
    store: Store,
    graph: GraphDouble,
    vault: KeyVaultDouble,
    app: StoredApplication,
    tmp_path: Path,
) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path, graph, vault, app))).exit_code == 0
    vault.revoke(graph.client_id, "get")

    result = cli("preflight", NAME)

    assert result.exit_code == 1, result.output
    rows = table_rows(result.output)
    assert [row[:2] for row in rows] == [
        ["provider:entra_client_secret", "ready"],
        ["publishing:10:azure_keyvault", "blocked"],
        ["publishing:20:file", "ready"],
    ]
    assert "granted Application.ReadWrite.All" in rows[0][2]
    assert "lacks the secrets get permission" in rows[1][2]
    assert SECRET_NAME in rows[1][2]
    # Nothing was written anywhere: no Key Vault write, no Graph write, no file, no
    # rotation or version in the store.
    assert {r.method for r in vault.logged(authorized=False)} == {"GET"}
    assert vault.versions(SECRET_NAME) == []
    assert graph.graph_requests("POST") == []
    assert app.passwords == []
    assert not (tmp_path / "appsettings.json").exists()
    assert rotations_of(store, NAME) == []
    assert versions(store, NAME) == []
    # The audit entry holds the same rows the table showed.
    assert _audited_rows(store) == rows
    [entry] = audit_details(store, "rotation.preflight")
    assert entry["credential"] == NAME
    assert entry["ready"] is False
    assert ADMIN_SECRET not in result.output + str(entry)


def test_a_provider_and_key_vault_action_that_leave_out_the_integration_sign_in_through_it(
    cli: Cli,
    graph: GraphDouble,
    vault: KeyVaultDouble,
    app: StoredApplication,
    tmp_path: Path,
) -> None:
    estate = _estate(tmp_path, graph, vault, app, name_integrations=False)
    assert cli("apply", "-f", str(estate)).exit_code == 0

    result = cli("preflight", NAME)

    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert [row[:2] for row in rows] == [[step, "ready"] for step in STEPS]
    # The vault was read with a token issued to the integration's identity.
    assert {r.method for r in vault.logged(authorized=True)} == {"GET"}


def test_an_all_ready_preflight_exits_0_and_records_every_row(
    cli: Cli,
    store: Store,
    graph: GraphDouble,
    vault: KeyVaultDouble,
    app: StoredApplication,
    tmp_path: Path,
) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path, graph, vault, app))).exit_code == 0

    result = cli("preflight", NAME)

    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert [row[0] for row in rows] == STEPS
    assert {row[1] for row in rows} == {"ready"}
    assert "does not exist yet; publish creates it" in rows[1][2]
    [entry] = audit_details(store, "rotation.preflight")
    assert entry["ready"] is True
    assert len(entry["plan_hash"]) == 64
    assert _audited_rows(store) == rows
    assert cli("audit", "verify").exit_code == 0
    assert vault.logged("PUT") == []
    assert graph.graph_requests("POST") == []


def test_rotate_dry_run_is_the_same_preflight(
    cli: Cli,
    store: Store,
    graph: GraphDouble,
    vault: KeyVaultDouble,
    app: StoredApplication,
    tmp_path: Path,
) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path, graph, vault, app))).exit_code == 0
    graph.roles = {"Application.Read.All"}

    preflight = cli("preflight", NAME)
    dry_run = cli("rotate", NAME, "--dry-run")

    assert (preflight.exit_code, dry_run.exit_code) == (1, 1)
    assert table_rows(dry_run.output) == table_rows(preflight.output)
    assert table_rows(dry_run.output)[0][:2] == ["provider:entra_client_secret", "blocked"]
    assert "lacks the Graph application permission" in table_rows(dry_run.output)[0][2]
    first, second = audit_details(store, "rotation.preflight")
    assert first == second
    assert rotations_of(store, NAME) == []


def test_preflight_of_an_unknown_credential_is_one_line_and_exit_1(cli: Cli) -> None:
    result = cli("preflight", "nope")
    assert result.exit_code == 1
    assert result.output.strip() == "error: no credential named nope in the estate"


# --- the engine's preflight -------------------------------------------------------------------


def _plan(hook_secret_env: str) -> Plan:
    spec = CredentialSpec.model_validate(
        {
            "name": "api-key",
            "provider": {"type": "random"},
            "actions": [
                {
                    "type": "webhook",
                    "order": 50,
                    "config": {
                        "url": "https://hooks.invalid/rotations",
                        "signing_secret_from": f"env:{hook_secret_env}",
                    },
                },
            ],
        }
    )
    return build_plan(spec, Policy())


class ReadsAndLeaks(FakeProvider):
    """Reads a secret through the context and quotes it in its error."""

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        value = self.context.secret("password_from", "env:HOOK_KEY").reveal()
        raise PermanentError(f"admin login with {value} refused")


def test_a_provider_error_is_a_blocked_row_scrubbed_of_values_and_actions_are_still_checked(
    store: Store,
) -> None:
    hook_key = "HOOK-KEY-do-not-show-0123456789"
    engine = Engine(store, actor="test", context=PluginContext(env={"HOOK_KEY": hook_key}))
    plan = _plan("HOOK_KEY")
    secrets: list[str] = []
    context = engine.plugin_context(plan, secrets)
    provider = ReadsAndLeaks(FakeConfig(), context)

    results = asyncio.run(
        engine.preflight(plan, provider=provider, context=context, secrets=secrets)
    )

    assert [step for step, _ in results] == ["provider:random", "notifying:50:webhook"]
    provider_row = results[0][1]
    assert provider_row.readiness == Readiness.BLOCKED
    assert provider_row.reason == "admin login with [REDACTED] refused"
    assert all(hook_key not in r.reason for _, r in results)


def test_a_blocked_provider_does_not_hide_the_actions_readiness(store: Store) -> None:
    engine = Engine(store, actor="test", context=PluginContext(env={"HOOK_KEY": "k" * 32}))
    provider = FakeProvider()
    provider.readiness = PreflightResult(Readiness.BLOCKED, "issuer says no")

    results = asyncio.run(engine.preflight(_plan("HOOK_KEY"), provider=provider))

    assert results[0] == ("provider:random", PreflightResult(Readiness.BLOCKED, "issuer says no"))
    assert results[1][0] == "notifying:50:webhook"
    assert provider.preflight_calls == 1
    assert provider.issued == 0
