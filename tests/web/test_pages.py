"""The dashboard's pages over the REST API's rules: sign-in and sessions, the Rotate
flow (dry run, confirmation, live timeline), approvals, and the read-only pages."""

from __future__ import annotations

import json
import re
from pathlib import Path

from keyshift.service import identities
from keyshift.web.auth import SESSION_COOKIE
from tests.api.conftest import Api
from tests.api.test_approvals_api import _settled
from tests.helpers import write_estate
from tests.web.conftest import Session, session_cookie_header, sign_in, submit_login


def apply_estate(api: Api, estate: Path) -> None:
    applied = api.call("POST", "/v1/estate/apply", json=json.loads(estate.read_text()))
    assert applied.status_code == 200, applied.text


settle = _settled
"""The rotation once no background run of it is left in the server."""


def rotate_through_pages(browser: Session, name: str, reason: str = "test") -> str:
    """Press Rotate, read the dry run, confirm: the id of the rotation started."""
    dry = browser.post(f"/credentials/{name}/dry-run")
    assert dry.status_code == 200, dry.text
    plan_hash = re.search(r'name="plan_hash" value="([0-9a-f]+)"', dry.text)
    assert plan_hash is not None
    started = browser.post(
        f"/credentials/{name}/rotate",
        {"reason": reason, "plan_hash": plan_hash.group(1), "confirm": "yes"},
    )
    assert started.status_code == 303, started.text
    location: str = started.headers["location"]
    assert location.startswith("/rotations/")
    return location.removeprefix("/rotations/")


