"""Supervised mode, blast radius and evidence over the API: decisions are taken as the
calling principal, the rotation then runs on in the background, and the evidence of what
ran verifies against the audit chain."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keyshift.api.runner import BackgroundRotations
from keyshift.domain.states import RotationState
from keyshift.service import identities
from keyshift.service import impact as impact_service
from keyshift.store.models import AuditEntry
from keyshift.store.store import Store
from tests.api.conftest import Api
from tests.api.test_api import _problem
from tests.engine.test_governance import TWO_OF_THREE
from tests.engine.test_governance import _estate as governed_estate
from tests.helpers import json_value, versions


def _principal(api: Api, name: str, *roles: str) -> None:
    """A user holding `roles`, callable as `api.call(..., role=name)`."""
    identities.add_principal(api.store, name=name, kind="user", roles=list(roles), actor="test")
    issued = identities.create_token(api.store, name, name="t", actor="test")
    api.tokens[name] = issued.token.reveal()


def _supervised(api: Api, tmp_path: Path, policy: dict[str, Any]) -> None:
    """The test estate under `policy`, approvers alice, bob, carol (group platform-oncall),
    rita, an operator, and mallory, an approver outside the group."""
    estate = json.loads(governed_estate(tmp_path, policy=policy).read_text())
    assert api.call("POST", "/v1/estate/apply", json=estate).status_code == 200
    for name in ("alice", "bob", "carol"):
        _principal(api, name, "approver", "operator")
    _principal(api, "rita", "operator")
    _principal(api, "mallory", "approver")


def _start(api: Api, role: str) -> str:
    started = api.call("POST", "/v1/credentials/api-key/rotations", json={}, role=role)
    assert started.status_code == 202, started.text
    rotation_id: str = started.json()["rotation_id"]
    return rotation_id


def _settled(api: Api, rotation_id: str) -> dict[str, Any]:
    """The rotation once no background run of it is left in the server."""
    deadline = time.monotonic() + 30
    while rotation_id in api.client.app.state.rotations.running:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the background run did not end"
        time.sleep(0.05)
    body: dict[str, Any] = api.call("GET", f"/v1/rotations/{rotation_id}").json()
    return body


def _audit(store: Store, action: str) -> list[str]:
    """The actors of every audit entry with this action."""
    with store.transaction() as s:
        rows = s.execute(select(AuditEntry.actor).where(AuditEntry.action == action))
        return list(rows.scalars())


def _only_pending(api: Api) -> dict[str, Any]:
    pending = api.call("GET", "/v1/approvals", role="viewer")
    assert pending.status_code == 200, pending.text
    [request] = pending.json()
    assert isinstance(request, dict)
    return request


def test_the_requester_cannot_approve_their_own_rotation_over_the_api(
    api: Api, tmp_path: Path
) -> None:
    _supervised(api, tmp_path, {"approval": {**TWO_OF_THREE["approval"], "min_approvals": 1}})
    rotation_id = _start(api, "alice")
    assert _settled(api, rotation_id)["state"] == "awaiting_approval"
    request = _only_pending(api)

    refused = api.call(
        "POST", f"/v1/approvals/{request['id']}/approve", json={"comment": "mine"}, role="alice"
    )

    body = _problem(refused, 409, "approval-refused")
    assert "requester cannot approve" in body["detail"]
    assert _only_pending(api)["approvals"] == []
    assert _settled(api, rotation_id)["state"] == "awaiting_approval"
    assert versions(api.store, "api-key") == []
    assert _audit(api.store, "approval.refused") == ["alice"]
    # Someone outside the approvers is refused the same way; a viewer lacks the permission.
    outsider = api.call("POST", f"/v1/approvals/{request['id']}/approve", role="mallory")
    assert (
        "mallory is not one of the approvers"
        in _problem(outsider, 409, "approval-refused")["detail"]
    )
    _problem(
        api.call("POST", f"/v1/approvals/{request['id']}/approve", role="rita"), 403, "forbidden"
    )
    _problem(api.call("POST", "/v1/approvals/000000/approve"), 404, "not-found")


def test_two_of_three_approvers_over_the_api_complete_the_rotation(
    api: Api, tmp_path: Path
) -> None:
    _supervised(api, tmp_path, TWO_OF_THREE)
    rotation_id = _start(api, "rita")
    assert _settled(api, rotation_id)["state"] == "awaiting_approval"
    request = _only_pending(api)
    assert (request["rotation_id"], request["credential"], request["needed"]) == (
        rotation_id,
        "api-key",
        2,
    )
    assert request["requested_by"] == "rita"
    assert any("publishing:10:file" in step for step in request["summary"]["steps"])
    shown = api.call("GET", f"/v1/approvals/{request['id'][:8]}", role="viewer").json()
    assert shown == request

    first = api.call(
        "POST", f"/v1/approvals/{request['id'][:8]}/approve", json={"comment": "ok"}, role="alice"
    )
    assert first.status_code == 202, first.text
    assert first.json() == {
        "request_id": request["id"],
        "rotation_id": rotation_id,
        "decision": "approved",
        "location": f"/v1/rotations/{rotation_id}",
    }
    assert first.headers["Location"] == f"/v1/rotations/{rotation_id}"
    assert _settled(api, rotation_id)["state"] == "awaiting_approval"
    assert versions(api.store, "api-key") == [], "one approval of two changes nothing"
    assert _only_pending(api)["approvals"] == ["alice"]

    second = api.call("POST", f"/v1/approvals/{request['id']}/approve", role="bob")
    assert second.status_code == 202, second.text
    done = api.wait_for(rotation_id, lambda r: r["state"] == "completed")
    assert done["state"] == "completed", done
    assert json_value(tmp_path / "app.json") is not None
    assert api.call("GET", "/v1/approvals").json() == []
    [decided] = api.call("GET", "/v1/approvals", params={"all": "true"}).json()
    assert decided["approvals"] == ["alice", "bob"]
    assert decided["status"] != "pending"
    assert sorted(_audit(api.store, "approval.approved")) == ["alice", "bob"]


def test_a_rejection_over_the_api_fails_the_rotation_and_changes_nothing(
    api: Api, tmp_path: Path
) -> None:
    _supervised(api, tmp_path, TWO_OF_THREE)
    rotation_id = _start(api, "rita")
    assert _settled(api, rotation_id)["state"] == "awaiting_approval"
    request = _only_pending(api)

    rejected = api.call(
        "POST", f"/v1/approvals/{request['id']}/reject", json={"comment": "not now"}, role="carol"
    )

    assert rejected.status_code == 202, rejected.text
    assert rejected.json()["decision"] == "rejected"
    done = api.wait_for(rotation_id, lambda r: r["state"] == "failed")
    assert (done["state"], done["error"]) == ("failed", "rejected by carol: not now")
    assert versions(api.store, "api-key") == []
    assert not (tmp_path / "app.json").exists()
    again = api.call("POST", f"/v1/approvals/{request['id']}/approve", role="bob")
    assert "not pending" in _problem(again, 409, "approval-refused")["detail"]


def test_the_impact_route_lists_the_same_rows_as_the_cli(api: Api, tmp_path: Path) -> None:
    _supervised(api, tmp_path, TWO_OF_THREE)
    rows = api.call("GET", "/v1/credentials/api-key/impact", role="viewer")
    assert rows.status_code == 200, rows.text
    assert rows.json() == impact_service.to_json(impact_service.impact(api.store, "api-key"))
    assert [(r["position"], r["type"]) for r in rows.json()] == [
        (1, "random"),
        (2, "file"),
        (3, "file"),
        (4, "command"),
    ]
    assert rows.json()[1]["where"]["path"] == str(tmp_path / "app.json")
    _problem(api.call("GET", "/v1/credentials/nope/impact"), 404, "not-found")


def test_the_evidence_of_an_approved_rotation_fetched_over_the_api_verifies(
    api: Api, tmp_path: Path
) -> None:
    _supervised(api, tmp_path, TWO_OF_THREE)
    rotation_id = _start(api, "rita")
    assert _settled(api, rotation_id)["state"] == "awaiting_approval"
    request_id = _only_pending(api)["id"]
    for approver in ("alice", "carol"):
        api.call(
            "POST", f"/v1/approvals/{request_id}/approve", json={"comment": "ok"}, role=approver
        )
    assert api.wait_for(rotation_id, lambda r: r["state"] == "completed")["state"] == "completed"

    exported = api.call("GET", f"/v1/rotations/{rotation_id[:8]}/evidence", role="auditor")

    assert exported.status_code == 200, exported.text
    bundle = exported.json()
    assert bundle["format"] == "keyshift-evidence/1"
    assert bundle["rotation"]["id"] == rotation_id
    assert bundle["rotation"]["final_state"] == RotationState.COMPLETED.value
    assert bundle["exported_by"] == "auditor-1"
    assert [(e["action"], e["actor"]) for e in bundle["approvals"]] == [
        ("approval.requested", "rita"),
        ("approval.approved", "alice"),
        ("approval.approved", "carol"),
        ("approval.closed", "carol"),
    ]
    value = json_value(tmp_path / "app.json")
    assert value
    assert value not in exported.text

    verified = api.call("POST", "/v1/evidence/verify", json=bundle, role="auditor").json()
    assert verified["ok"] is True, verified
    assert verified["problem"] is None
    assert verified["entries"] == len(bundle["audit"]["entries"])
    assert verified["chain_entries"] >= verified["entries"]

    entries = bundle["audit"]["entries"]
    approved = next(e for e in entries if e["action"] == "approval.approved")
    approved["details"]["comment"] = "edited after the fact"
    tampered = api.call("POST", "/v1/evidence/verify", json=bundle, role="auditor").json()
    assert tampered["ok"] is False
    assert tampered["problem"] == (
        f"audit entry {approved['seq']} (approval.approved) in the bundle does not match "
        "its hash (edited)"
    )

    malformed = api.call("POST", "/v1/evidence/verify", json={"format": 1}, role="auditor")
    assert malformed.status_code == 200
    assert malformed.json()["ok"] is False
    _problem(api.call("GET", "/v1/rotations/nope/evidence"), 404, "not-found")
    _problem(
        api.call("GET", f"/v1/rotations/{rotation_id}/evidence", role="viewer"), 403, "forbidden"
    )


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_start_during_a_run_runs_the_rotation_once_more_after_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision stored while the rotation runs is not lost: it runs again afterwards."""
    release = threading.Event()
    runs: list[str] = []

    async def fake_run(_store: Store, rotation_id: str, *, actor: str, context: Any) -> Any:
        runs.append(actor)
        if len(runs) == 1:
            await asyncio.to_thread(release.wait, 10)
        return RotationState.AWAITING_APPROVAL

    monkeypatch.setattr("keyshift.api.runner.rotations.run", fake_run)

    async def scenario() -> list[str]:
        runner = BackgroundRotations(store)
        runner.start("r1", actor="rita")
        await asyncio.sleep(0.05)
        runner.start("r1", actor="alice")
        runner.start("r1", actor="bob")  # the later ask wins; one more run, not two
        assert runner.running == ["r1"]
        release.set()
        await runner.drain(10)
        return runner.running

    assert asyncio.run(scenario()) == []
    assert runs == ["rita", "bob"]


def test_a_decision_arriving_as_the_last_run_ends_starts_a_new_run(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run has finished but the loop has not yet run anything else: a decision stored
    # now must start a run of its own, not be queued behind one that is already over.
    runs: list[str] = []

    async def fake_run(_store: Store, rotation_id: str, *, actor: str, context: Any) -> Any:
        runs.append(actor)
        return RotationState.AWAITING_APPROVAL

    async def scenario() -> list[str]:
        runner = BackgroundRotations(store)
        # The run itself in one loop step (no worker thread), so the test can stop just
        # after it.
        monkeypatch.setattr(
            runner, "_run", lambda rid, actor: fake_run(store, rid, actor=actor, context=None)
        )
        runner.start("r1", actor="alice")
        first = runner._tasks["r1"]
        await asyncio.sleep(0)  # the run's one step: it ends here
        assert first.done()
        runner.start("r1", actor="carol")
        await runner.drain(10)
        return runner.running

    assert asyncio.run(scenario()) == []
    assert runs == ["alice", "carol"]
