"""Governance: refusals before anything changes, and supervised mode (approvals bound to
the plan, N of M, no self-approval, expiry, approval before revocation)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keyshift.domain.states import RotationState
from keyshift.errors import ApprovalRefused, PolicyRefused
from keyshift.service import approvals, rotations
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store.models import AuditEntry
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.helpers import json_value, rotations_of, versions, write_estate

# A Tuesday, 10:00 UTC.
START = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
GROUPS = {"platform-oncall": ["alice", "bob", "carol"]}


def _estate(
    tmp: Path,
    *,
    policy: dict[str, Any] | None = None,
    governance: dict[str, Any] | None = None,
    owner: str | None = "team-payments",
    extra_action: bool = False,
) -> Path:
    path = write_estate(tmp, policy={"grace_period": "1h", "max_lifetime": "90d", **(policy or {})})
    estate = json.loads(path.read_text())
    cred = estate["credentials"][0]
    if owner is None:
        del cred["owner"]
    else:
        cred["owner"] = owner
    if extra_action:
        cred["actions"].append(
            {
                "type": "file",
                "order": 25,
                "config": {"path": str(tmp / "extra.json"), "key": "K", "file_format": "json"},
            }
        )
    estate["governance"] = {"groups": GROUPS, **(governance or {})}
    path.write_text(json.dumps(estate))
    return path


def _apply(store: Store, path: Path) -> None:
    apply_estate(store, load_estate(path), actor="test")


def _rotate(store: Store, clock: FakeClock, actor: str = "rita") -> tuple[str, RotationState]:
    return asyncio.run(rotations.rotate(store, "api-key", actor=actor, context=clock.context()))


def _decide(
    store: Store, clock: FakeClock, request_id: str, approver: str, *, approve: bool = True
) -> RotationState:
    _, state = asyncio.run(
        approvals.decide(
            store,
            request_id,
            approver=approver,
            approve=approve,
            comment="looks right",
            context=clock.context(),
        )
    )
    return state


def _audit_actions(store: Store) -> list[str]:
    with store.transaction() as s:
        return list(s.execute(select(AuditEntry.action).order_by(AuditEntry.seq)).scalars())


def _pending(store: Store) -> approvals.ApprovalView:
    [view] = approvals.requests(store)
    return view


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"policy": {"window": {"days": ["sat", "sun"], "hours": "00:00-24:00"}}},
            "outside the rotation window (sat, sun 00:00-24:00 UTC)",
        ),
        (
            {"governance": {"allowlist": {"credentials": ["payments-*"], "app_ids": []}}},
            "api-key is not in the approved inventory",
        ),
        ({"owner": None}, "api-key has no owner"),
        ({"policy": {"environments": ["prod"]}}, "environment (none) is not allowed"),
    ],
    ids=["outside-window", "not-allowlisted", "no-owner", "wrong-environment"],
)
def test_a_refused_rotation_says_why_and_changes_nothing(
    store: Store, tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    clock = FakeClock(START)
    _apply(store, _estate(tmp_path, **changes))
    before = _audit_actions(store)

    with pytest.raises(PolicyRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        _rotate(store, clock)

    assert rotations_of(store, "api-key") == []
    assert versions(store, "api-key") == []
    assert not (tmp_path / "app.json").exists()
    assert _audit_actions(store) == [*before, "rotation.refused"]


def test_a_grace_shorter_than_the_policy_minimum_is_refused(store: Store, tmp_path: Path) -> None:
    _apply(store, _estate(tmp_path, policy={"min_grace_period": "30m"}))
    with pytest.raises(PolicyRefused, match="grace period 0s is shorter than the policy minimum"):
        asyncio.run(
            rotations.rotate(
                store, "api-key", actor="rita", grace=timedelta(0), context=FakeClock().context()
            )
        )
    assert rotations_of(store, "api-key") == []


def test_an_allowlisted_credential_rotates(store: Store, tmp_path: Path) -> None:
    governance = {"allowlist": {"credentials": ["api-*"]}}
    _apply(store, _estate(tmp_path, governance=governance))
    _, state = _rotate(store, FakeClock(START))
    assert state == RotationState.COMPLETED  # a first version has no old one to keep


# --- approvals ------------------------------------------------------------------------------

TWO_OF_THREE = {"approval": {"approvers": ["group:platform-oncall"], "min_approvals": 2}}


def test_two_of_three_approvers_let_the_rotation_run(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(START)
    _apply(store, _estate(tmp_path, policy=TWO_OF_THREE))

    rotation_id, state = _rotate(store, clock)

    assert state == RotationState.AWAITING_APPROVAL
    assert versions(store, "api-key") == [], "nothing is created before approval"
    request = _pending(store)
    assert request.summary["credential"] == "api-key"
    assert any("publishing:10:file" in step for step in request.summary["steps"])
    assert any("restore the previous value" in r for r in request.summary["rollback"])
    assert _decide(store, clock, request.id, "alice") == RotationState.AWAITING_APPROVAL
    assert _decide(store, clock, request.id, "bob") == RotationState.COMPLETED
    assert json_value(tmp_path / "app.json") is not None
    assert approvals.requests(store) == []
    actions = _audit_actions(store)
    assert actions.count("approval.approved") == 2
    assert "approval.closed" in actions
    assert rotations_of(store, "api-key")[0].id == rotation_id


def test_the_requester_cannot_approve_their_own_rotation(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(START)
    policy = {"approval": {"approvers": ["group:platform-oncall"], "min_approvals": 1}}
    _apply(store, _estate(tmp_path, policy=policy))
    _rotate(store, clock, actor="alice")
    request = _pending(store)

    with pytest.raises(ApprovalRefused, match="requester cannot approve"):
        _decide(store, clock, request.id, "alice")

    assert _pending(store).approvals == []
    assert "approval.refused" in _audit_actions(store)
    assert _decide(store, clock, request.id, "bob") == RotationState.COMPLETED


def test_someone_outside_the_approvers_cannot_approve(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(START)
    _apply(store, _estate(tmp_path, policy=TWO_OF_THREE))
    _rotate(store, clock)
    with pytest.raises(ApprovalRefused, match="mallory is not one of the approvers"):
        _decide(store, clock, _pending(store).id, "mallory")


def test_an_approval_of_one_plan_does_not_authorise_a_changed_plan(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    _apply(store, _estate(tmp_path, policy=TWO_OF_THREE))
    _rotate(store, clock)
    first = _pending(store)
    assert _decide(store, clock, first.id, "alice") == RotationState.AWAITING_APPROVAL

    # The estate changes before the second approval: one more consumer.
    _apply(store, _estate(tmp_path, policy=TWO_OF_THREE, extra_action=True))
    assert _decide(store, clock, first.id, "bob") == RotationState.AWAITING_APPROVAL

    second = _pending(store)
    assert second.id != first.id
    assert second.plan_hash != first.plan_hash
    assert second.approvals == []
    assert versions(store, "api-key") == []
    assert _decide(store, clock, second.id, "alice") == RotationState.AWAITING_APPROVAL
    assert _decide(store, clock, second.id, "carol") == RotationState.COMPLETED
    assert json_value(tmp_path / "extra.json", "K") is not None, "the new plan ran"


def test_an_expired_approval_does_not_count(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(START)
    policy = {
        "approval": {
            "approvers": ["group:platform-oncall"],
            "min_approvals": 2,
            "expires_after": "4h",
        }
    }
    _apply(store, _estate(tmp_path, policy=policy))
    _rotate(store, clock)
    request = _pending(store)
    _decide(store, clock, request.id, "alice")
    clock.advance(timedelta(hours=5))

    assert _decide(store, clock, request.id, "bob") == RotationState.AWAITING_APPROVAL
    assert versions(store, "api-key") == []
    assert _decide(store, clock, request.id, "carol") == RotationState.COMPLETED


def test_a_rejection_fails_the_rotation_and_changes_nothing(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(START)
    _apply(store, _estate(tmp_path, policy=TWO_OF_THREE))
    _rotate(store, clock)

    state = _decide(store, clock, _pending(store).id, "bob", approve=False)

    assert state == RotationState.FAILED
    [rotation] = rotations_of(store, "api-key")
    assert rotation.error == "rejected by bob: looks right"
    assert versions(store, "api-key") == []
    assert not (tmp_path / "app.json").exists()
    _, again = _rotate(store, clock)  # the credential is free for a new request
    assert again == RotationState.AWAITING_APPROVAL


def test_revocation_of_a_critical_credential_waits_for_a_second_approval(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock(START)
    policy = {
        "approval": {
            "approvers": ["group:platform-oncall"],
            "min_approvals": 1,
            "before_revoke": True,
        }
    }
    _apply(store, _estate(tmp_path))
    assert _rotate(store, clock)[1] == RotationState.COMPLETED  # a first version
    _apply(store, _estate(tmp_path, policy=policy))
    _rotate(store, clock)
    assert _decide(store, clock, _pending(store).id, "alice") == RotationState.GRACE
    clock.advance(timedelta(hours=2))

    resumed = asyncio.run(rotations.resume(store, actor="worker", context=clock.context()))
    assert [state for _, _, state in resumed] == [RotationState.AWAITING_REVOKE_APPROVAL]
    assert [v.status for v in versions(store, "api-key")] == ["previous", "current"]
    request = _pending(store)
    assert request.kind == "revoke"
    assert _decide(store, clock, request.id, "carol") == RotationState.COMPLETED


def test_a_governance_change_alone_is_applied(store: Store, tmp_path: Path) -> None:
    _apply(store, _estate(tmp_path))
    _apply(store, _estate(tmp_path, governance={"allowlist": {"credentials": ["other-*"]}}))

    with pytest.raises(PolicyRefused, match="not in the approved inventory"):
        _rotate(store, FakeClock(START))
