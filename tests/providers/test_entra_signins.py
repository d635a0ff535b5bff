"""Residual use of an Entra client secret, from Entra ID's sign-in log: the grace period
lasts while sign-ins with the old keyId keep arriving, against the Graph double through
azure-identity and httpx, on a fake clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.estate import Policy, ResidualUse
from keyshift.domain.secret import Secret
from keyshift.domain.states import RotationState
from keyshift.errors import PermanentError
from keyshift.providers.base import (
    Capability,
    IssuedVersion,
    PreflightRequest,
    PreflightResult,
    Readiness,
    UsageReport,
    UsageRequest,
)
from keyshift.providers.entra import EntraSecretConfig, EntraSecretProvider
from keyshift.providers.graph import GraphRequestFailed
from keyshift.service import rotations
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli
from tests.doubles.graph import GraphDouble, StoredApplication
from tests.helpers import entra_estate, rotations_of, steps, versions

NAME = "payments-entra"
ROLES = {"Application.ReadWrite.All", "AuditLog.Read.All"}
GATE = {"check_every": "30s", "quiet_for": "10m", "on_timeout": "fail"}
LOOKBACK = timedelta(minutes=15)


@pytest.fixture
def backend() -> str:
    """keyshift's own store: SQLite is enough here; the store suite covers PostgreSQL."""
    return "sqlite"


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    return ks_env


@pytest.fixture
def app(graph: GraphDouble) -> StoredApplication:
    graph.roles = set(ROLES)
    return graph.add_application("payments-api")


@pytest.fixture
def clock() -> FakeClock:
    # Real time as the start: the double checks secrets' validity on the real clock.
    return FakeClock(start=datetime.now(UTC).replace(microsecond=0))


def _estate(
    tmp: Path,
    graph: GraphDouble,
    app: StoredApplication,
    *,
    grace: str = "1d",
    gate: dict[str, str] | None = None,
    adopt: str | None = None,
) -> Path:
    provider: dict[str, Any] = {"sign_in_lookback": "15m"}
    if adopt is not None:
        provider["adopt_existing"] = adopt
    return entra_estate(
        tmp,
        graph.integration(ADMIN_ENV),
        app.app_id,
        policy={"grace_period": grace, "residual_use": gate or GATE},
        provider=provider,
    )


def _apply(env: dict[str, str], path: Path) -> None:
    result = Cli(env)("apply", "-f", str(path))
    assert result.exit_code == 0, result.output


def _rotate(store: Store, context: PluginContext) -> RotationState:
    _, state = asyncio.run(rotations.rotate(store, NAME, actor="test", context=context))
    return state


def _resume(store: Store, context: PluginContext) -> RotationState:
    asyncio.run(rotations.resume(store, actor="worker", context=context))
    return RotationState(rotations_of(store, NAME)[-1].state)


def _evidence(store: Store) -> dict[str, Any]:
    evidence = rotations_of(store, NAME)[-1].residual
    assert evidence is not None
    return dict(evidence)


def _provider(
    graph: GraphDouble, app: StoredApplication, clock: FakeClock, **config: Any
) -> EntraSecretProvider:
    context = PluginContext(
        now=clock.now,
        sleep=clock.sleep,
        env={ADMIN_ENV: ADMIN_SECRET},
        integrations={"contoso": EntraIntegration.model_validate(graph.integration(ADMIN_ENV))},
    )
    return EntraSecretProvider(
        EntraSecretConfig(integration="contoso", app_id=app.app_id, **config), context
    )


def _usage(
    provider: EntraSecretProvider, attributes: dict[str, str], policy: Policy | None = None
) -> UsageReport:
    version = IssuedVersion(f"{provider.config.app_id}:x", Secret(""), attributes)

    async def ask() -> UsageReport:
        try:
            return await provider.residual_use(UsageRequest(NAME, version, policy=policy))
        finally:
            await provider.aclose()

    return asyncio.run(ask())


# --- the provider -------------------------------------------------------------------------


def test_entra_declares_residual_use_and_bounds_the_look_back() -> None:
    provider = EntraSecretProvider(EntraSecretConfig(integration="c", app_id="a"), PluginContext())
    assert Capability.RESIDUAL_USE in provider.capabilities
    assert provider.config.sign_in_lookback == timedelta(hours=2)
    for bad in ("1m", "8d"):
        with pytest.raises(ValidationError, match=r"sign_in_lookback\n.*between 5m .* and 7d"):
            EntraSecretConfig.model_validate(
                {"integration": "c", "app_id": "a", "sign_in_lookback": bad}
            )


