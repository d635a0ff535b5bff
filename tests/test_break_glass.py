"""Break-glass: `keyshift rotate NAME --break-glass --reason TEXT` rotates a credential
known to be leaked now, outside its maintenance window and through any freeze covering
it. On `prod` it needs `rotations:break_glass` and, where the policy asks for approvals,
exactly one approval from a second person. It is audited and marked in the evidence."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keyshift.domain.states import RotationState, Trigger
from keyshift.errors import ApprovalRefused, ConfigError, PermissionDenied, PolicyRefused
from keyshift.service import approvals, evidence, rotations
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.api.conftest import open_api
from tests.conftest import Cli
from tests.helpers import (
    SMOKE_CHECK,
    audit_details,
    json_value,
    rotations_of,
    save_estate,
    write_estate,
)
from tests.test_client import Server, _as, server  # noqa: F401 (the fixture)

# A Tuesday, 10:00 UTC: outside a weekend-only window.
TUESDAY = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
WEEKENDS = {"days": ["sat", "sun"], "hours": "00:00-24:00"}
GROUPS = {"platform-oncall": ["alice", "bob", "carol"]}
TWO_OF_THREE = {"approvers": ["group:platform-oncall"], "min_approvals": 2}


def _estate(
    tmp: Path, *, environment: str | None = "prod", policy: dict[str, Any] | None = None
) -> Path:
    """api-key (owner team-test) in `environment`, rotated with a 0s grace period, plus a
    second credential other-key of the same owner and environment."""
    path = write_estate(
        tmp, policy={"grace_period": "0s", "max_lifetime": "90d", **(policy or {})}, checked=True
    )
    estate = json.loads(path.read_text())
    [cred] = estate["credentials"]
    if environment is not None:
        cred["environment"] = environment
    other = {**cred, "name": "other-key", "actions": [SMOKE_CHECK]}
    estate["credentials"].append(other)
    estate["governance"] = {"groups": GROUPS}
    return save_estate(tmp, estate)


def _apply(store: Store, path: Path) -> None:
    apply_estate(store, load_estate(path), actor="test")


def _break_glass(
    store: Store, clock: FakeClock, actor: str = "rita", *, permitted: bool = True
) -> tuple[str, RotationState]:
    return asyncio.run(
        rotations.rotate(
            store,
            "api-key",
            actor=actor,
            context=clock.context(),
            reason="key pasted in a public channel",
            trigger=Trigger.BREAK_GLASS,
            break_glass_permitted=permitted,
        )
    )


def test_break_glass_rotates_outside_the_window_that_refuses_an_ordinary_rotation(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(TUESDAY)
    _apply(store, _estate(tmp_path, policy={"window": WEEKENDS}))
    with pytest.raises(PolicyRefused, match="outside the rotation window"):
        asyncio.run(rotations.rotate(store, "api-key", actor="rita", context=clock.context()))

    rotation_id, state = _break_glass(store, clock)

    assert state == RotationState.COMPLETED
    assert json_value(tmp_path / "app.json") is not None
    [row] = rotations.history_rows(store, "api-key")
    assert (row.id, row.trigger, row.reason) == (
        rotation_id,
        "break-glass",
        "key pasted in a public channel",
    )
    [requested] = audit_details(store, "rotation.requested")
    assert requested["break_glass"] is True
    assert requested["trigger"] == "break-glass"


def test_an_ordinary_rotation_is_not_audited_as_break_glass(store: Store, tmp_path: Path) -> None:
    _apply(store, _estate(tmp_path))
    asyncio.run(rotations.rotate(store, "api-key", actor="rita", context=FakeClock().context()))
    [requested] = audit_details(store, "rotation.requested")
    assert requested["break_glass"] is False


@pytest.mark.parametrize(
    "scope",
    [["api-key"], ["--owner", "team-test"], ["--environment", "prod"], ["--all"]],
    ids=["credential", "owner", "environment", "all"],
)
def test_break_glass_goes_through_a_freeze_of_any_scope_for_that_one_rotation(
    cli: Cli, store: Store, tmp_path: Path, scope: list[str]
) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path))).exit_code == 0
    assert cli("freeze", *scope, "--reason", "incident INC-9").exit_code == 0
    assert cli("rotate", "api-key").exit_code != 0

    done = cli("rotate", "api-key", "--break-glass", "--reason", "leaked in INC-9")

    assert done.exit_code == 0, done.output
    [rotation] = rotations_of(store, "api-key")
    assert (rotation.state, rotation.trigger) == ("completed", "break-glass")
    if scope != ["api-key"]:
        # The freeze still holds for everything else it covers.
        refused = cli("rotate", "other-key")
        assert refused.exit_code != 0
        assert "frozen" in refused.output


def test_break_glass_needs_a_reason_of_its_own(cli: Cli, store: Store, tmp_path: Path) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path))).exit_code == 0
    refused = cli("rotate", "api-key", "--break-glass")
    assert refused.exit_code == 2, refused.output
    assert "--reason" in refused.output
    assert rotations_of(store, "api-key") == []
    with pytest.raises(ConfigError, match="reason"):
        asyncio.run(
            rotations.rotate(
                store, "api-key", actor="rita", trigger=Trigger.BREAK_GLASS, reason="  "
            )
        )


def test_break_glass_on_prod_without_the_permission_is_refused_and_audited(
    store: Store, tmp_path: Path
) -> None:
    _apply(store, _estate(tmp_path))
    with pytest.raises(PermissionDenied, match="rotations:break_glass"):
        _break_glass(store, FakeClock(TUESDAY), permitted=False)
    assert rotations_of(store, "api-key") == []
    [refused] = audit_details(store, "rotation.refused")
    assert refused["break_glass"] is True
    assert refused["trigger"] == "break-glass"
    assert any("rotations:break_glass" in r for r in refused["reasons"])


def test_break_glass_off_prod_needs_no_break_glass_permission(store: Store, tmp_path: Path) -> None:
    _apply(store, _estate(tmp_path, environment="dev", policy={"window": WEEKENDS}))
    _, state = _break_glass(store, FakeClock(TUESDAY), permitted=False)
    assert state == RotationState.COMPLETED


def test_break_glass_on_prod_needs_one_approval_from_a_second_person_not_the_policys_two(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(TUESDAY)
    _apply(store, _estate(tmp_path, policy={"approval": TWO_OF_THREE, "window": WEEKENDS}))

    rotation_id, state = _break_glass(store, clock, actor="alice")

    assert state == RotationState.AWAITING_APPROVAL
    [request] = approvals.requests(store)
    assert request.needed == 1
    [asked] = audit_details(store, "approval.requested")
    assert asked["min_approvals"] == 1
    with pytest.raises(ApprovalRefused, match="requester cannot approve"):
        asyncio.run(
            approvals.decide(
                store, request.id, approver="alice", approve=True, context=clock.context()
            )
        )
    _, state = asyncio.run(
        approvals.decide(store, request.id, approver="bob", approve=True, context=clock.context())
    )
    assert state == RotationState.COMPLETED
    [closed] = audit_details(store, "approval.closed")
    assert closed["approved_by"] == ["bob"]
    assert rotations_of(store, "api-key")[0].id == rotation_id


def test_an_ordinary_rotation_of_the_same_credential_still_needs_two_approvals(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(TUESDAY)
    _apply(store, _estate(tmp_path, policy={"approval": TWO_OF_THREE}))
    asyncio.run(rotations.rotate(store, "api-key", actor="alice", context=clock.context()))
    [request] = approvals.requests(store)
    assert request.needed == 2
    _, state = asyncio.run(
        approvals.decide(store, request.id, approver="bob", approve=True, context=clock.context())
    )
    assert state == RotationState.AWAITING_APPROVAL


def test_a_freeze_that_lands_while_break_glass_waits_for_approval_does_not_hold_it(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(TUESDAY)
    _apply(store, _estate(tmp_path, policy={"approval": TWO_OF_THREE}))
    _, state = _break_glass(store, clock, actor="alice")
    assert state == RotationState.AWAITING_APPROVAL
    assert cli("freeze", "--all", "--reason", "incident INC-9").exit_code == 0
    [request] = approvals.requests(store)
    _, state = asyncio.run(
        approvals.decide(store, request.id, approver="bob", approve=True, context=clock.context())
    )
    assert state == RotationState.COMPLETED


def test_the_evidence_bundle_marks_a_break_glass_rotation(store: Store, tmp_path: Path) -> None:
    _apply(store, _estate(tmp_path, policy={"window": WEEKENDS}))
    rotation_id, _ = _break_glass(store, FakeClock(TUESDAY))

    bundle = evidence.export(store, rotation_id, actor="auditor", now=TUESDAY)

    assert bundle["request"]["break_glass"] is True
    assert bundle["request"]["trigger"] == "break-glass"
    assert evidence.verify(store, bundle).ok
    tampered = json.loads(json.dumps(bundle))
    tampered["request"]["break_glass"] = False
    outcome = evidence.verify(store, tampered)
    assert not outcome.ok
    assert "break_glass" in (outcome.problem or "")


def test_an_ordinary_rotations_evidence_is_not_marked_break_glass(
    store: Store, tmp_path: Path
) -> None:
    _apply(store, _estate(tmp_path))
    rotation_id, _ = asyncio.run(
        rotations.rotate(store, "api-key", actor="rita", context=FakeClock().context())
    )
    bundle = evidence.export(store, rotation_id, actor="auditor", now=TUESDAY)
    assert bundle["request"]["break_glass"] is False
    assert evidence.verify(store, bundle).ok


# Through the API and the CLI's --server ---------------------------------------------------


def test_break_glass_through_the_api_on_prod_needs_the_break_glass_permission(
    store: Store, tmp_path: Path
) -> None:
    for api in open_api(store):
        document = json.loads(_estate(tmp_path).read_text())
        assert api.call("POST", "/v1/estate/apply", json=document).status_code == 200
        body = {"break_glass": True, "reason": "key in a CI log"}

        refused = api.call("POST", "/v1/credentials/api-key/rotations", role="operator", json=body)

        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "forbidden"
        assert refused.json()["permission"] == "rotations:break_glass"
        [audited] = audit_details(store, "rotation.refused")
        assert audited["break_glass"] is True
        assert rotations_of(store, "api-key") == []

        started = api.call("POST", "/v1/credentials/api-key/rotations", json=body)
        assert started.status_code == 202, started.text
        done = api.wait_for(started.json()["rotation_id"], lambda b: b["state"] == "completed")
        assert done["trigger"] == "break-glass"


def test_break_glass_through_the_api_needs_a_reason(store: Store, tmp_path: Path) -> None:
    for api in open_api(store):
        document = json.loads(_estate(tmp_path).read_text())
        assert api.call("POST", "/v1/estate/apply", json=document).status_code == 200
        refused = api.call("POST", "/v1/credentials/api-key/rotations", json={"break_glass": True})
        assert refused.status_code == 422, refused.text
        assert "reason" in refused.text
        assert rotations_of(store, "api-key") == []


def test_break_glass_at_the_server_from_the_cli(
    cli: Cli,
    ks_env: dict[str, str],
    server: Server,  # noqa: F811 (the fixture imported from tests.test_client)
    store: Store,
    tmp_path: Path,
) -> None:
    assert cli("apply", "-f", str(_estate(tmp_path, policy={"window": WEEKENDS}))).exit_code == 0
    assert cli("freeze", "api-key", "--reason", "incident INC-9").exit_code == 0
    args = ("rotate", "api-key", "--break-glass", "--reason", "leaked in INC-9")

    as_operator = _as(ks_env, server, "otto")(*args)
    assert as_operator.exit_code != 0
    assert "rotations:break_glass" in as_operator.output

    as_admin = _as(ks_env, server, "ada")(*args)
    assert as_admin.exit_code == 0, as_admin.output
    [rotation] = rotations_of(store, "api-key")
    assert (rotation.state, rotation.trigger) == ("completed", "break-glass")
