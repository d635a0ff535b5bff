"""`enabled: false` on a credential: kept with its versions and history, shown as
disabled, and no rotation starts (CLI, API, dashboard, worker) until it is enabled
again; governance says why, and the refusal is audited."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from keyshift.domain.clock import utcnow
from keyshift.service import rotations, scheduler
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
