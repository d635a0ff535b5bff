"""Entra ID client secret rotations against the local Graph double, through the real
azure-identity credential and httpx over TLS with a test CA."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.identity.aio import ClientSecretCredential
from pydantic import ValidationError
from sqlalchemy import update

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.clock import utcnow
from keyshift.domain.states import RotationState
from keyshift.providers import INTEGRATIONS, PROVIDERS, IntegrationKind, ProviderKind
from keyshift.providers.base import PreflightRequest, PreflightResult, Readiness
from keyshift.providers.entra import (
    EntraSecretConfig,
    EntraSecretProvider,
)
from keyshift.providers.graph import TokenRefused, azure_identity_token_source
from keyshift.service import rotations
from keyshift.store.models import RotationRow
from keyshift.store.store import Store
from keyshift.testing import FakeClock, assert_provider_contract
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli, run_subprocess
from tests.doubles.graph import GraphDouble, StoredApplication
from tests.doubles.tls import TlsFiles
from tests.helpers import entra_estate, json_value, rotations_of, steps, versions

NAME = "payments-entra"


@pytest.fixture
def backend() -> str:
    """keyshift's own store: SQLite is enough here; the store suite covers PostgreSQL."""
    return "sqlite"


@pytest.fixture
def app(graph: GraphDouble) -> StoredApplication:
    return graph.add_application("payments-api")


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    return ks_env


def _estate(tmp: Path, graph: GraphDouble, tls: TlsFiles, app: StoredApplication) -> Path:
    return entra_estate(tmp, graph.integration(ADMIN_ENV), app.app_id)


def _published(tmp: Path) -> str:
    value = json_value(tmp / "appsettings.json", "Entra:ClientSecret")
    assert value
    return value


def _signs_in(graph: GraphDouble, tls: TlsFiles, app_id: str, secret: str) -> bool:
    async def attempt() -> bool:
        async with ClientSecretCredential(
            graph.tenant_id,
            app_id,
            secret,
            authority=graph.authority,
            disable_instance_discovery=True,
            transport=AsyncioRequestsTransport(connection_verify=str(tls.ca_path)),
        ) as credential:
            try:
                await azure_identity_token_source(credential)()
            except TokenRefused:
                return False
            return True

    return asyncio.run(attempt())


def _key_ids(app: StoredApplication) -> list[str]:
    return [p.key_id for p in app.passwords]


def test_entra_is_registered_as_provider_and_integration() -> None:
    assert PROVIDERS[ProviderKind.ENTRA_CLIENT_SECRET] is EntraSecretProvider
    assert INTEGRATIONS[IntegrationKind.ENTRA] is EntraIntegration


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"method": "certificate"}, "certificate_from is required when method is certificate"),
        ({"method": "client_secret"}, "secret_from is required when method is client_secret"),
        (
            {"method": "managed_identity", "secret_from": "env:X"},
            "secret_from does not apply when method is managed_identity",
        ),
        ({"method": "password"}, "Input should be 'client_secret'"),
    ],
)
def test_auth_fields_must_fit_the_method(auth: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EntraIntegration.model_validate({"tenant_id": "t", "client_id": "c", "auth": auth})


def test_provider_keeps_the_contract_against_the_graph_double(
    graph: GraphDouble, tls: TlsFiles, app: StoredApplication
) -> None:
    context = PluginContext(
        env={ADMIN_ENV: ADMIN_SECRET},
        integrations={"contoso": EntraIntegration.model_validate(graph.integration(ADMIN_ENV))},
    )
    provider = EntraSecretProvider(
        EntraSecretConfig(integration="contoso", app_id=app.app_id), context
    )
    asyncio.run(assert_provider_contract(provider))
    assert app.passwords == [], "the contract revokes what it created"


def test_rotation_keeps_two_secrets_in_grace_then_one_and_the_new_secret_signs_in(
    graph: GraphDouble,
    tls: TlsFiles,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, tls, app))).exit_code == 0
    first = cli("rotate", NAME)
    assert first.exit_code == 0, first.output
    first_secret = _published(tmp_path)
    [first_key] = _key_ids(app)

    second = cli("rotate", NAME)
    assert second.exit_code == 0, second.output
    in_grace = rotations_of(store, NAME)[-1]
    assert in_grace.state == RotationState.GRACE.value
    assert len(app.passwords) == 2, "old and new secret are both valid during grace"
    second_secret = _published(tmp_path)
    assert _signs_in(graph, tls, app.app_id, first_secret)
    assert _signs_in(graph, tls, app.app_id, second_secret)

    with store.transaction() as s:
        s.execute(
            update(RotationRow)
            .where(RotationRow.id == in_grace.id)
            .values(grace_until=utcnow() - timedelta(seconds=1))
        )
    resumed = cli("resume")
    assert resumed.exit_code == 0, resumed.output
    assert rotations_of(store, NAME)[-1].state == RotationState.COMPLETED.value
    [second_key] = _key_ids(app)
    assert second_key != first_key, "the old keyId was removed"
    assert _signs_in(graph, tls, app.app_id, second_secret)
    assert not _signs_in(graph, tls, app.app_id, first_secret)
    rows = versions(store, NAME)
    assert [r.status for r in rows] == ["revoked", "current"]
    assert [r.attributes["key_id"] for r in rows] == [first_key, second_key]

    export = cli("audit", "export", "--format", "jsonl")
    assert export.exit_code == 0
    assert first_key in export.output
    for row in rows:
        assert row.fingerprint in export.output
    for secret in (first_secret, second_secret, ADMIN_SECRET):
        assert secret not in export.output


