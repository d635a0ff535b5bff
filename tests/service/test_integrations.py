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
