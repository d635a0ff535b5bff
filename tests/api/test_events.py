"""Inbound triggers: `POST /v1/events/rotate/{trigger}` starts rotations for an event
another system saw (a secret-scanning alert, a SIEM rule). It is authenticated by an
HMAC-SHA256 signature of the raw body under the trigger's shared secret, or by an API
token holding `rotations:trigger`; de-duplicated by event id; rate-limited per trigger.
The rotation runs with trigger `event` (`break-glass` for a trigger so marked, which
skips the window only), honours freezes and approvals, and is audited with the event id."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keyshift.domain.estate import WEEKDAYS
from keyshift.domain.freeze import FreezeScope
from keyshift.service import freezes
from keyshift.store.store import Store
from tests.api.conftest import Api
from tests.helpers import audit_details, rotations_of, save_estate, write_estate

SECRET = "hook-secret-0123456789abcdef"
GITHUB = "github"
GENERIC = "siem"


def _estate(
    tmp: Path,
    *,
    trigger: dict[str, Any] | None = None,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """api-key and other-key (owner team-test) and ci-token (owner team-ci); a generic
    trigger `siem` and a GitHub one mapping `github_personal_access_token` leaks in
    acme/ci to ci-token; both signed with SECRET (read from a file)."""
    secret_file = tmp / "hook.secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    base = json.loads(
        write_estate(
            tmp, policy={"grace_period": "0s", "max_lifetime": "90d", **(policy or {})}
        ).read_text()
    )["credentials"][0]
    creds = [
        base,
        {**base, "name": "other-key", "actions": []},
        {**base, "name": "ci-token", "owner": "team-ci", "actions": []},
    ]
    source = f"file:{secret_file}"
    triggers = [
        {"name": GENERIC, "kind": "generic", "secret_from": source, **(trigger or {})},
        {
            "name": GITHUB,
            "kind": "github_secret_scanning",
            "secret_from": source,
            "match": [
                {
                    "secret_type": "github_personal_access_token",
                    "repository": "acme/ci",
                    "credential": "ci-token",
                },
                {"secret_type": "slack_api_token", "credential": "other-key"},
            ],
        },
    ]
    return {"credentials": creds, "triggers": triggers}


def _apply(api: Api, tmp: Path, **kw: Any) -> None:
    estate = _estate(tmp, **kw)
    save_estate(tmp, estate)
    applied = api.call("POST", "/v1/estate/apply", json=estate)
    assert applied.status_code == 200, applied.text


def _signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _post(
    api: Api,
    payload: dict[str, Any],
    *,
    trigger: str = GENERIC,
    secret: str | None = SECRET,
    headers: dict[str, str] | None = None,
    role: str | None = None,
    signature_header: str = "X-Keyshift-Signature",
) -> Any:
    body = json.dumps(payload).encode()
    sent = {"Content-Type": "application/json", **api.headers(role), **(headers or {})}
    if secret is not None:
        sent[signature_header] = _signature(body, secret)
    return api.client.post(f"/v1/events/rotate/{trigger}", content=body, headers=sent)


def _settled(api: Api, rotation_id: str) -> dict[str, Any]:
    return api.wait_for(rotation_id, lambda b: not b["running"] and b["state"] != "requested")


# Signature and token ------------------------------------------------------------------------


def test_a_signed_event_starts_a_rotation_with_trigger_event_audited_with_its_event_id(
    api: Api, store: Store, tmp_path: Path
) -> None:
    _apply(api, tmp_path)
    payload = {"event_id": "siem-4711", "credential": "api-key", "reason": "key seen in a log"}

    answer = _post(api, payload)

    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["duplicate"] is False
    [started] = body["rotations"]
    assert started["credential"] == "api-key"
    assert _settled(api, started["rotation_id"])["state"] == "completed"
    [rotation] = rotations_of(store, "api-key")
    assert (rotation.id, rotation.trigger) == (started["rotation_id"], "event")
    assert (rotation.requested_by, rotation.reason) == ("trigger:siem", "key seen in a log")
    [requested] = audit_details(store, "rotation.requested")
    assert requested["trigger"] == "event"
    assert requested["event"] == {"trigger": GENERIC, "event_id": "siem-4711"}
    assert requested["break_glass"] is False
    [received] = audit_details(store, "event.received")
    assert received["event_id"] == "siem-4711"
    assert received["rotations"] == [{"credential": "api-key", "rotation_id": rotation.id}]
    assert SECRET not in answer.text


@pytest.mark.parametrize(
    ("secret", "headers"),
    [
        (None, {}),
        ("another-secret", {}),
        (None, {"X-Keyshift-Signature": "sha256=" + "0" * 64}),
        (None, {"X-Keyshift-Signature": "md5=abc"}),
        (None, {"X-Keyshift-Signature": "garbage"}),
    ],
    ids=["missing", "wrong-secret", "wrong-digest", "other-algorithm", "malformed"],
)
def test_a_missing_or_bad_signature_is_refused_and_starts_nothing(
    api: Api, store: Store, tmp_path: Path, secret: str | None, headers: dict[str, str]
) -> None:
    _apply(api, tmp_path)
    payload = {"event_id": "e-1", "credential": "api-key"}

    answer = _post(api, payload, secret=secret, headers=headers)

    assert answer.status_code == 401, answer.text
    assert answer.json()["code"] == "unauthenticated"
    assert rotations_of(store, "api-key") == []
    assert audit_details(store, "event.received") == []


def test_a_signature_over_another_body_is_refused(api: Api, store: Store, tmp_path: Path) -> None:
    _apply(api, tmp_path)
    signed = json.dumps({"event_id": "e-1", "credential": "other-key"}).encode()
    sent = json.dumps({"event_id": "e-1", "credential": "api-key"}).encode()
    answer = api.client.post(
        f"/v1/events/rotate/{GENERIC}",
        content=sent,
        headers={"X-Keyshift-Signature": _signature(signed)},
    )
    assert answer.status_code == 401, answer.text
    assert rotations_of(store, "api-key") == []


def test_a_signature_for_an_unknown_trigger_says_no_more_than_a_bad_one(
    api: Api, tmp_path: Path
) -> None:
    _apply(api, tmp_path)
    answer = _post(api, {"event_id": "e-1", "credential": "api-key"}, trigger="nope")
    assert answer.status_code == 401, answer.text


@pytest.mark.parametrize("role", ["admin", "operator", "rotator"])
def test_a_token_holding_rotations_trigger_needs_no_signature(
    api: Api, store: Store, tmp_path: Path, role: str
) -> None:
    _apply(api, tmp_path)
    answer = _post(api, {"event_id": f"t-{role}", "credential": "api-key"}, secret=None, role=role)
    assert answer.status_code == 202, answer.text
    [rotation] = rotations_of(store, "api-key")
    assert rotation.trigger == "event"
    assert rotation.requested_by == ("root" if role == "admin" else f"{role}-1")


@pytest.mark.parametrize("role", ["viewer", "auditor", "approver"])
def test_a_token_without_rotations_trigger_is_forbidden_even_with_a_good_signature(
    api: Api, store: Store, tmp_path: Path, role: str
) -> None:
    _apply(api, tmp_path)
    answer = _post(api, {"event_id": "t-1", "credential": "api-key"}, role=role)
    assert answer.status_code == 403, answer.text
    assert answer.json()["permission"] == "rotations:trigger"
    assert rotations_of(store, "api-key") == []


def test_an_unknown_trigger_is_not_found_for_a_token_holder(api: Api, tmp_path: Path) -> None:
    _apply(api, tmp_path)
    answer = _post(api, {"event_id": "t-1", "credential": "api-key"}, trigger="nope", role="admin")
    assert answer.status_code == 404, answer.text


# De-duplication and rate limit --------------------------------------------------------------


def test_the_same_event_twice_starts_one_rotation_and_answers_the_first_rotation_id(
    api: Api, store: Store, tmp_path: Path
) -> None:
    _apply(api, tmp_path)
    payload = {"event_id": "siem-1", "credential": "api-key"}
    first = _post(api, payload)
    assert first.status_code == 202, first.text
    rotation_id = first.json()["rotations"][0]["rotation_id"]
    _settled(api, rotation_id)

    again = _post(api, payload)

    assert again.status_code == 202, again.text
    assert again.json()["duplicate"] is True
    assert [r["rotation_id"] for r in again.json()["rotations"]] == [rotation_id]
    assert [r.id for r in rotations_of(store, "api-key")] == [rotation_id]
    # Another event id is another event.
    other = _post(api, {**payload, "event_id": "siem-2"})
    assert other.status_code == 202, other.text
    assert len(rotations_of(store, "api-key")) == 2


def test_events_past_the_triggers_rate_limit_get_429_with_retry_after(
    api: Api, store: Store, tmp_path: Path
) -> None:
    _apply(api, tmp_path, trigger={"rate_limit": {"events": 2, "per": "1h"}})
    for i, name in enumerate(("api-key", "other-key")):
        answer = _post(api, {"event_id": f"e-{i}", "credential": name})
        assert answer.status_code == 202, answer.text

    limited = _post(api, {"event_id": "e-3", "credential": "ci-token"})

    assert limited.status_code == 429, limited.text
    assert limited.json()["code"] == "rate-limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 3600
    assert rotations_of(store, "ci-token") == []
    # A redelivery of an event already taken is answered, not limited.
    assert _post(api, {"event_id": "e-0", "credential": "api-key"}).status_code == 202
    # Another trigger has a limit of its own.
    github = _post_github(api, _alert("github_personal_access_token", "acme/ci"), "d-1")
    assert github.status_code == 202, github.text


# Payloads ------------------------------------------------------------------------------------


def test_an_owner_event_rotates_every_credential_of_that_owner(
    api: Api, store: Store, tmp_path: Path
) -> None:
    _apply(api, tmp_path)
    answer = _post(api, {"event_id": "o-1", "owner": "team-test", "reason": "laptop stolen"})
    assert answer.status_code == 202, answer.text
    assert sorted(r["credential"] for r in answer.json()["rotations"]) == ["api-key", "other-key"]
    assert rotations_of(store, "ci-token") == []


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"credential": "api-key"}, "event_id"),
        ({"event_id": "x", "owner": "team-test"}, "reason"),
        ({"event_id": "x"}, "credential"),
        ({"event_id": "x", "credential": "api-key", "owner": "team-test", "reason": "r"}, ""),
        ({"event_id": "x", "credential": "api-key", "colour": "red"}, "colour"),
        ({"event_id": "", "credential": "api-key"}, "event_id"),
    ],
    ids=["no-event-id", "owner-without-reason", "neither", "both", "unknown-field", "empty-id"],
)
def test_a_bad_generic_payload_is_refused_naming_the_field(
    api: Api, store: Store, tmp_path: Path, payload: dict[str, Any], path: str
) -> None:
    _apply(api, tmp_path)
    answer = _post(api, payload)
    assert answer.status_code == 422, answer.text
    assert any(path in p["path"] for p in answer.json()["problems"]), answer.text
    assert rotations_of(store, "api-key") == []


def test_an_event_for_an_unknown_credential_is_not_found(api: Api, tmp_path: Path) -> None:
    _apply(api, tmp_path)
    answer = _post(api, {"event_id": "x", "credential": "no-such-key"})
    assert answer.status_code == 404, answer.text


# GitHub secret scanning --------------------------------------------------------------------


def _alert(secret_type: str, repository: str, action: str = "created") -> dict[str, Any]:
    """A `secret_scanning_alert` webhook payload as GitHub sends it (trimmed)."""
    return {
        "action": action,
        "alert": {
            "number": 42,
            "secret_type": secret_type,
            "secret_type_display_name": "GitHub Personal Access Token",
            "secret": "ghp_THEREALLEAKEDTOKENVALUE0123456789",
            "state": "open",
            "html_url": f"https://github.com/{repository}/security/secret-scanning/42",
        },
        "repository": {"full_name": repository, "name": repository.split("/")[1]},
        "sender": {"login": "octocat"},
    }


def _post_github(
    api: Api, payload: dict[str, Any], delivery: str, event: str = "secret_scanning_alert"
) -> Any:
    body = json.dumps(payload).encode()
    return api.client.post(
        f"/v1/events/rotate/{GITHUB}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": _signature(body),
        },
    )


def test_a_github_secret_scanning_alert_maps_to_its_credential_and_starts_a_rotation(
    api: Api, store: Store, tmp_path: Path
) -> None:
    _apply(api, tmp_path)
    delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"

    answer = _post_github(api, _alert("github_personal_access_token", "acme/ci"), delivery)

    assert answer.status_code == 202, answer.text
    [started] = answer.json()["rotations"]
    assert started["credential"] == "ci-token"
    assert answer.json()["event_id"] == delivery
    assert "ghp_THEREALLEAKEDTOKENVALUE" not in answer.text
    [rotation] = rotations_of(store, "ci-token")
    assert rotation.trigger == "event"
    assert "secret scanning alert 42" in rotation.reason
    assert "acme/ci" in rotation.reason
    [requested] = audit_details(store, "rotation.requested")
    assert requested["event"] == {"trigger": GITHUB, "event_id": delivery}
    for entry in audit_details(store, "event.received"):
        assert "ghp_THEREALLEAKEDTOKENVALUE" not in json.dumps(entry)
    # GitHub redelivers with the same delivery id.
    again = _post_github(api, _alert("github_personal_access_token", "acme/ci"), delivery)
    assert again.json()["duplicate"] is True
    assert len(rotations_of(store, "ci-token")) == 1


def test_a_mapping_without_a_repository_matches_the_secret_type_anywhere(
    api: Api, store: Store, tmp_path: Path
) -> None:
    _apply(api, tmp_path)
    answer = _post_github(api, _alert("slack_api_token", "acme/anything"), "d-2")
    assert answer.status_code == 202, answer.text
    assert [r["credential"] for r in answer.json()["rotations"]] == ["other-key"]


@pytest.mark.parametrize(
    ("payload", "event"),
    [
        (_alert("github_personal_access_token", "acme/other-repo"), "secret_scanning_alert"),
        (_alert("aws_access_key_id", "acme/ci"), "secret_scanning_alert"),
        (_alert("github_personal_access_token", "acme/ci", "resolved"), "secret_scanning_alert"),
        ({"zen": "Keep it logically awesome.", "hook_id": 1}, "ping"),
        ({"action": "opened"}, "pull_request"),
    ],
    ids=["other-repository", "unmapped-type", "resolved", "ping", "other-event"],
)
def test_github_deliveries_that_name_no_mapped_leak_start_nothing(
    api: Api, store: Store, tmp_path: Path, payload: dict[str, Any], event: str
) -> None:
    _apply(api, tmp_path)
    answer = _post_github(api, payload, "d-3", event=event)
    assert answer.status_code == 202, answer.text
    assert answer.json()["rotations"] == []
    assert answer.json()["ignored"]
    assert rotations_of(store, "ci-token") == rotations_of(store, "other-key") == []


def test_a_github_delivery_needs_githubs_signature_header(
    api: Api, store: Store, tmp_path: Path
) -> None:
    _apply(api, tmp_path)
    body = json.dumps(_alert("github_personal_access_token", "acme/ci")).encode()
    answer = api.client.post(
        f"/v1/events/rotate/{GITHUB}",
        content=body,
        headers={
            "X-GitHub-Event": "secret_scanning_alert",
            "X-GitHub-Delivery": "d-4",
            "X-Keyshift-Signature": _signature(body),  # the generic header: not GitHub's
        },
    )
    assert answer.status_code == 401, answer.text
    assert rotations_of(store, "ci-token") == []


# Freeze, approvals, window ------------------------------------------------------------------


def test_a_freeze_refuses_an_event_and_the_same_event_may_come_again_once_lifted(
    api: Api, store: Store, tmp_path: Path
) -> None:
    _apply(api, tmp_path)
    freeze = freezes.freeze(
        store,
        scope=FreezeScope.CREDENTIAL,
        value="api-key",
        reason="incident INC-3",
        until=None,
        actor="test",
    )
    payload = {"event_id": "f-1", "credential": "api-key"}

    refused = _post(api, payload)

    assert refused.status_code == 409, refused.text
    assert refused.json()["code"] == "policy-refused"
    assert any("frozen" in r for r in refused.json()["reasons"])
    assert rotations_of(store, "api-key") == []
    [audited] = audit_details(store, "rotation.refused")
    assert audited["event"] == {"trigger": GENERIC, "event_id": "f-1"}

    freezes.unfreeze(store, freeze.id, actor="test")
    again = _post(api, payload)
    assert again.status_code == 202, again.text
    assert again.json()["duplicate"] is False
    assert len(rotations_of(store, "api-key")) == 1


def test_an_event_rotation_waits_for_the_policys_approvals(
    api: Api, store: Store, tmp_path: Path
) -> None:
    approval = {"approvers": ["user:alice", "user:bob"], "min_approvals": 2}
    _apply(api, tmp_path, policy={"approval": approval})
    answer = _post(api, {"event_id": "a-1", "credential": "api-key"})
    assert answer.status_code == 202, answer.text
    rotation_id = answer.json()["rotations"][0]["rotation_id"]
    assert _settled(api, rotation_id)["state"] == "awaiting_approval"
    [asked] = audit_details(store, "approval.requested")
    assert asked["min_approvals"] == 2


def _closed_window() -> dict[str, Any]:
    """A window closed all of today (UTC)."""
    today = WEEKDAYS[datetime.now(UTC).weekday()]
    return {"days": [d for d in WEEKDAYS if d != today], "hours": "00:00-24:00"}


def test_an_event_outside_the_window_is_refused(api: Api, store: Store, tmp_path: Path) -> None:
    _apply(api, tmp_path, policy={"window": _closed_window()})
    refused = _post(api, {"event_id": "w-1", "credential": "api-key"})
    assert refused.status_code == 409, refused.text
    assert any("window" in r for r in refused.json()["reasons"])


def test_a_break_glass_trigger_skips_the_window_but_not_a_freeze(
    api: Api, store: Store, tmp_path: Path
) -> None:
    _apply(api, tmp_path, trigger={"break_glass": True}, policy={"window": _closed_window()})

    answer = _post(api, {"event_id": "bg-1", "credential": "api-key"})

    assert answer.status_code == 202, answer.text
    rotation_id = answer.json()["rotations"][0]["rotation_id"]
    assert _settled(api, rotation_id)["state"] == "completed"
    [rotation] = rotations_of(store, "api-key")
    assert rotation.trigger == "break-glass"
    [requested] = audit_details(store, "rotation.requested")
    assert requested["break_glass"] is True

    freezes.freeze(
        store, scope=FreezeScope.ALL, value=None, reason="change freeze", until=None, actor="test"
    )
    refused = _post(api, {"event_id": "bg-2", "credential": "api-key"})
    assert refused.status_code == 409, refused.text
    assert any("frozen" in r for r in refused.json()["reasons"])
