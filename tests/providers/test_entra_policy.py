"""Entra ID app management policies: preflight reads the policy in force for the
application (its own, else the tenant default), a `passwordAddition` restriction blocks it,
a `passwordLifetime` restriction caps the secret's lifetime, and a policy keyshift may not
read leaves the refusal to `creating`. Against the local Graph double, which enforces the
policies on addPassword as Entra ID does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.domain.states import RotationState
from keyshift.providers.base import PreflightRequest, PreflightResult, Readiness
from keyshift.providers.entra import EntraSecretConfig, EntraSecretProvider
from keyshift.providers.graph import parse_iso_duration
from keyshift.store.store import Store
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli
from tests.doubles.graph import (
    DEFAULT_POLICY_PATH,
    GraphDouble,
    StoredApplication,
    password_restriction,
)
from tests.helpers import entra_estate, rotations_of, steps, versions

NAME = "payments-entra"
WITH_POLICY_READ = {"Application.ReadWrite.All", "Policy.Read.All"}
TENANT_DEFAULT = "the tenant's default app management policy"


@pytest.fixture
def backend() -> str:
    """keyshift's own store: SQLite is enough here; the store suite covers PostgreSQL."""
    return "sqlite"


@pytest.fixture
def app(graph: GraphDouble) -> StoredApplication:
    created = graph.add_application("payments-api")
    created.created = datetime(2023, 6, 1, tzinfo=UTC)
    return created


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    return ks_env


def _estate(
    tmp: Path, graph: GraphDouble, app: StoredApplication, policy: dict[str, Any] | None = None
) -> Path:
    return entra_estate(tmp, graph.integration(ADMIN_ENV), app.app_id, policy=policy)


def _preflight(graph: GraphDouble, app_id: str, policy: Policy | None = None) -> PreflightResult:
    context = PluginContext(
        env={ADMIN_ENV: ADMIN_SECRET},
        integrations={"contoso": EntraIntegration.model_validate(graph.integration(ADMIN_ENV))},
    )
    provider = EntraSecretProvider(EntraSecretConfig(integration="contoso", app_id=app_id), context)

    async def check() -> PreflightResult:
        try:
            return await provider.preflight(PreflightRequest(NAME, policy=policy or Policy()))
        finally:
            await provider.aclose()

    return asyncio.run(check())


def _policy_reads(graph: GraphDouble, app: StoredApplication) -> list[str]:
    wanted = {DEFAULT_POLICY_PATH, f"/v1.0/applications/{app.id}/appManagementPolicies"}
    return [r.path for r in graph.graph_requests("GET") if r.path in wanted]


def _aware(moment: datetime | None) -> datetime:
    assert moment is not None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- passwordAddition -----------------------------------------------------------------------


def test_a_tenant_default_restricting_password_addition_blocks_preflight_naming_rule_and_policy(
    graph: GraphDouble, app: StoredApplication
) -> None:
    graph.roles = set(WITH_POLICY_READ)
    graph.set_default_policy([password_restriction("passwordAddition")])

    result = _preflight(graph, app.app_id)

    assert result.readiness == Readiness.BLOCKED, result.reason
    assert result.reason == (
        f"{TENANT_DEFAULT} restricts passwordAddition for apps created after 2019-01-01; "
        f"keyshift cannot add a client secret to {app.app_id} (use a certificate, or exempt "
        "the application with an appManagementPolicy)"
    )
    assert not result.transient
    # The app's own policy was looked for first; finding none, the tenant default was read.
    assert _policy_reads(graph, app) == [
        f"/v1.0/applications/{app.id}/appManagementPolicies",
        DEFAULT_POLICY_PATH,
    ]
    assert graph.graph_requests("POST") == []
    assert app.passwords == []


