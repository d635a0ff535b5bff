"""`adopt_existing` of `entra_client_secret`: the first rotation of an application that
already holds hand-made client secrets retires them (`retire`) or leaves them (`keep`),
against the Graph double through azure-identity and httpx."""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from keyshift.context import PluginContext
from keyshift.domain.states import Lifecycle, RotationState
from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.engine.rows import ADOPTED_FINGERPRINT
from keyshift.providers.base import Capability
from keyshift.providers.entra import EntraSecretConfig, EntraSecretProvider
from keyshift.service import entra, rotations
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli, run_subprocess
from tests.doubles.graph import GraphDouble, StoredApplication
from tests.helpers import (
    audit_details,
    entra_estate,
    json_value,
    rotations_of,
    steps,
    versions,
)

NAME = "payments-entra"
HAND_SECRET = "hand-made-secret-value-0123456789"
OTHER_HAND_SECRET = "another-hand-made-secret-value-42"


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
    return graph.add_application("payments-api")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _hand_made(graph: GraphDouble, app: StoredApplication, text: str = HAND_SECRET) -> str:
    """A secret added in the portal a year ago, valid another year; returns its keyId."""
    return graph.seed_password(
        app,
        "added in the portal",
        start=_now() - timedelta(days=365),
        end=_now() + timedelta(days=365),
        secret_text=text,
    ).key_id


def _estate(
    tmp: Path,
    graph: GraphDouble,
    app: StoredApplication,
    *,
    adopt: str | None,
    fail_reload: bool = False,
) -> Path:
    actions: list[dict[str, Any]] = []
    if fail_reload:
        failing = tmp / "fail.py"
        failing.write_text("import sys; sys.exit(4)\n", encoding="utf-8")
        actions.append(
            {
                "type": "command",
                "order": 20,
                "on_failure": "abort",
                "config": {"argv": [sys.executable, str(failing)]},
            }
        )
    return entra_estate(
        tmp,
        graph.integration(ADMIN_ENV),
        app.app_id,
        provider={"adopt_existing": adopt} if adopt is not None else None,
        actions=actions,
    )


def _apply(env: dict[str, str], path: Path) -> None:
    result = Cli(env)("apply", "-f", str(path))
    assert result.exit_code == 0, result.output


def _key_ids(app: StoredApplication) -> list[str]:
    return [p.key_id for p in app.passwords]


def _step_detail(store: Store, step: str) -> list[dict[str, Any]]:
    return [
        d["detail"]
        for d in audit_details(store, "rotation.step")
        if d["step"] == step and d["outcome"] == "succeeded"
    ]


def test_adopt_existing_defaults_to_keep_and_only_retire_declares_the_capability() -> None:
    context = PluginContext()
    keep = EntraSecretProvider(EntraSecretConfig(integration="c", app_id="a"), context)
    retire = EntraSecretProvider(
        EntraSecretConfig(integration="c", app_id="a", adopt_existing="retire"), context
    )
    assert keep.config.adopt_existing == "keep"
    assert Capability.ADOPTS_EXISTING not in keep.capabilities
    assert Capability.ADOPTS_EXISTING in retire.capabilities
    with pytest.raises(ValidationError, match="'keep' or 'retire'"):
        EntraSecretConfig.model_validate(
            {"integration": "c", "app_id": "a", "adopt_existing": "delete"}
        )