def test_counts_only_the_old_key_ids_service_principal_sign_ins_in_the_window_across_pages(
    graph: GraphDouble, app: StoredApplication, clock: FakeClock
) -> None:
    old, new = "0f0f0f0f-0000-4000-8000-000000000001", "0f0f0f0f-0000-4000-8000-000000000002"
    now = clock.now()
    other = graph.add_application("another-api")
    for i in range(1100):  # more than one page of 1,000
        graph.add_sign_in(app, new, at=now - timedelta(seconds=i % 600))
    for i in range(3):
        graph.add_sign_in(app, old, at=now - timedelta(minutes=2 + i), ip_address=f"10.0.0.{i % 2}")
    graph.add_sign_in(app, old, at=now - timedelta(minutes=4), error_code=7000215)
    graph.add_sign_in(app, old.upper(), at=now - timedelta(minutes=5), resource="Key Vault")
    # None of these count: too old, another application, a user's interactive sign-in.
    graph.add_sign_in(app, old, at=now - timedelta(minutes=21))
    graph.add_sign_in(other, old, at=now - timedelta(minutes=1))
    graph.add_sign_in(app, old, at=now - timedelta(minutes=1), event_type="interactiveUser")
    policy = Policy(residual_use=ResidualUse(check_every=timedelta(minutes=5)))

    report = _usage(
        _provider(graph, app, clock, sign_in_lookback="15m"),
        {"key_id": old, "app_id": app.app_id},
        policy,
    )

    assert report.sessions == 5
    detail = report.detail
    assert detail["sign_ins"] == 5
    assert detail["failed_sign_ins"] == 1
    assert detail["window"] == "20m", "the look-back plus the policy's check_every"
    assert detail["since"] == (now - timedelta(minutes=20)).isoformat()
    assert detail["last_sign_in"] == (now - timedelta(minutes=2)).isoformat()
    assert detail["ip_addresses"] == ["10.0.0.0", "10.0.0.1", "10.1.2.3"]
    assert detail["resources"] == ["Key Vault", "Microsoft Graph"]
    assert detail["sign_ins_with_other_secrets"] == 1100
    assert detail["key_ids"] == old
    requests = graph.sign_in_requests()
    assert len(requests) == 2, "two pages, the second through @odata.nextLink"
    [query] = requests[0].query["$filter"]
    assert f"appId eq '{app.app_id}'" in query
    assert "signInEventTypes/any(t: t eq 'servicePrincipal')" in query
    assert requests[0].query["$top"] == ["1000"]
    assert "$skiptoken" in requests[1].query


