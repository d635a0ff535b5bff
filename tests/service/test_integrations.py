"""`keyshift integrations test NAME` against the Graph double: a token, the permissions
in its `roles` claim, and a Graph read, each reported by name; nothing changes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keyshift.providers.graph import token_roles
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli
from tests.doubles.graph import GraphDouble
from tests.doubles.tls import TlsFiles
from tests.helpers import save_estate


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def graph(tls: TlsFiles) -> Iterator[GraphDouble]:
    with GraphDouble(tls, client_secret=ADMIN_SECRET) as double:
        double.add_application("payments-api")
        yield double


@pytest.fixture
def applied(ks_env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path) -> Cli:
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    estate = {
        "integrations": [{"name": "contoso", "type": "entra", **graph.integration(ADMIN_ENV)}]
    }
    result = cli("apply", "-f", str(save_estate(tmp_path, estate)))
    assert result.exit_code == 0, result.output
    return cli


def test_a_fully_permitted_identity_passes_every_check(applied: Cli, graph: GraphDouble) -> None:
    result = applied("integrations", "test", "contoso")

    assert result.exit_code == 0, result.output
    assert "granted Application.ReadWrite.All" in result.output
    assert "failed" not in result.output
    assert [r.method for r in graph.graph_requests()] == ["GET"], "reads only"


def test_a_missing_write_permission_is_named(applied: Cli, graph: GraphDouble) -> None:
    graph.roles = {"Application.Read.All"}

    result = applied("integrations", "test", "contoso")

    assert result.exit_code == 1
    assert "missing Application.ReadWrite.OwnedBy" in result.output
    assert "granted: Application.Read.All" in result.output


def test_no_permission_at_all_fails_the_graph_read_too(applied: Cli, graph: GraphDouble) -> None:
    graph.roles = set()

    result = applied("integrations", "test", "contoso")

    assert result.exit_code == 1
    assert "Authorization_RequestDenied" in result.output
    assert "missing Application.Read.All" in result.output


def _with_residual_use(cli: Cli, graph: GraphDouble, tmp_path: Path) -> None:
    app = graph.add_application("billing-api")
    estate = {
        "integrations": [{"name": "contoso", "type": "entra", **graph.integration(ADMIN_ENV)}],
        "credentials": [
            {
                "name": "billing-secret",
                "owner": "team-billing",
                "policy": {"grace_period": "1d", "residual_use": {"quiet_for": "10m"}},
                "provider": {
                    "type": "entra_client_secret",
                    "integration": "contoso",
                    "app_id": app.app_id,
                },
            }
        ],
    }
    result = cli("apply", "-f", str(save_estate(tmp_path, estate)))
    assert result.exit_code == 0, result.output


def test_residual_use_from_the_sign_in_log_needs_audit_log_read_all(
    applied: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    _with_residual_use(applied, graph, tmp_path)
    graph.roles = {"Application.ReadWrite.All"}

    refused = applied("integrations", "test", "contoso")

    assert refused.exit_code == 1
    assert "the residual_use of billing-secret needs" in refused.output
    assert "lacks AuditLog.Read.All" in refused.output

    graph.roles = {"Application.ReadWrite.All", "AuditLog.Read.All"}
    granted = applied("integrations", "test", "contoso")
    assert granted.exit_code == 0, granted.output
    assert "granted AuditLog.Read.All (residual use of billing-secret)" in granted.output


def test_without_residual_use_the_sign_in_log_is_not_checked(
    applied: Cli, graph: GraphDouble
) -> None:
    graph.roles = {"Application.ReadWrite.All"}

    result = applied("integrations", "test", "contoso")

    assert result.exit_code == 0, result.output
    assert "sign-in log" not in result.output


def test_a_wrong_secret_is_reported_with_its_aadsts_code(
    applied: Cli, ks_env: dict[str, str]
) -> None:
    ks_env[ADMIN_ENV] = "not-the-secret"

    result = applied("integrations", "test", "contoso")

    assert result.exit_code == 1
    assert "AADSTS7000215" in result.output
    assert "not-the-secret" not in result.output


def test_an_unknown_integration_is_refused(applied: Cli) -> None:
    result = applied("integrations", "test", "fabrikam")
    assert result.exit_code == 1
    assert "no integration named 'fabrikam'" in result.output


def test_token_roles_reads_the_claim_and_tolerates_opaque_tokens() -> None:
    assert token_roles("opaque-token") is None
    assert token_roles("e30.eyJyb2xlcyI6WyJBIl19.sig") == ["A"]
    assert token_roles("e30.e30.sig") == []