def test_retire_removes_the_hand_made_secret_after_grace_and_audits_its_key_id(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    hand = _hand_made(graph, app)
    _apply(env, _estate(tmp_path, graph, app, adopt="retire"))
    clock = FakeClock(start=_now())
    context = clock.context(env)

    _, state = asyncio.run(rotations.rotate(store, NAME, actor="test", context=context))

    assert state == RotationState.GRACE, "the adopted secret is an old version: grace follows"
    assert len(app.passwords) == 2, "hand-made and keyshift's secret are both valid in grace"
    assert hand in _key_ids(app)
    assert graph.removed_key_ids == []
    adopted, new = versions(store, NAME)
    assert (adopted.status, new.status) == ("previous", "current")
    assert adopted.fingerprint == ADOPTED_FINGERPRINT
    assert adopted.ciphertext is None, "keyshift never held the hand-made value"
    assert adopted.attributes["key_ids"] == hand
    assert adopted.expires_at is not None
    assert rotations_of(store, NAME)[-1].old_version_id == adopted.id
    [created] = _step_detail(store, "creating")
    assert created["adopted_version_id"] == adopted.id
    assert created["adopted_key_ids"] == hand
    assert json_value(tmp_path / "appsettings.json", "Entra:ClientSecret")

    asyncio.run(entra.sync(store, actor="test", context=context))
    [seen] = [c for c in entra.inventory(store, now=clock.now()) if c.key_id == hand]
    assert seen.state == Lifecycle.GRACE_PERIOD
    assert (seen.managed_by, seen.by_keyshift) == (NAME, False)

    clock.advance(timedelta(minutes=59))
    asyncio.run(rotations.resume(store, actor="test", context=context))
    assert hand in _key_ids(app), "not removed before the grace period ends"

    clock.advance(timedelta(minutes=2))
    [(_, _, resumed)] = asyncio.run(rotations.resume(store, actor="test", context=context))

    assert resumed == RotationState.COMPLETED
    assert _key_ids(app) == [new.attributes["key_id"]], "only keyshift's secret remains"
    assert graph.removed_key_ids == [hand], "removed once, by keyId"
    adopted, new = versions(store, NAME)
    assert (adopted.status, new.status) == ("revoked", "current")
    [revoked] = _step_detail(store, "revoking")
    assert revoked["version_id"] == adopted.id
    assert revoked["removed_key_ids"] == hand
    assert revoked["remaining"] == "1"
    assert revoked["revocation_proof"].startswith("not possible by sign-in")

    asyncio.run(entra.sync(store, actor="test", context=context))
    gone = [
        c for c in entra.inventory(store, now=clock.now(), include_removed=True) if c.key_id == hand
    ]
    assert [c.state for c in gone] == [Lifecycle.CLEANED_UP]

    export = Cli(env)("audit", "export", "--format", "jsonl")
    assert export.exit_code == 0
    assert hand in export.output
    published = json_value(tmp_path / "appsettings.json", "Entra:ClientSecret")
    for secret in (HAND_SECRET, published, ADMIN_SECRET):
        assert secret
        assert secret not in export.output


def test_keep_by_default_leaves_the_hand_made_secret_valid(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    hand = _hand_made(graph, app)
    _apply(env, _estate(tmp_path, graph, app, adopt=None))

    _, state = asyncio.run(
        rotations.rotate(store, NAME, actor="test", context=PluginContext(env=env))
    )

    assert state == RotationState.COMPLETED, "a first issuance has nothing to revoke"
    assert hand in _key_ids(app)
    assert len(app.passwords) == 2
    assert graph.removed_key_ids == []
    [new] = versions(store, NAME)
    assert new.status == "current"
    assert audit_details(store, "version.adopted") == []


def test_rollback_of_the_first_rotation_leaves_the_hand_made_secret_and_says_why(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    hand = _hand_made(graph, app)
    _apply(env, _estate(tmp_path, graph, app, adopt="retire", fail_reload=True))

    _, state = asyncio.run(
        rotations.rotate(store, NAME, actor="test", context=PluginContext(env=env))
    )

    assert state == RotationState.ROLLED_BACK
    assert hand in _key_ids(app), "the hand-made secret was never removed"
    assert graph.removed_key_ids == []
    adopted, new = versions(store, NAME)
    assert (adopted.status, new.status) == ("current", "disabled")
    assert adopted.fingerprint == ADOPTED_FINGERPRINT
    [undone] = _step_detail(store, "rollback:publishing:10:file")
    assert undone["previous"] == (
        f"adopted version {adopted.id}: its value was never known to keyshift, "
        "so no previous value was restored"
    )
    assert json_value(tmp_path / "appsettings.json", "Entra:ClientSecret") is None


def test_an_app_without_hand_made_secrets_adopts_nothing(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    _apply(env, _estate(tmp_path, graph, app, adopt="retire"))

    _, state = asyncio.run(
        rotations.rotate(store, NAME, actor="test", context=PluginContext(env=env))
    )

    assert state == RotationState.COMPLETED
    [new] = versions(store, NAME)
    assert new.fingerprint != ADOPTED_FINGERPRINT
    [created] = _step_detail(store, "creating")
    assert created["adopted"] == "nothing to adopt"


CRASHES = ["creating:issuer", "creating", "revoking:issuer", "revoking"]


@pytest.mark.slow
@pytest.mark.parametrize("boundary", CRASHES, ids=lambda b: "killed after " + b)
def test_resume_after_kill_adopts_once_and_removes_each_hand_made_secret_once(
    boundary: str,
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    hand = sorted([_hand_made(graph, app), _hand_made(graph, app, OTHER_HAND_SECRET)])
    _apply(env, _estate(tmp_path, graph, app, adopt="retire"))

    crashed = run_subprocess(["rotate", NAME, "--grace", "0s"], {**env, CRASH_AT: boundary})
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    resumed = run_subprocess(["resume"], env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    [rotation] = rotations_of(store, NAME)
    assert rotation.state == RotationState.COMPLETED.value
    adopted, new = versions(store, NAME)
    assert (adopted.status, new.status) == ("revoked", "current")
    assert adopted.attributes["key_ids"] == ",".join(hand), "keyshift's own secret not adopted"
    assert len(audit_details(store, "version.adopted")) == 1, "adopted once"
    removed = graph.removed_key_ids
    assert sorted(k for k in removed if k in hand) == hand, "each hand-made secret removed"
    assert len(removed) == len(set(removed)), "no keyId removed twice"
    # After a kill between addPassword and storing, the crashed attempt's secret (named
    # with the rotation's marker) is removed too; nothing else is.
    orphans = [k for k in removed if k not in hand]
    assert len(orphans) == (1 if boundary == "creating:issuer" else 0)
    assert _key_ids(app) == [new.attributes["key_id"]]
    succeeded = [s.name for s in steps(store, rotation.id) if s.status == "succeeded"]
    assert succeeded.count("revoking") == 1