def test_an_apps_own_policy_that_does_not_restrict_overrides_a_restricting_tenant_default(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    graph.roles = set(WITH_POLICY_READ)
    graph.set_default_policy([password_restriction("passwordAddition")])
    exemption = graph.assign_policy(
        app, [password_restriction("passwordAddition", state="disabled")]
    )

    result = _preflight(graph, app.app_id)

    assert result.readiness == Readiness.READY, result.reason
    assert (
        f"the app management policy 'payments exemption' ({exemption['id']}) assigned to the "
        "application does not restrict its client secrets" in result.reason
    )
    assert TENANT_DEFAULT not in result.reason
    assert DEFAULT_POLICY_PATH not in _policy_reads(graph, app), "the default does not apply"

    # Entra ID (the double) agrees: the rotation adds its secret.
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app))).exit_code == 0
    rotated = cli("rotate", NAME)
    assert rotated.exit_code == 0, rotated.output
    assert rotations_of(store, NAME)[-1].state == RotationState.COMPLETED.value
    assert len(app.passwords) == 1


@pytest.mark.parametrize(
    ("created", "readiness"),
    [
        (datetime(2023, 12, 31, 23, 59, tzinfo=UTC), Readiness.READY),
        (datetime(2024, 1, 1, tzinfo=UTC), Readiness.BLOCKED),
        (datetime(2025, 3, 1, tzinfo=UTC), Readiness.BLOCKED),
    ],
    ids=["created-before-the-date", "created-on-the-date", "created-after-the-date"],
)
def test_a_password_addition_restriction_applies_only_to_apps_created_on_or_after_its_date(
    graph: GraphDouble, app: StoredApplication, created: datetime, readiness: Readiness
) -> None:
    graph.roles = set(WITH_POLICY_READ)
    graph.set_default_policy(
        [password_restriction("passwordAddition", created_after="2024-01-01T00:00:00Z")]
    )
    app.created = created

    result = _preflight(graph, app.app_id)

    assert result.readiness == readiness, result.reason
    if readiness == Readiness.READY:
        assert f"{TENANT_DEFAULT} does not restrict its client secrets" in result.reason
    else:
        assert "restricts passwordAddition for apps created after 2024-01-01" in result.reason


def test_a_disabled_tenant_default_restricts_nothing(
    graph: GraphDouble, app: StoredApplication
) -> None:
    graph.roles = set(WITH_POLICY_READ)
    graph.set_default_policy([password_restriction("passwordAddition")], enabled=False)

    result = _preflight(graph, app.app_id)

    assert result.readiness == Readiness.READY, result.reason
    assert f"{TENANT_DEFAULT} does not restrict its client secrets" in result.reason


# --- passwordLifetime -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_lifetime", "asked"),
    [
        ("90d", "90d the rotation would ask for (the policy's max_lifetime)"),
        (None, "730d the rotation would ask for (Graph's default, no max_lifetime)"),
    ],
    ids=["policy-max-lifetime", "graph-default-lifetime"],
)
def test_a_password_lifetime_shorter_than_asked_caps_the_secret_and_its_version_expiry(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
    max_lifetime: str | None,
    asked: str,
) -> None:
    graph.roles = set(WITH_POLICY_READ)
    graph.set_default_policy([password_restriction("passwordLifetime", max_lifetime="P30D")])
    policy: dict[str, Any] = {"grace_period": "1h", "rotate_before_expiry": "7d"}
    if max_lifetime is not None:
        policy["max_lifetime"] = max_lifetime

    result = _preflight(graph, app.app_id, Policy.model_validate(policy))

    assert result.readiness == Readiness.READY, result.reason
    assert (
        f"{TENANT_DEFAULT} limits client secrets to P30D (passwordLifetime for apps created "
        f"after 2019-01-01), shorter than the {asked}: the secret's endDateTime will be "
        "capped at P30D from its creation" in result.reason
    )

    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app, policy))).exit_code == 0
    before = datetime.now(UTC)
    rotated = cli("rotate", NAME)
    after = datetime.now(UTC)
    assert rotated.exit_code == 0, rotated.output
    assert rotations_of(store, NAME)[-1].state == RotationState.COMPLETED.value
    [secret] = app.passwords
    # Capped at 30 days less keyshift's clock-skew margin; not the 90 (or 730) days asked.
    assert before + timedelta(days=30, minutes=-6) <= secret.end <= after + timedelta(days=30)
    [version] = versions(store, NAME)
    assert _aware(version.expires_at) == secret.end
    assert version.attributes["lifetime_cap"] == "P30D"
    assert version.attributes["lifetime_cap_policy"] == TENANT_DEFAULT
    assert version.attributes["key_id"] == secret.key_id


