"""`enabled: false` on a credential: kept with its versions and history, shown as
disabled, and no rotation starts (CLI, API, dashboard, worker) until it is enabled
again; governance says why, and the refusal is audited."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from keyshift.domain.clock import utcnow
from keyshift.service import rotations, scheduler
from keyshift.service.estate import parse_estate
from keyshift.store.store import Store
from tests.api.conftest import open_api
from tests.conftest import Cli
from tests.helpers import audit_details, write_estate
from tests.web.conftest import sign_in


def _estate(tmp: Path, *, enabled: bool) -> Path:
    path = write_estate(tmp)
    estate = json.loads(path.read_text())
    estate["credentials"][0].update({"enabled": enabled, "auto_rotate": True})
    path.write_text(json.dumps(estate))
    return path


def test_a_disabled_credential_is_kept_shown_and_rotated_by_nobody(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path, enabled=True))).exit_code == 0
    assert cli("rotate", "api-key", "--grace", "0s").exit_code == 0
    assert cli("apply", "-f", str(_estate(tmp_path, enabled=False))).exit_code == 0

    [row] = rotations.status_rows(store, now=utcnow())
    assert (row.next_rotation, row.next_rotation_at) == ("disabled", None)
    assert row.version_id is not None  # its current version is kept
    assert "disabled" in cli("status").output
    assert scheduler.due_for_rotation(store, now=utcnow()) == []

    refused = cli("rotate", "api-key")
    assert refused.exit_code == 1, refused.output
    assert "disabled in the estate (enabled: false)" in refused.output
    [audited] = audit_details(store, "rotation.refused")
    assert audited["reasons"] == ["api-key is disabled in the estate (enabled: false)"]
    for api in open_api(store):
        answer = api.call("POST", "/v1/credentials/api-key/rotations", json={}, role="operator")
        assert answer.status_code == 409, answer.text
        assert answer.json()["code"] == "policy-refused"
        plan_hash = rotations.current_plan_hash(store, "api-key")
        page = sign_in(api, "operator").post(
            "/credentials/api-key/rotate", {"reason": "x", "plan_hash": plan_hash, "confirm": "yes"}
        )
        assert page.status_code == 409, page.text
        assert 'data-code="policy-refused"' in page.text
        assert "disabled in the estate" in page.text
    assert len(rotations.history_rows(store, "api-key")) == 1

    assert cli("apply", "-f", str(_estate(tmp_path, enabled=True))).exit_code == 0
    assert cli("rotate", "api-key", "--grace", "0s").exit_code == 0
    assert len(rotations.history_rows(store, "api-key")) == 2
    passes = asyncio.run(scheduler.worker_pass(store, actor="worker"))
    assert passes["started"] == 0  # current and far from expiry: not due


def _through_integrations(tmp: Path, *, enabled: bool) -> Path:
    """A postgres credential and an entra integration, both unreachable (port 1): any
    call to either fails, so a disabled one shows it was not called."""
    path = write_estate(
        tmp,
        name="app-db",
        provider={
            "type": "postgres",
            "strategy": "single_user",
            "user": "app",
            "integration": "app-db-admin",
        },
    )
    estate = json.loads(path.read_text())
    estate["credentials"][0]["auto_rotate"] = True
    estate["integrations"] = [
        {
            "name": "app-db-admin",
            "type": "postgres",
            "dsn": "postgresql://admin@127.0.0.1:1/app",
            "password_from": "env:NO_SUCH_PASSWORD",
            "enabled": enabled,
        },
        {
            "name": "contoso",
            "type": "entra",
            "tenant_id": "11111111-2222-3333-4444-555555555555",
            "client_id": "keyshift-client",
            "auth": {"method": "client_secret", "secret_from": "env:NO_SUCH_SECRET"},
            "graph_url": "https://127.0.0.1:1/v1.0",
            "enabled": enabled,
        },
    ]
    path.write_text(json.dumps(estate))
    return path


def test_a_disabled_integration_is_not_called_and_its_credentials_are_disabled(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(_through_integrations(tmp_path, enabled=True))).exit_code == 0
    [before] = rotations.status_rows(store, now=utcnow())
    assert before.next_rotation == "due"
    # Enabled, the unreachable integrations are called, and fail.
    assert cli("entra", "sync").exit_code == 1
    assert cli("preflight", "app-db").exit_code == 1

    planned = cli("plan", "-f", str(_through_integrations(tmp_path, enabled=False)))
    assert "~ integration" in planned.output, planned.output
    applied = cli("apply", "-f", str(tmp_path / "estate.yaml"))
    assert applied.exit_code == 0, applied.output

    [row] = rotations.status_rows(store, now=utcnow())
    assert (row.next_rotation, row.next_rotation_at) == ("disabled", None)
    assert "disabled" in cli("status").output
    assert scheduler.due_for_rotation(store, now=utcnow()) == []
    refused = cli("rotate", "app-db")
    assert refused.exit_code == 1, refused.output
    why = "integration app-db-admin is disabled in the estate (enabled: false)"
    assert why in refused.output
    [audited] = audit_details(store, "rotation.refused")
    assert any(why in r for r in audited["reasons"])
    preflight = cli("preflight", "app-db", "-o", "json")
    assert preflight.exit_code == 1
    [step] = json.loads(preflight.output)["steps"]
    assert (step["readiness"], why in step["reason"]) == ("blocked", True)

    synced = cli("entra", "sync")
    assert synced.exit_code == 0, synced.output  # contoso is skipped, not called
    only = cli("entra", "sync", "--integration", "contoso")
    assert only.exit_code == 1
    assert "disabled" in only.output
    tested = cli("integrations", "test", "contoso")
    assert tested.exit_code == 1
    assert "disabled" in tested.output
    for api in open_api(store):
        answer = api.call("POST", "/v1/credentials/app-db/rotations", json={}, role="operator")
        assert answer.status_code == 409, answer.text
        assert any(why in r for r in answer.json()["reasons"])

    assert cli("apply", "-f", str(_through_integrations(tmp_path, enabled=True))).exit_code == 0
    [again] = rotations.status_rows(store, now=utcnow())
    assert again.next_rotation == "due"


def test_an_enabled_integration_is_stored_as_before_enabled_existed(tmp_path: Path) -> None:
    """`enabled: true` (the default) leaves the stored integration and the credential's
    digest as they were, so an estate applied before keeps applying with no change."""
    path = _through_integrations(tmp_path, enabled=True)
    estate = parse_estate(json.loads(path.read_text()))
    assert all("enabled" not in i.model_dump(mode="json") for i in estate.integrations)
    disabled = parse_estate(json.loads(_through_integrations(tmp_path, enabled=False).read_text()))
    assert all(i.model_dump(mode="json")["enabled"] is False for i in disabled.integrations)
