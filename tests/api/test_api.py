"""The API's use cases: estate, rotations in the background, audit; problem JSON errors;
no response carries a secret value."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keyshift.api import create_app
from keyshift.domain.clock import utcnow
from keyshift.service import rotations
from keyshift.store.db import open_engine
from keyshift.store.models import RotationRow
from keyshift.store.store import Store
from tests.api.conftest import Api, TestClient
from tests.certs import leaf_provider, make_ca, pem_files
from tests.conftest import Cli
from tests.helpers import json_value, write_estate
from tests.web.conftest import sign_in

PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}


def _estate(tmp_path: Path) -> dict[str, Any]:
    """A `random` credential delivered to two files, then a reload command."""
    loaded: dict[str, Any] = json.loads(write_estate(tmp_path).read_text())
    return loaded


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_FIELDS
    assert (body["status"], body["code"], body["type"]) == (
        status,
        code,
        f"urn:keyshift:problem:{code}",
    )
    return body


def test_health_and_readiness_need_no_token(api: Api) -> None:
    assert api.call("GET", "/healthz", role=None).json()["status"] == "ok"
    assert api.call("GET", "/readyz", role=None).json() == {"status": "ready"}
    spec = api.call("GET", "/openapi.json", role=None).json()
    assert "/v1/credentials/{name}/rotations" in spec["paths"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_readiness_fails_when_the_store_is_unreachable(api: Api) -> None:
    gone = Store(
        open_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"),
        api.store.keyring,
        api.store.fingerprinter,
        api.store.home,
        {},
    )
    with TestClient(create_app(gone)) as client:
        _problem(client.get("/readyz"), 503, "store-unavailable")
        assert client.get("/healthz").status_code == 200


def test_a_refused_estate_lists_the_same_problems_as_the_cli(
    api: Api, cli: Cli, tmp_path: Path
) -> None:
    estate = _estate(tmp_path)
    estate["credentials"][0]["provider"] = {"type": "nope"}
    del estate["credentials"][0]["owner"]
    estate["credentials"][0]["actions"][0]["order"] = "first"
    body = _problem(api.call("POST", "/v1/estate/apply", json=estate), 422, "estate-invalid")
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(estate))
    cli_lines = cli("apply", "-f", str(path)).output.strip().splitlines()
    assert [f"error: {p['path']}: {p['message']}" for p in body["problems"]] == cli_lines
    assert api.call("GET", "/v1/credentials").json() == []  # nothing stored


def test_estate_warnings_come_back_as_the_cli_prints_them(api: Api, tmp_path: Path) -> None:
    estate = _estate(tmp_path)
    estate["integrations"] = [
        {
            "name": "billing-host",
            "type": "agent",
            "agent_id": "11111111-1111-1111-1111-111111111111",
            "url": "https://billing-host:8443",
            "key_from": "env:BILLING_AGENT_KEY",
        }
    ]
    estate["credentials"][0]["actions"].append(
        {
            "type": "iis_recycle",
            "order": 40,
            "agent_id": "billing-host",
            "config": {"site_name": "BillingAppPool"},
        }
    )
    expected = ["credentials[0].actions[3].config.site_name: renamed to app_pool"]
    assert api.call("POST", "/v1/estate/plan", json=estate).json()["warnings"] == expected
    applied = api.call("POST", "/v1/estate/apply", json=estate).json()
    assert (applied["applied"], applied["warnings"]) == (True, expected)


def test_credentials_page_by_cursor_with_a_link_to_the_next(api: Api) -> None:
    credentials = [
        {"name": f"svc-{i}", "owner": f"team-{i % 2}", "provider": {"type": "random"}}
        for i in range(5)
    ]
    assert api.call("POST", "/v1/estate/apply", json={"credentials": credentials}).json()["applied"]
    seen, path, links = [], "/v1/credentials?limit=2&owner=team-0", 0
    while path:
        page = api.call("GET", path)
        assert page.status_code == 200, page.text
        seen += [row["credential"] for row in page.json()]
        path = page.links.get("next", {}).get("url")
        links += bool(path)
    assert (seen, links) == (["svc-0", "svc-2", "svc-4"], 1)
    unpaged = [r["credential"] for r in api.call("GET", "/v1/credentials?owner=team-0").json()]
    assert unpaged == seen
    refused = _problem(api.call("GET", "/v1/credentials?cursor=%25%25"), 422, "invalid-request")
    assert refused["problems"][0]["path"] == "cursor"
    by_expiry = _problem(
        api.call("GET", "/v1/credentials?limit=2&sort=expires"), 422, "invalid-request"
    )
    assert by_expiry["problems"][0]["path"] == "sort"
    _problem(api.call("GET", "/v1/credentials?limit=501"), 422, "invalid-request")


def test_problem_json_for_not_found_conflict_lease_and_bad_input(api: Api, tmp_path: Path) -> None:
    _problem(api.call("GET", "/v1/credentials/missing"), 404, "not-found")
    _problem(api.call("GET", "/v1/no/such/route"), 404, "not-found")
    _problem(api.call("DELETE", "/v1/credentials"), 405, "method-not-allowed")
    bad = _problem(
        api.call("POST", "/v1/users", json={"name": "x", "roles": []}), 422, "invalid-request"
    )
    assert bad["problems"][0]["path"] == "body.roles"
    grace = _problem(
        api.call("POST", "/v1/credentials/x/rotations", json={"grace": "soon"}),
        422,
        "invalid-request",
    )
    assert grace["problems"][0]["path"] == "grace"
    _problem(api.call("GET", "/v1/credentials", role=None), 401, "unauthenticated")
    forbidden = _problem(
        api.call("POST", "/v1/estate/apply", role="viewer", json={}), 403, "forbidden"
    )
    assert forbidden["permission"] == "credentials:write"

    assert api.call("POST", "/v1/estate/apply", json=_estate(tmp_path)).json()["applied"]
    # A rotation that has been requested, and is leased by a live worker elsewhere.
    rotation_id = rotations.request(api.store, "api-key", actor="someone")
    in_progress = api.call("POST", "/v1/credentials/api-key/rotations", json={})
    assert _problem(in_progress, 409, "rotation-in-progress")["detail"].count(rotation_id) == 1
    with api.store.transaction() as s:
        row = s.get(RotationRow, rotation_id)
        assert row is not None
        row.lease_owner = "elsewhere/1/abc"
        row.lease_expires_at = utcnow() + timedelta(minutes=5)
    _problem(api.call("POST", f"/v1/rotations/{rotation_id}/resume"), 409, "lease-held")


def _all_responses(api: Api, credential: str, rotation_id: str) -> str:
    texts = [
        api.call("GET", path).text
        for path in (
            "/v1/credentials",
            f"/v1/credentials/{credential}",
            f"/v1/credentials/{credential}/rotations",
            f"/v1/rotations/{rotation_id}",
            "/v1/rotations",
            "/v1/audit/export",
            "/v1/alerts",
        )
    ]
    return "\n".join(texts)


def test_a_rotation_started_through_the_api_completes_in_the_background(
    api: Api, tmp_path: Path
) -> None:
    applied = api.call("POST", "/v1/estate/apply", json=_estate(tmp_path), role="operator")
    assert [c["name"] for c in applied.json()["changes"]] == ["api-key"]
    dry = api.call("POST", "/v1/credentials/api-key/dry-run", role="operator").json()
    assert dry["ready"] is True
    assert [s["step"] for s in dry["steps"]] == [
        "provider:random",
        "publishing:10:file",
        "publishing:20:file",
        "reloading:30:command",
    ]

    started = api.call(
        "POST", "/v1/credentials/api-key/rotations", json={"grace": "0s"}, role="operator"
    )
    assert started.status_code == 202, started.text
    rotation_id = started.json()["rotation_id"]
    assert started.headers["Location"] == f"/v1/rotations/{rotation_id}"
    done = api.wait_for(rotation_id, _final)
    assert done["state"] == "completed", done
    assert done["requested_by"] == "operator-1"
    names = [s["name"] for s in done["steps"]]
    assert names[:2] == ["validated", "preflighted"]
    assert {"creating", "publishing:10:file", "reloading:30:command"} <= set(names)
    assert all(s["status"] == "succeeded" for s in done["steps"])

    detail = api.call("GET", "/v1/credentials/api-key").json()
    current = [v for v in detail["versions"] if v["status"] == "current"]
    assert len(current) == 1
    assert current[0]["rotation_id"] == rotation_id
    assert detail["status"]["fingerprint"] == current[0]["fingerprint"]
    history = api.call("GET", "/v1/credentials/api-key/rotations").json()
    assert [h["id"] for h in history] == [rotation_id]

    value = json_value(tmp_path / "app.json")
    assert value
    assert value not in _all_responses(api, "api-key", rotation_id)
    verified = api.call("GET", "/v1/audit/verify", role="auditor").json()
    assert verified["ok"] is True
    assert verified["entries"] > 5
    exported = api.call("GET", "/v1/audit/export", role="auditor")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert len(lines) == verified["entries"]
    assert any(e["subject"] == f"rotation:{rotation_id}" for e in lines)


def test_a_certificate_credential_shows_its_public_facts_and_never_its_key(
    api: Api, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "ca", at=utcnow())
    estate = {
        "credentials": [
            {
                "name": "web-tls",
                "owner": "team-web",
                "provider": leaf_provider(ca, sans=["web.internal", "10.1.2.3"]),
                "actions": [pem_files(tmp_path)],
            }
        ]
    }
    assert api.call("POST", "/v1/estate/apply", json=estate).json()["applied"]
    started = api.call("POST", "/v1/credentials/web-tls/rotations", json={"grace": "0s"})
    rotation_id = started.json()["rotation_id"]
    assert api.wait_for(rotation_id, _final)["state"] == "completed"

    [version] = api.call("GET", "/v1/credentials/web-tls").json()["versions"]
    certificate = version["certificate"]
    assert certificate["subject"] == "CN=web.internal"
    assert certificate["sans"] == ["web.internal", "10.1.2.3"]
    assert version["fingerprint"] == "sha256:" + certificate["thumbprint"]
    assert certificate["not_after"] == version["expires_at"]
    key = (tmp_path / "site.key").read_text()
    page = sign_in(api, "admin").get("/credentials/web-tls")
    assert page.status_code == 200
    assert certificate["thumbprint"] in page.text
    assert "10.1.2.3" in page.text
    responses = _all_responses(api, "web-tls", rotation_id) + page.text
    assert "PRIVATE KEY" not in responses
    body = [line for line in key.splitlines() if not line.startswith("-----")]
    assert not any(line in responses for line in body)


def test_resume_continues_a_rotation_left_in_grace(api: Api, tmp_path: Path) -> None:
    api.call("POST", "/v1/estate/apply", json=_estate(tmp_path))
    first = api.call("POST", "/v1/credentials/api-key/rotations", json={"grace": "0s"})
    assert api.wait_for(first.json()["rotation_id"], _final)["state"] == "completed"
    started = api.call("POST", "/v1/credentials/api-key/rotations", json={"grace": "1h"})
    rotation_id = started.json()["rotation_id"]
    assert api.wait_for(rotation_id, lambda r: r["state"] == "grace")["state"] == "grace"
    deadline = time.monotonic() + 10
    while rotation_id in _running_here(api) and time.monotonic() < deadline:
        time.sleep(0.05)  # the background run stops at grace and releases its lease
    assert _running_here(api) == set()
    with api.store.transaction() as s:  # the grace period has passed
        row = s.get(RotationRow, rotation_id)
        assert row is not None
        row.grace_until = utcnow() - timedelta(seconds=1)
    resumed = api.call("POST", f"/v1/rotations/{rotation_id[:8]}/resume", role="operator")
    assert resumed.status_code == 202, resumed.text
    assert resumed.json()["rotation_id"] == rotation_id
    done = api.wait_for(rotation_id, _final)
    assert done["state"] == "completed"
    assert [s["name"] for s in done["steps"]].count("revoking") == 1
    assert api.call("GET", "/v1/rotations").json() == []
    _problem(api.call("POST", f"/v1/rotations/{rotation_id}/resume"), 409, "conflict")


def test_a_rotation_shows_running_while_any_worker_holds_its_lease(
    api: Api, tmp_path: Path
) -> None:
    # A CLI following a rotation through one of several servers must not stop at a
    # waiting state while another server or a worker still advances it.
    api.call("POST", "/v1/estate/apply", json=_estate(tmp_path))
    started = api.call("POST", "/v1/credentials/api-key/rotations", json={"grace": "1h"})
    rotation_id = started.json()["rotation_id"]
    api.wait_for(rotation_id, lambda r: r["state"] == "grace" and not r["running"])
    with api.store.transaction() as s:
        row = s.get(RotationRow, rotation_id)
        assert row is not None
        row.lease_owner = "worker-elsewhere:4242"
        row.lease_expires_at = utcnow() + timedelta(minutes=1)
    assert api.call("GET", f"/v1/rotations/{rotation_id}").json()["running"] is True
    with api.store.transaction() as s:  # that worker died; its lease ran out
        row = s.get(RotationRow, rotation_id)
        assert row is not None
        row.lease_expires_at = utcnow() - timedelta(seconds=1)
    assert api.call("GET", f"/v1/rotations/{rotation_id}").json()["running"] is False


def _final(rotation: dict[str, Any]) -> bool:
    return rotation["state"] in ("completed", "failed", "rolled_back", "needs_attention")


def _running_here(api: Api) -> set[str]:
    return {r["rotation_id"] for r in api.call("GET", "/v1/rotations").json() if r["running_here"]}