def test_rotation_with_no_grace_leaves_one_secret_which_signs_in(
    graph: GraphDouble,
    tls: TlsFiles,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, tls, app))).exit_code == 0
    assert cli("rotate", NAME).exit_code == 0
    [first_key] = _key_ids(app)
    rotated = cli("rotate", NAME, "--grace", "0s")
    assert rotated.exit_code == 0, rotated.output
    [second_key] = _key_ids(app)
    assert second_key != first_key
    assert _signs_in(graph, tls, app.app_id, _published(tmp_path))
    assert [r.state for r in rotations_of(store, NAME)] == ["completed", "completed"]


def test_crash_after_add_password_leaves_exactly_one_secret_of_the_rotation_after_resume(
    graph: GraphDouble,
    tls: TlsFiles,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, tls, app))).exit_code == 0
    assert cli("rotate", NAME).exit_code == 0
    [first_key] = _key_ids(app)
    # Entra ID as it is: the resumed rotation's fresh secret signs in only after a while,
    # and the removed one keeps signing in for a while (real seconds: two processes).
    graph.sign_in_delay, graph.removal_delay = 2, 1

    crashed = run_subprocess(
        ["rotate", NAME, "--grace", "0s"], {**env, "KEYSHIFT_TEST_CRASH_AT": "creating:issuer"}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    [orphan] = [p for p in app.passwords if p.key_id != first_key]
    assert orphan.display_name
    assert orphan.display_name.startswith("keyshift ")

    resumed = run_subprocess(["resume"], env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert rotations_of(store, NAME)[-1].state == RotationState.COMPLETED.value
    [kept] = app.passwords
    assert kept.display_name == orphan.display_name, "one secret of that rotation"
    assert kept.key_id not in (first_key, orphan.key_id), "the crashed attempt's was removed"
    assert _signs_in(graph, tls, app.app_id, _published(tmp_path))
    journal = steps(store, rotations_of(store, NAME)[-1].id)
    [proving] = [s for s in journal if s.name == "proving"]
    assert proving.detail["attempts"] > 1, "the fresh secret was proven once it replicated"
    assert versions(store, NAME)[-1].attributes["key_id"] == kept.key_id


def test_graph_throttling_is_waited_out_on_the_context_clock_and_the_rotation_completes(
    graph: GraphDouble,
    tls: TlsFiles,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    assert Cli(env)("apply", "-f", str(_estate(tmp_path, graph, tls, app))).exit_code == 0
    graph.throttle(3, retry_after=2)
    clock = FakeClock()
    _, state = asyncio.run(rotations.rotate(store, NAME, actor="test", context=clock.context(env)))
    assert state == RotationState.COMPLETED
    assert clock.sleeps.count(2.0) >= 3
    assert sum(clock.sleeps) >= 2
    assert len(app.passwords) == 1
    assert _signs_in(graph, tls, app.app_id, _published(tmp_path))


def test_two_rotations_complete_while_entra_replicates_new_secrets_and_removals_slowly(
    graph: GraphDouble,
    tls: TlsFiles,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    """A new secret signs in only 5 s after addPassword and a removed one for 3 s after
    removePassword: the engine proves each new secret before any consumer gets it and
    proves the removed one refused, waiting on the clock the double's delays run on."""
    assert Cli(env)("apply", "-f", str(_estate(tmp_path, graph, tls, app))).exit_code == 0
    clock = FakeClock()
    graph.monotonic = lambda: clock.now().timestamp()
    graph.sign_in_delay, graph.removal_delay = 5, 3

    def rotate() -> RotationState:
        _, state = asyncio.run(
            rotations.rotate(store, NAME, actor="test", context=clock.context(env))
        )
        return state

    assert rotate() == RotationState.COMPLETED
    first_secret = _published(tmp_path)
    assert rotate() == RotationState.GRACE
    assert len(app.passwords) == 2, "old and new secret are both valid during grace"
    second_secret = _published(tmp_path)
    assert _signs_in(graph, tls, app.app_id, second_secret)

    clock.advance(timedelta(hours=1))
    [(_, _, final)] = asyncio.run(rotations.resume(store, actor="test", context=clock.context(env)))
    assert final == RotationState.COMPLETED
    assert len(app.passwords) == 1
    assert _signs_in(graph, tls, app.app_id, second_secret)
    assert not _signs_in(graph, tls, app.app_id, first_secret)
    assert [r.state for r in rotations_of(store, NAME)] == ["completed", "completed"]
    for rotation in rotations_of(store, NAME):
        [proving] = [s for s in steps(store, rotation.id) if s.name == "proving"]
        assert proving.detail["attempts"] > 1, "the first sign-ins were refused as not yet"
        assert proving.detail["waited_s"] >= 5
    [revoking] = [s for s in steps(store, rotations_of(store, NAME)[-1].id) if s.name == "revoking"]
    assert revoking.detail["revocation_proof"].startswith("refused")
    assert revoking.detail["waited_s"] >= 3


def test_rotations_on_one_context_sign_keyshift_in_once_and_a_refused_token_is_fetched_again(
    graph: GraphDouble,
    tls: TlsFiles,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    """A worker's rotations share keyshift's own token (`keyshift.tokens`) as one
    credential would, while each new secret still signs in for itself; a token Graph
    refuses (401) is dropped, so the next rotation signs in again."""
    assert Cli(env)("apply", "-f", str(_estate(tmp_path, graph, tls, app))).exit_code == 0
    clock = FakeClock()
    context = clock.context(env)

    def rotate() -> RotationState:
        _, state = asyncio.run(rotations.rotate(store, NAME, actor="test", context=context))
        clock.advance(timedelta(hours=1))  # past grace; the token lives in real time
        asyncio.run(rotations.resume(store, actor="test", context=context))
        return state

    issued = graph.tokens_issued
    for _ in range(3):
        assert rotate() in (RotationState.COMPLETED, RotationState.GRACE)
    assert graph.tokens_of(graph.client_id) == 1
    assert graph.tokens_issued - issued > 3, "each new secret signed in to prove itself"

    graph.revoke_tokens(graph.client_id)
    # The held token is now unknown to Graph: its 401 fails that rotation's preflight.
    _, state = asyncio.run(rotations.rotate(store, NAME, actor="test", context=context))
    assert state == RotationState.FAILED
    assert graph.tokens_of(graph.client_id) == 0
    assert rotate() in (RotationState.COMPLETED, RotationState.GRACE)
    assert graph.tokens_of(graph.client_id) == 1, "signed in again after the refusal"


# --- preflight ------------------------------------------------------------------------------


def _preflight(graph: GraphDouble, app_id: str, secret: str = ADMIN_SECRET) -> PreflightResult:
    context = PluginContext(
        env={ADMIN_ENV: secret},
        integrations={"contoso": EntraIntegration.model_validate(graph.integration(ADMIN_ENV))},
    )
    provider = EntraSecretProvider(EntraSecretConfig(integration="contoso", app_id=app_id), context)

    async def check() -> PreflightResult:
        try:
            return await provider.preflight(PreflightRequest(NAME))
        finally:
            await provider.aclose()

    return asyncio.run(check())


def test_preflight_is_ready_with_application_readwrite_all_and_writes_nothing(
    graph: GraphDouble, app: StoredApplication
) -> None:
    graph.seed_password(app, "by hand", start=utcnow(), end=utcnow() + timedelta(days=30))
    before = _key_ids(app)

    result = _preflight(graph, app.app_id)

    assert result.readiness == Readiness.READY, result.reason
    assert f"signed in to tenant {graph.tenant_id}" in result.reason
    assert "granted Application.ReadWrite.All" in result.reason
    assert f"application payments-api ({app.app_id}) holds 1 client secret(s)" in result.reason
    assert "owner" not in result.reason
    assert _key_ids(app) == before
    assert graph.graph_requests("POST") == []


def test_preflight_with_owned_by_only_is_ready_and_says_keyshift_must_own_the_app(
    graph: GraphDouble, app: StoredApplication
) -> None:
    graph.roles = {"Application.ReadWrite.OwnedBy"}

    result = _preflight(graph, app.app_id)

    assert result.readiness == Readiness.READY, result.reason
    assert "granted Application.ReadWrite.OwnedBy" in result.reason
    assert "keyshift must be an owner of the application" in result.reason


def test_preflight_without_a_write_permission_is_blocked_before_reading_graph(
    graph: GraphDouble, app: StoredApplication
) -> None:
    graph.roles = {"Application.Read.All"}

    result = _preflight(graph, app.app_id)

    assert result.readiness == Readiness.BLOCKED
    assert "lacks the Graph application permission Application.ReadWrite.OwnedBy" in result.reason
    assert "(granted: Application.Read.All)" in result.reason
    assert graph.graph_requests() == []


def test_preflight_of_an_unknown_app_id_is_blocked_naming_it(
    graph: GraphDouble, app: StoredApplication
) -> None:
    result = _preflight(graph, "00000000-0000-4000-8000-0000000000ff")

    assert result.readiness == Readiness.BLOCKED
    assert "no application with appId 00000000-0000-4000-8000-0000000000ff" in result.reason
    assert graph.graph_requests("POST") == []


def test_preflight_when_entra_refuses_keyshift_is_blocked_with_the_aadsts_code(
    graph: GraphDouble, app: StoredApplication
) -> None:
    wrong = "not-the-admin-secret"

    result = _preflight(graph, app.app_id, secret=wrong)

    assert result.readiness == Readiness.BLOCKED
    assert "AADSTS7000215" in result.reason
    assert wrong not in result.reason
    assert graph.graph_requests() == []
