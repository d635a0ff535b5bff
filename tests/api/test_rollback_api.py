"""`POST /v1/rotations/{id}/rollback` and the `policy-refused` problem: an operator rolls
back a bad new version over the API; governance refusals carry their reasons."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keyshift.domain.clock import utcnow
from keyshift.store.models import RotationRow
from tests.api.conftest import Api
from tests.api.test_api import _final, _problem, _running_here
from tests.helpers import audit_details, json_value, rotations_of, versions, write_estate

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

REASON = "the new key is refused by the payment gateway"


def _estate(tmp_path: Path, governance: dict[str, Any] | None = None) -> dict[str, Any]:
    estate: dict[str, Any] = json.loads(write_estate(tmp_path).read_text())
    if governance is not None:
        estate["governance"] = governance
    return estate


def _in_grace(api: Api, tmp_path: Path) -> tuple[str, str]:
    """(the completed first rotation, the second one, waiting in grace and not running)."""
    api.call("POST", "/v1/estate/apply", json=_estate(tmp_path))
    first = api.call("POST", "/v1/credentials/api-key/rotations", json={"grace": "0s"})
    first_id = first.json()["rotation_id"]
    assert api.wait_for(first_id, _final)["state"] == "completed"
    second = api.call("POST", "/v1/credentials/api-key/rotations", json={"grace": "1h"})
    rotation_id = second.json()["rotation_id"]
    assert api.wait_for(rotation_id, lambda r: r["state"] == "grace")["state"] == "grace"
    deadline = time.monotonic() + 10
    while rotation_id in _running_here(api) and time.monotonic() < deadline:
        time.sleep(0.05)  # the background run stops at grace and releases its lease
    return first_id, rotation_id


def test_a_rotator_rolls_back_a_rotation_in_grace_over_the_api(api: Api, tmp_path: Path) -> None:
    first_id, rotation_id = _in_grace(api, tmp_path)
    old, _new = versions(api.store, "api-key")
    old_value = api.store.reveal(old).reveal()

    no_reason = api.call("POST", f"/v1/rotations/{rotation_id}/rollback", json={})
    assert _problem(no_reason, 422, "invalid-request")["problems"][0]["path"] == "body.reason"
    assert rotations_of(api.store, "api-key")[-1].state == "grace", "nothing changed"

    response = api.call(
        "POST", f"/v1/rotations/{rotation_id[:8]}/rollback", role="rotator", json={"reason": REASON}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["state"]) == (rotation_id, "rolled_back")
    assert body["error"] == f"rolled back by rotator-1: {REASON}"
    undone = [s["name"] for s in body["steps"] if s["name"].startswith("rollback:")]
    assert undone == [
        "rollback:publishing:20:file",
        "rollback:publishing:10:file",
        "rollback:reloading:30:command",
    ]
    assert json_value(tmp_path / "app.json") == old_value
    assert [v.status for v in versions(api.store, "api-key")] == ["current", "disabled"]
    [decision] = audit_details(api.store, "rotation.rollback")
    assert (decision["by"], decision["reason"]) == ("rotator-1", REASON)
    assert old_value not in response.text
    evidence = api.call("GET", f"/v1/rotations/{rotation_id}/evidence", role="auditor").json()
    assert evidence["rollback"]["reason"] == REASON
    verified = api.call("POST", "/v1/evidence/verify", role="auditor", json=evidence).json()
    assert verified["ok"] is True, verified

    again = api.call("POST", f"/v1/rotations/{rotation_id}/rollback", json={"reason": REASON})
    assert "already rolled back" in _problem(again, 409, "rollback-refused")["detail"]
    first = api.call("POST", f"/v1/rotations/{first_id}/rollback", json={"reason": REASON})
    assert "no previous one" in _problem(first, 409, "rollback-refused")["detail"]
    unknown = api.call("POST", "/v1/rotations/nope/rollback", json={"reason": REASON})
    _problem(unknown, 404, "not-found")
    assert len(audit_details(api.store, "rotation.rollback")) == 1


def test_a_rollback_of_a_rotation_a_live_worker_holds_is_refused(api: Api, tmp_path: Path) -> None:
    _, rotation_id = _in_grace(api, tmp_path)
    with api.store.transaction() as s:
        row = s.get(RotationRow, rotation_id)
        assert row is not None
        row.lease_owner = "elsewhere/1/abc"
        row.lease_expires_at = utcnow() + timedelta(minutes=5)

    held = api.call("POST", f"/v1/rotations/{rotation_id}/rollback", json={"reason": REASON})

    _problem(held, 409, "lease-held")
    assert rotations_of(api.store, "api-key")[-1].state == "grace"
    assert audit_details(api.store, "rotation.rollback") == []


def test_a_rotation_refused_by_policy_answers_policy_refused_with_the_reasons(
    api: Api, tmp_path: Path
) -> None:
    governance = {"allowlist": {"credentials": ["payments-*"]}}
    api.call("POST", "/v1/estate/apply", json=_estate(tmp_path, governance))

    refused = api.call("POST", "/v1/credentials/api-key/rotations", json={})

    body = _problem(refused, 409, "policy-refused")
    assert len(body["reasons"]) == 1
    assert "api-key is not in the approved inventory" in body["reasons"][0]
    assert body["reasons"][0] in body["detail"]
    assert rotations_of(api.store, "api-key") == [], "nothing requested"
    assert audit_details(api.store, "rotation.refused")[0]["reasons"] == body["reasons"]


def test_the_openapi_document_lists_the_problem_codes_of_the_rotation_routes(api: Api) -> None:
    spec = api.call("GET", "/openapi.json", role=None).json()

    def problem_schema(path: str, status: str) -> dict[str, Any]:
        response = spec["paths"][path]["post"]["responses"][status]
        schema: dict[str, Any] = response["content"]["application/problem+json"]["schema"]
        return schema

    start = problem_schema("/v1/credentials/{name}/rotations", "409")
    assert {"policy-refused", "rotation-in-progress"} <= set(start["properties"]["code"]["enum"])
    assert start["properties"]["reasons"]["type"] == "array"
    rollback = problem_schema("/v1/rotations/{rotation_id}/rollback", "409")
    assert set(rollback["properties"]["code"]["enum"]) == {"rollback-refused", "lease-held"}
    forbidden = problem_schema("/v1/rotations/{rotation_id}/rollback", "403")
    assert forbidden["properties"]["code"]["enum"] == ["forbidden"]
    assert "permission" in forbidden["properties"]
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            if path.startswith("/v1/"):
                assert {"401", "403"} <= set(operation["responses"]), path