def test_a_rotation_reads_the_policy_once_and_the_next_rotation_reads_a_changed_one(
    graph: GraphDouble, app: StoredApplication, env: dict[str, str], tmp_path: Path
) -> None:
    """Preflight's reading of the policy serves the create that follows it in the same
    rotation; the next rotation reads again, so a policy changed between them applies."""
    graph.roles = set(WITH_POLICY_READ)
    graph.set_default_policy([password_restriction("passwordLifetime", max_lifetime="P30D")])
    policy = {"grace_period": "0s", "rotate_before_expiry": "7d", "max_lifetime": "90d"}
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app, policy))).exit_code == 0

    before = len(_policy_reads(graph, app))
    assert cli("rotate", NAME).exit_code == 0
    assert len(_policy_reads(graph, app)) - before == 2, "the app's policies, then the default"
    [secret] = app.passwords
    assert secret.end is not None
    assert secret.end <= datetime.now(UTC) + timedelta(days=30)

    graph.set_default_policy([password_restriction("passwordLifetime", max_lifetime="P60D")])
    assert cli("rotate", NAME).exit_code == 0
    [secret] = app.passwords
    assert secret.end is not None
    assert secret.end > datetime.now(UTC) + timedelta(days=31)


def test_a_password_lifetime_longer_than_asked_leaves_the_secret_as_asked(
    graph: GraphDouble, app: StoredApplication
) -> None:
    graph.roles = set(WITH_POLICY_READ)
    graph.set_default_policy([password_restriction("passwordLifetime", max_lifetime="P180D")])

    result = _preflight(graph, app.app_id, Policy(max_lifetime=timedelta(days=90)))

    assert result.readiness == Readiness.READY, result.reason
    assert "limits client secrets to P180D" in result.reason
    assert "the rotation asks for 90d" in result.reason
    assert "capped" not in result.reason


def test_a_cap_no_longer_than_rotate_before_expiry_needs_manual_review(
    graph: GraphDouble, app: StoredApplication
) -> None:
    """A 30-day cap with `rotate_before_expiry: 30d` would make each new secret due for
    rotation as soon as it exists: the scheduler would rotate without end."""
    graph.roles = set(WITH_POLICY_READ)
    graph.set_default_policy([password_restriction("passwordLifetime", max_lifetime="P30D")])

    result = _preflight(graph, app.app_id, Policy(max_lifetime=timedelta(days=90)))

    assert result.readiness == Readiness.MANUAL_REVIEW, result.reason
    assert "not longer than rotate_before_expiry (30d)" in result.reason


# --- no Policy.Read.All ---------------------------------------------------------------------


def test_without_policy_read_all_preflight_is_ready_and_names_the_permission(
    graph: GraphDouble, app: StoredApplication
) -> None:
    # The default token holds Application.ReadWrite.All only.
    graph.set_default_policy([password_restriction("passwordAddition")])

    result = _preflight(graph, app.app_id)

    assert result.readiness == Readiness.READY, result.reason
    assert (
        "the app management policy in force could not be read (Graph answered 403 "
        "Authorization_RequestDenied; keyshift needs the Graph application permission "
        "Policy.Read.All to read app management policies), so a restriction on client "
        "secrets would only show at creating" in result.reason
    )
    assert "granted Application.ReadWrite.All" in result.reason
    assert _policy_reads(graph, app) == [f"/v1.0/applications/{app.id}/appManagementPolicies"]
    assert graph.graph_requests("POST") == []


