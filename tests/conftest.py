"""Shared fixtures: a store on SQLite and on a real PostgreSQL 15 server, and CLI runners.

Every test that takes `store` or `ks_env` runs twice, once per backend. The
PostgreSQL server is started once per session; each test gets its own database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner, Result

from keyshift.cli import app
from keyshift.store.store import Store
from tests.doubles.chat import slack, teams  # noqa: F401 (fixtures for every test)
from tests.doubles.graph import GraphDouble
from tests.doubles.jira import jira  # noqa: F401 (a fixture for every test)
from tests.doubles.keyvault import KeyVaultDouble
from tests.doubles.moto import aws, kms, moto_endpoint, s3  # noqa: F401 (fixtures for every test)
from tests.doubles.receiver import receiver  # noqa: F401 (a fixture for every test)
from tests.doubles.servicenow import servicenow  # noqa: F401 (a fixture for every test)
from tests.doubles.smtp import mail_server  # noqa: F401 (a fixture for every test)
from tests.doubles.tls import TlsFiles, make_pki
from tests.servers import postgres_server

BACKENDS = ["sqlite", "postgres"]
ADMIN_SECRET = "double-admin-secret-value"
"""keyshift's own client secret at the Graph double (`graph`)."""
ADMIN_ENV = "ENTRA_ADMIN_SECRET"
"""The environment variable estates name for it (`env:ENTRA_ADMIN_SECRET`)."""


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A test CA and a server certificate for 127.0.0.1 and localhost."""
    return make_pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def graph(tls: TlsFiles) -> Iterator[GraphDouble]:
    """The Entra ID token endpoint and Graph, over TLS, knowing keyshift's client secret."""
    with GraphDouble(tls, client_secret=ADMIN_SECRET) as double:
        yield double


@pytest.fixture
def vault(tls: TlsFiles, graph: GraphDouble) -> Iterator[KeyVaultDouble]:
    """Key Vault's data plane over TLS, signing in through `graph` (a module that uses it
    gives `graph` the vault scope)."""
    with KeyVaultDouble(tls, graph) as double:
        yield double


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ks_env(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> Iterator[dict[str, str]]:
    """An environment for keyshift: its own home, and its own database on PostgreSQL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSHIFT_")}
    env["KEYSHIFT_HOME"] = str(tmp_path / "home")
    env["KEYSHIFT_ACTOR"] = "test-operator"
    if backend == "sqlite":
        yield env
        return
    admin_dsn: str = request.getfixturevalue("pg_dsn")
    name = f"ks_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    env["KEYSHIFT_DATABASE_URL"] = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    yield env
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def store(ks_env: dict[str, str]) -> Iterator[Store]:
    opened = Store.open(ks_env)
    yield opened
    opened.close()


class Cli:
    """Runs the CLI in-process with the test's environment; `result.output` is stdout+stderr."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        # CliRunner replaces os.environ for the call; keys not in env are removed.
        full: dict[str, str | None] = {k: None for k in os.environ if k.startswith("KEYSHIFT_")}
        full.update(self.env)
        return self.runner.invoke(app, list(args), input=stdin, env=full, catch_exceptions=False)


@pytest.fixture
def cli(ks_env: dict[str, str]) -> Cli:
    return Cli(ks_env)


def run_subprocess(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The CLI as a separate process, as an operator runs it (used by crash tests)."""
    return subprocess.run(
        [sys.executable, "-m", "keyshift.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