def test_a_page_without_a_session_sends_the_browser_to_sign_in_and_back(web: Api) -> None:
    response = web.client.get("/credentials?owner=x", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fcredentials%3Fowner%3Dx"
    fragment = web.client.get(
        "/rotations/abc/timeline", headers={"HX-Request": "true"}, follow_redirects=False
    )
    assert fragment.status_code == 401
    assert fragment.headers["HX-Redirect"].startswith("/login?next=")


def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_the_session(
    web: Api,
) -> None:
    done = submit_login(web, web.tokens["viewer"])
    assert done.status_code == 303
    cookie_header = session_cookie_header(done)
    attributes = {a.strip().split("=")[0].lower() for a in cookie_header.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie_header.lower()
    assert "secure" not in attributes  # plain HTTP here; under TLS it is set (next test)
    assert web.tokens["viewer"] not in cookie_header
    browser = Session(web, done.cookies[SESSION_COOKIE])
    assert browser.get("/").status_code == 200
    out = browser.post("/logout")
    assert out.status_code == 303
    assert out.headers["location"] == "/login"
    assert browser.get("/").status_code == 303  # signed out: back to the sign-in form


def test_under_tls_the_session_cookie_is_secure(web: Api) -> None:
    done = submit_login(web, web.tokens["viewer"], base="https://testserver")
    attributes = {a.strip().lower() for a in session_cookie_header(done).split(";")}
    assert "secure" in attributes


def test_sign_in_refuses_a_bad_token_and_a_form_from_elsewhere(web: Api) -> None:
    bad = submit_login(web, "ks_0123456789abcdef_" + "A" * 43)
    assert bad.status_code == 401
    assert "That token is not valid" in bad.text
    assert "A" * 43 not in bad.text
    elsewhere = submit_login(web, web.tokens["viewer"], csrf="0" * 64)
    assert elsewhere.status_code == 403
    assert 'data-code="csrf-refused"' in elsewhere.text
    assert SESSION_COOKIE not in elsewhere.headers.get("set-cookie", "")


def test_sign_in_never_redirects_off_the_server(web: Api) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        done = submit_login(web, web.tokens["viewer"], next_=target)
        assert done.headers["location"] == "/", target


def test_disabling_a_user_or_revoking_the_session_stops_it_at_once(web: Api) -> None:
    viewer = sign_in(web, "viewer")
    admin = sign_in(web, "admin")
    assert viewer.get("/").status_code == 200
    listed = admin.get("/sessions")
    assert viewer.cookie.split("_")[1] in listed.text
    revoked = admin.post(f"/sessions/{viewer.cookie.split('_')[1]}/revoke")
    assert revoked.status_code == 303
    assert viewer.get("/").status_code == 303
    auditor = sign_in(web, "auditor")
    assert auditor.get("/audit").status_code == 200
    identities.disable_principal(web.store, "auditor-1", actor="test")
    assert auditor.get("/audit").status_code == 303


def test_a_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing(
    web: Api, tmp_path: Path
) -> None:
    apply_estate(web, write_estate(tmp_path))
    operator = sign_in(web, "operator")
    other = sign_in(web, "admin")
    for token in ("", "0" * 64, other.csrf):
        refused = operator.post("/credentials/api-key/dry-run", csrf=token)
        assert refused.status_code == 403, token
        assert 'data-code="csrf-refused"' in refused.text
        refused = operator.post(
            "/credentials/api-key/rotate",
            {"reason": "x", "plan_hash": "0", "confirm": "yes"},
            csrf=token,
        )
        assert refused.status_code == 403
    assert web.call("GET", "/v1/credentials/api-key/rotations").json() == []
    header = operator.post(
        "/credentials/api-key/dry-run", csrf="", headers={"X-CSRF-Token": operator.csrf}
    )
    assert header.status_code == 200  # htmx sends it as a header


def test_overview_counts_equal_the_apis(web: Api, tmp_path: Path) -> None:
    apply_estate(web, write_estate(tmp_path))
    viewer = sign_in(web, "viewer")
    operator = sign_in(web, "operator")
    assert settle(web, rotate_through_pages(operator, "api-key"))["state"] == "completed"
    # The second rotation has an old version to keep: it rests in its hour of grace.
    assert settle(web, rotate_through_pages(operator, "api-key"))["state"] == "grace"
    page = viewer.get("/").text
    api = web.call("GET", "/v1/overview", role="viewer").json()
    shown = dict(re.findall(r'id="count-([a-z0-9-]+)">(\d+)<', page))
    assert shown == {
        "total": str(api["total"]),
        "within-7": str(api["within"]["7"]),
        "within-30": str(api["within"]["30"]),
        "within-90": str(api["within"]["90"]),
        "expired": str(api["expired"]),
        "in-grace": str(api["in_grace"]),
        "rotating": str(api["rotating"]),
        "needs-attention": str(api["needs_attention"]),
        "awaiting-approval": str(api["awaiting_approval"]),
    }
    assert api["total"] == 1
    assert api["in_grace"] == 1


def test_rotate_shows_the_dry_run_then_starts_on_confirmation_and_the_timeline_follows(
    web: Api, tmp_path: Path
) -> None:
    apply_estate(web, write_estate(tmp_path, policy={"grace_period": "0s"}))
    operator = sign_in(web, "operator")
    credential = operator.get("/credentials/api-key")
    assert 'id="rotate"' in credential.text
    dry = operator.post("/credentials/api-key/dry-run")
    assert 'id="preflight"' in dry.text
    assert dry.text.count('class="pill ready"') == 4
    plan_hash = re.search(r'name="plan_hash" value="([0-9a-f]+)"', dry.text)
    assert plan_hash is not None

    unconfirmed = operator.post(
        "/credentials/api-key/rotate", {"reason": "leak", "plan_hash": plan_hash.group(1)}
    )
    assert unconfirmed.status_code == 422
    assert "confirm" in unconfirmed.text
    no_reason = operator.post(
        "/credentials/api-key/rotate", {"plan_hash": plan_hash.group(1), "confirm": "yes"}
    )
    assert no_reason.status_code == 422
    assert "reason" in no_reason.text
    stale = operator.post(
        "/credentials/api-key/rotate", {"reason": "leak", "plan_hash": "f" * 64, "confirm": "yes"}
    )
    assert stale.status_code == 422
    assert "dry run again" in stale.text
    assert web.call("GET", "/v1/credentials/api-key/rotations").json() == []

    rotation_id = rotate_through_pages(operator, "api-key", reason="suspected leak")
    done = settle(web, rotation_id)
    assert done["state"] == "completed"
    assert done["rollout"] == "2 of 2 delivered"
    fragment = operator.get(f"/rotations/{rotation_id}/timeline", headers={"HX-Request": "true"})
    assert 'data-state="completed"' in fragment.text
    assert "hx-trigger" not in fragment.text  # at rest: the page stops polling
    assert "Write file" in fragment.text
    assert "2 of 2 delivered" in fragment.text
    page = operator.get(f"/rotations/{rotation_id}")
    assert "<html" in page.text
    assert 'id="evidence"' in page.text
    history = web.call("GET", "/v1/credentials/api-key/rotations").json()
    assert [(h["id"], h["trigger"], h["reason"]) for h in history] == [
        (rotation_id, "web", "suspected leak")
    ]
    assert '<span id="trigger">web</span>' in page.text
    [entry] = [
        e
        for e in (
            json.loads(line) for line in web.call("GET", "/v1/audit/export").text.splitlines()
        )
        if e["action"] == "rotation.requested"
    ]
    assert entry["actor"] == "operator-1"
    assert entry["details"].get("reason") == "suspected leak"


def test_buttons_a_role_may_not_use_are_not_shown(web: Api, tmp_path: Path) -> None:
    apply_estate(web, write_estate(tmp_path))
    viewer = sign_in(web, "viewer").get("/credentials/api-key").text
    assert 'id="rotate"' not in viewer
    assert 'id="rotate"' in sign_in(web, "rotator").get("/credentials/api-key").text
    nav = sign_in(web, "viewer").get("/").text
    assert 'href="/audit"' not in nav
    assert 'href="/sessions"' not in nav
    assert 'href="/audit"' in sign_in(web, "auditor").get("/").text
    refused = sign_in(web, "viewer").post("/credentials/api-key/dry-run")
    assert refused.status_code == 403
    assert 'data-code="forbidden"' in refused.text


def test_pages_read_the_store_at_the_clock_the_server_uses(web: Api, tmp_path: Path) -> None:
    apply_estate(web, write_estate(tmp_path))
    viewer = sign_in(web, "viewer")
    listing = viewer.get("/credentials?sort=name&lifecycle=Never+Rotated")
    assert 'data-credential="api-key"' in listing.text
    assert 'data-credential="api-key"' not in viewer.get("/credentials?lifecycle=Active").text
    bad = viewer.get("/credentials?sort=password")
    assert bad.status_code == 422
    assert "sort" in bad.text


def test_the_approvals_queue_refuses_self_approval_with_the_reason_and_a_second_person_approves(
    web: Api, tmp_path: Path
) -> None:
    estate = json.loads(write_estate(tmp_path).read_text())
    estate["credentials"][0]["policy"]["approval"] = {"approvers": ["group:oncall"]}
    estate["governance"] = {"groups": {"oncall": ["alice", "approver-1"]}}
    (tmp_path / "supervised.json").write_text(json.dumps(estate))
    apply_estate(web, tmp_path / "supervised.json")
    identities.add_principal(
        web.store, name="alice", kind="user", roles=["operator", "approver"], actor="test"
    )
    web.tokens["alice"] = identities.create_token(
        web.store, "alice", name="t", actor="test"
    ).token.reveal()
    alice = sign_in(web, "alice")
    rotation_id = rotate_through_pages(alice, "api-key")
    assert settle(web, rotation_id)["state"] == "awaiting_approval"
    queue = alice.get("/approvals").text
    [request_id] = re.findall(r'data-approval="([0-9a-f-]+)"', queue)
    assert "Rollback plan" in queue
    assert "restore the previous value: publishing:10:file" in queue

    own = alice.post(f"/approvals/{request_id}/approve", {"comment": "mine"})
    assert own.status_code == 409
    assert 'data-code="approval-refused"' in own.text
    assert "own" in own.text  # the reason: the requester cannot approve their own rotation
    assert settle(web, rotation_id)["state"] == "awaiting_approval"

    approver = sign_in(web, "approver")
    assert 'class="approve"' in approver.get("/approvals").text
    assert 'class="approve"' not in sign_in(web, "viewer").get("/approvals").text
    done = approver.post(f"/approvals/{request_id}/approve", {"comment": "CHG-1"})
    assert done.status_code == 303
    assert done.headers["location"] == f"/rotations/{rotation_id}"
    assert settle(web, rotation_id)["state"] == "completed"
    decided = web.call("GET", f"/v1/approvals/{request_id}").json()
    assert decided["approvals"] == ["approver-1"]