def test_an_adopted_version_counts_sign_ins_with_each_of_its_key_ids(
    graph: GraphDouble, app: StoredApplication, clock: FakeClock
) -> None:
    first, second, third = (f"0e0e0e0e-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
    now = clock.now()
    for key_id in (first, second, second, third):
        graph.add_sign_in(app, key_id, at=now - timedelta(minutes=1))

    report = _usage(
        _provider(graph, app, clock),
        {"key_ids": f"{first},{second}", "app_id": app.app_id},
    )

    assert report.sessions == 3
    assert report.detail["key_ids"] == f"{first},{second}"
    assert report.detail["sign_ins_with_other_secrets"] == 1
    assert report.detail["window"] == "2h", "the default look-back, no policy given"


def test_a_403_names_audit_log_read_all(
    graph: GraphDouble, app: StoredApplication, clock: FakeClock
) -> None:
    graph.roles = {"Application.ReadWrite.All"}

    with pytest.raises(GraphRequestFailed) as refused:
        _usage(_provider(graph, app, clock), {"key_id": "k", "app_id": app.app_id})

    assert refused.value.status == 403
    message = str(refused.value)
    assert "403 Authorization_RequestDenied" in message
    assert "keyshift needs the Graph application permission AuditLog.Read.All" in message
    assert "Application.ReadWrite" not in message, "not the write permission's advice"
    assert ADMIN_SECRET not in message


def test_throttling_of_the_sign_in_log_is_waited_out_on_the_fake_clock(
    graph: GraphDouble, app: StoredApplication, clock: FakeClock
) -> None:
    graph.add_sign_in(app, "k1", at=clock.now() - timedelta(minutes=1))
    graph.throttle(2, retry_after=3)
    started = clock.now()

    report = _usage(_provider(graph, app, clock), {"key_id": "k1", "app_id": app.app_id})

    assert report.sessions == 1
    assert clock.sleeps == [3.0, 3.0], "Retry-After honoured exactly, on the context's clock"
    assert clock.now() - started == timedelta(seconds=6)
    assert len(graph.sign_in_requests()) == 3


def test_a_version_without_a_key_id_is_refused(
    graph: GraphDouble, app: StoredApplication, clock: FakeClock
) -> None:
    with pytest.raises(PermanentError, match="names no keyId"):
        _usage(_provider(graph, app, clock), {"app_id": app.app_id})
    assert graph.sign_in_requests() == []


# --- preflight ---------------------------------------------------------------------------


def _preflight(graph: GraphDouble, app: StoredApplication, policy: Policy) -> PreflightResult:
    provider = _provider(graph, app, FakeClock(start=datetime.now(UTC)))

    async def check() -> PreflightResult:
        try:
            return await provider.preflight(PreflightRequest(NAME, policy=policy))
        finally:
            await provider.aclose()

    return asyncio.run(check())


def test_preflight_with_residual_use_is_blocked_without_audit_log_read_all(
    graph: GraphDouble, app: StoredApplication
) -> None:
    graph.roles = {"Application.ReadWrite.All"}

    result = _preflight(graph, app, Policy(residual_use=ResidualUse()))

    assert result.readiness == Readiness.BLOCKED
    assert "lacks the Graph application permission AuditLog.Read.All" in result.reason
    assert "residual_use" in result.reason
    assert "(granted: Application.ReadWrite.All)" in result.reason
    assert graph.graph_requests() == []


def test_preflight_with_residual_use_reads_one_sign_in_and_says_what_it_will_read(
    graph: GraphDouble, app: StoredApplication
) -> None:
    result = _preflight(graph, app, Policy(residual_use=ResidualUse()))

    assert result.readiness == Readiness.READY, result.reason
    assert "residual_use reads the sign-in log (AuditLog.Read.All)" in result.reason
    assert "over the last 2h30s" in result.reason
    [probe] = graph.sign_in_requests()
    assert probe.query["$top"] == ["1"]


def test_preflight_without_residual_use_neither_needs_nor_reads_the_sign_in_log(
    graph: GraphDouble, app: StoredApplication
) -> None:
    graph.roles = {"Application.ReadWrite.All"}

    result = _preflight(graph, app, Policy())

    assert result.readiness == Readiness.READY, result.reason
    assert "sign-in log" not in result.reason
    assert graph.sign_in_requests() == []


# --- rotations through the engine -----------------------------------------------------------


def _old_and_new(store: Store) -> tuple[str, str]:
    old, new = versions(store, NAME)[-2:]
    return old.attributes["key_id"], new.attributes["key_id"]


def test_grace_lasts_while_the_old_key_signs_in_then_revokes_once_quiet_for_quiet_for(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    _apply(env, _estate(tmp_path, graph, app))
    context = clock.context(env)
    assert _rotate(store, context) == RotationState.COMPLETED, "first issuance: no grace"
    [first_key] = [p.key_id for p in app.passwords]
    graph.add_sign_in(app, first_key, at=clock.now(), ip_address="10.9.8.7")

    assert _rotate(store, context) == RotationState.GRACE
    old_key, new_key = _old_and_new(store)
    assert old_key == first_key
    assert _evidence(store)["last_sessions"] == 1

    # A consumer still on the old secret signs in every minute for 30 minutes; the log
    # shows each sign-in three minutes late.
    last_sign_in = clock.now()
    for _ in range(30):
        clock.advance(timedelta(minutes=1))
        last_sign_in = clock.now() - timedelta(minutes=3)
        graph.add_sign_in(app, old_key, at=last_sign_in, ip_address="10.9.8.7")
        assert _resume(store, context) == RotationState.GRACE
    assert old_key in [p.key_id for p in app.passwords]
    assert graph.removed_key_ids == []
    evidence = _evidence(store)
    # One a minute, 3 to 15 minutes old: the 15m look-back plus the 30s check_every.
    assert evidence["last_sessions"] == 13
    provider = evidence["last_detail"]["provider"]
    assert provider["key_ids"] == old_key
    assert provider["ip_addresses"] == ["10.9.8.7"]
    assert provider["last_sign_in"] == last_sign_in.isoformat()

    # The consumer moved to the new secret: only the new keyId signs in from now on.
    state = RotationState.GRACE
    while state == RotationState.GRACE:
        clock.advance(timedelta(minutes=1))
        graph.add_sign_in(app, new_key, at=clock.now() - timedelta(minutes=3))
        state = _resume(store, context)
        assert clock.now() - last_sign_in < timedelta(hours=1), "never revoked"

    assert state == RotationState.COMPLETED
    quiet_after = clock.now() - last_sign_in
    # Seen by the checks (one a minute here) until it left the window of the look-back
    # plus check_every, then unused for quiet_for.
    assert LOOKBACK + timedelta(minutes=10) <= quiet_after
    assert quiet_after <= LOOKBACK + timedelta(seconds=30) + timedelta(minutes=11)
    assert graph.removed_key_ids == [old_key], "the old secret removed once"
    assert [p.key_id for p in app.passwords] == [new_key]
    rotation = rotations_of(store, NAME)[-1]
    [revoking] = [s for s in steps(store, rotation.id) if s.name == "revoking"]
    evidence = revoking.detail["residual_use"]
    assert evidence["outcome"].startswith("unused since")
    assert evidence["last_sessions"] == 0
    assert evidence["max_sessions"] >= 13
    assert evidence["last_detail"]["provider"]["sign_ins_with_other_secrets"] > 0


def test_sign_ins_with_the_new_key_id_do_not_hold_the_old_secret(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    _apply(env, _estate(tmp_path, graph, app))
    context = clock.context(env)
    assert _rotate(store, context) == RotationState.COMPLETED
    assert _rotate(store, context) == RotationState.GRACE
    old_key, new_key = _old_and_new(store)
    entered = clock.now()

    state = RotationState.GRACE
    while state == RotationState.GRACE:
        clock.advance(timedelta(minutes=1))
        graph.add_sign_in(app, new_key, at=clock.now())
        state = _resume(store, context)

    assert state == RotationState.COMPLETED
    assert clock.now() - entered == timedelta(minutes=10), "quiet from the first check on"
    assert graph.removed_key_ids == [old_key]
    evidence = rotations_of(store, NAME)[-1].residual
    assert evidence is not None
    assert evidence["max_sessions"] == 0


def test_on_timeout_fail_ends_needs_attention_and_keeps_the_old_secret(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    _apply(env, _estate(tmp_path, graph, app, grace="20m"))
    context = clock.context(env)
    assert _rotate(store, context) == RotationState.COMPLETED
    assert _rotate(store, context) == RotationState.GRACE
    old_key, new_key = _old_and_new(store)

    state = RotationState.GRACE
    for _ in range(25):
        clock.advance(timedelta(minutes=1))
        graph.add_sign_in(app, old_key, at=clock.now() - timedelta(minutes=2))
        state = _resume(store, context)
        if state != RotationState.GRACE:
            break

    assert state == RotationState.NEEDS_ATTENTION
    assert graph.removed_key_ids == []
    assert sorted(p.key_id for p in app.passwords) == sorted([old_key, new_key])
    rotation = rotations_of(store, NAME)[-1]
    assert rotation.error is not None
    assert "still in use" in rotation.error
    assert "residual_use.on_timeout: fail" in rotation.error
    assert [v.status for v in versions(store, NAME)][-2:] == ["previous", "current"]


def test_without_audit_log_read_all_in_grace_the_check_fails_naming_it_and_nothing_is_revoked(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    _apply(env, _estate(tmp_path, graph, app))
    context = clock.context(env)
    assert _rotate(store, context) == RotationState.COMPLETED
    assert _rotate(store, context) == RotationState.GRACE
    graph.roles = {"Application.ReadWrite.All"}  # the permission was withdrawn in grace
    # A token carries the roles it was issued with: the withdrawal shows in the next one,
    # which a worker started since signs in for (the context keeps keyshift's tokens).
    context = clock.context(env)

    for _ in range(15):
        clock.advance(timedelta(minutes=1))
        assert _resume(store, context) == RotationState.GRACE

    evidence = _evidence(store)
    assert "AuditLog.Read.All" in evidence["last_error"]
    assert evidence["last_sessions"] >= 1, "a failed check counts as in use"
    assert graph.removed_key_ids == []


def test_an_adopted_old_version_is_held_by_sign_ins_with_any_of_its_key_ids(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    now = clock.now()
    hand = [
        graph.seed_password(
            app, f"portal {i}", start=now - timedelta(days=30), end=now + timedelta(days=30)
        ).key_id
        for i in (1, 2)
    ]
    _apply(env, _estate(tmp_path, graph, app, adopt="retire"))
    context = clock.context(env)
    graph.add_sign_in(app, hand[0], at=now - timedelta(minutes=1))
    graph.add_sign_in(app, hand[1], at=now - timedelta(minutes=2))

    assert _rotate(store, context) == RotationState.GRACE
    provider = _evidence(store)["last_detail"]["provider"]
    assert provider["key_ids"] == ",".join(sorted(hand))
    assert provider["sign_ins"] == 2

    # Only the second hand-made secret is still used, until it too falls quiet.
    state = RotationState.GRACE
    for _ in range(10):
        clock.advance(timedelta(minutes=1))
        graph.add_sign_in(app, hand[1], at=clock.now())
        assert _resume(store, context) == RotationState.GRACE
    assert _evidence(store)["last_sessions"] >= 10
    last = clock.now()
    while state == RotationState.GRACE:
        clock.advance(timedelta(minutes=1))
        state = _resume(store, context)

    assert state == RotationState.COMPLETED
    assert clock.now() - last >= LOOKBACK + timedelta(minutes=10)
    assert sorted(graph.removed_key_ids) == sorted(hand), "each adopted secret removed once"