@pytest.mark.parametrize(
    ("restriction", "policy", "expected"),
    [
        (
            password_restriction("passwordAddition"),
            {"grace_period": "1h"},
            "an app management policy's passwordAddition restriction forbids client secrets "
            "on this application (CredentialTypeNotAllowedAsPerAppPolicy: Credential type not "
            "allowed as per assigned policy",
        ),
        (
            password_restriction("passwordLifetime", max_lifetime="P30D"),
            {"grace_period": "1h", "max_lifetime": "90d"},
            "an app management policy's passwordLifetime restriction forbids a client secret "
            "living this long (CredentialInvalidLifetimeAsPerAppPolicy: Credential lifetime "
            "exceeds the max value allowed as per assigned policy",
        ),
    ],
    ids=["password-addition", "password-lifetime"],
)
def test_a_policy_keyshift_may_not_read_fails_the_rotation_at_creating_with_the_rule_named(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
    restriction: dict[str, Any],
    policy: dict[str, Any],
    expected: str,
) -> None:
    graph.set_default_policy([restriction])
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app, policy))).exit_code == 0

    rotated = cli("rotate", NAME)

    assert rotated.exit_code != 0
    [rotation] = rotations_of(store, NAME)
    assert rotation.state == RotationState.FAILED.value
    journal = steps(store, rotation.id)
    preflighted = [s for s in journal if s.name == "preflighted"]
    assert [s.status for s in preflighted][-1:] == ["succeeded"], "preflight could not see it"
    [creating] = [s for s in journal if s.name == "creating"]
    assert creating.error is not None
    assert f"Entra ID refused addPassword on {app.app_id}: {expected}" in creating.error
    assert expected in (rotation.error or "")
    # Nothing was issued, stored or published.
    assert app.passwords == []
    assert [r.path for r in graph.graph_requests("POST")] == [
        f"/v1.0/applications/{app.id}/addPassword"
    ]
    assert versions(store, NAME) == []
    assert not (tmp_path / "appsettings.json").exists()
    assert ADMIN_SECRET not in rotated.output + creating.error


# --- revoke -----------------------------------------------------------------------------------


def test_the_revoke_detail_says_tokens_of_the_removed_secret_stay_valid_up_to_90_minutes(
    graph: GraphDouble, app: StoredApplication, env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app))).exit_code == 0
    assert cli("rotate", NAME).exit_code == 0
    [first] = app.passwords
    assert cli("rotate", NAME, "--grace", "0s").exit_code == 0

    assert graph.removed_key_ids == [first.key_id]
    [revoking] = [s for s in steps(store, rotations_of(store, NAME)[-1].id) if s.name == "revoking"]
    assert revoking.detail["key_id"] == first.key_id
    assert revoking.detail["tokens"] == (
        "access tokens issued with the removed secret stay valid until they expire "
        "(up to 90 minutes)"
    )


# --- reading maxLifetime ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P90D", timedelta(days=90)),
        ("PT12H", timedelta(hours=12)),
        ("P4DT12H30M5S", timedelta(days=4, hours=12, minutes=30, seconds=5)),
        ("P2W", timedelta(days=14)),
        ("P1Y", timedelta(days=365)),
        ("P12M", timedelta(days=12 * 28)),
    ],
)
def test_max_lifetime_is_read_as_its_shortest_possible_length(
    text: str, expected: timedelta
) -> None:
    assert parse_iso_duration(text) == expected


@pytest.mark.parametrize("text", ["", "P", "PT", "P1DT", "90D", "-P1D", "P1.5D"])
def test_max_lifetime_that_is_not_an_iso_8601_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO 8601 duration"):
        parse_iso_duration(text)
