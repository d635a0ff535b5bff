"""`keyshift rollback`: an operator rolls back a rotation whose new version is bad (issue 7:
"rotations (start, dry run, show with steps, resume, roll back)").

The previous value goes back to the consumers that were switched, their reloads run again,
the new version is kept disabled with an expiry, and the rotation ends `rolled_back`; the
decision is audited with who and why. Every refusal changes nothing.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from keyshift.domain.states import RotationState
from keyshift.engine.run import RETAIN_DISABLED
from keyshift.errors import ConfigError, KeyshiftError, LeaseHeld, NotFound, RollbackRefused
from keyshift.providers.base import Capability, VerifyRequest, VerifyResult
from keyshift.providers.random import RandomProvider
from keyshift.service import approvals as approvals_service
from keyshift.service import evidence as evidence_service
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store import audit
from keyshift.store.models import AuditEntry, CredentialRow, RotationRow
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import Cli
from tests.helpers import (
    audit_details,
    env_value,
    json_value,
    rotations_of,
    steps,
    value_of,
    versions,
    write_estate,
)

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

CREDENTIAL = "api-key"
REASON = "the new key is refused by the payment gateway"


def _rotate(store: Store, clock: FakeClock, grace: str = "1h") -> tuple[str, RotationState]:
    return asyncio.run(
        rotations.rotate(
            store,
            CREDENTIAL,
            actor="test-operator",
            grace=timedelta(hours=1) if grace == "1h" else timedelta(0),
            context=clock.context(),
        )
    )


def _roll_back(
    store: Store, clock: FakeClock, rotation_id: str, *, actor: str = "alice"
) -> tuple[str, RotationState]:
    return asyncio.run(
        rotations.roll_back(store, rotation_id, actor=actor, reason=REASON, context=clock.context())
    )


def _in_grace(store: Store, tmp_path: Path, clock: FakeClock) -> str:
    """A first version, then a rotation that published a second one and waits in grace."""
    apply_estate(store, load_estate(write_estate(tmp_path)), actor="test")
    assert _rotate(store, clock)[1] == RotationState.COMPLETED  # the first version
    rotation_id, state = _rotate(store, clock)
    assert state == RotationState.GRACE
    return rotation_id


def _snapshot(store: Store, tmp_path: Path) -> dict[str, Any]:
    """What a refused rollback must leave as it was."""
    with store.transaction() as s:
        entries = s.execute(select(func.count()).select_from(AuditEntry)).scalar_one()
        active = s.execute(
            select(CredentialRow.active_rotation_id).where(CredentialRow.name == CREDENTIAL)
        ).scalar_one()
    return {
        "rotations": [(r.id, r.state, r.error) for r in rotations_of(store, CREDENTIAL)],
        "versions": [(v.id, v.status, v.expires_at) for v in versions(store, CREDENTIAL)],
        "audit": entries,
        "active": active,
        "files": {
            p.name: p.read_text(encoding="utf-8") for p in sorted(tmp_path.iterdir()) if p.is_file()
        },
    }


def test_a_rollback_in_grace_puts_the_old_value_back_and_disables_the_new_version(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    rotation_id = _in_grace(store, tmp_path, clock)
    old, new = versions(store, CREDENTIAL)
    old_value, new_value = value_of(store, old), value_of(store, new)
    assert json_value(tmp_path / "app.json") == new_value
    reloads_before = (tmp_path / "reload.log").read_text(encoding="utf-8").splitlines()

    full_id, state = _roll_back(store, clock, rotation_id[:8])

    assert (full_id, state) == (rotation_id, RotationState.ROLLED_BACK)
    assert json_value(tmp_path / "app.json") == old_value
    assert env_value(tmp_path / "app.env") == old_value
    reloads = (tmp_path / "reload.log").read_text(encoding="utf-8").splitlines()
    assert reloads[len(reloads_before) :] == [f"rollback {old.id}"], "reloaded once, old value"
    old, new = versions(store, CREDENTIAL)
    assert (old.status, new.status) == ("current", "disabled")
    assert new.expires_at == clock.now() + RETAIN_DISABLED
    assert value_of(store, new) == new_value, "kept for analysis"
    rotation = rotations_of(store, CREDENTIAL)[-1]
    assert rotation.state == "rolled_back"
    assert rotation.error == f"rolled back by alice: {REASON}"
    # Newest publish first, then the reload, each once.
    undone = [st.name for st in steps(store, rotation_id) if st.name.startswith("rollback:")]
    assert undone == [
        "rollback:publishing:20:file",
        "rollback:publishing:10:file",
        "rollback:reloading:30:command",
    ]

    [decision] = audit_details(store, "rotation.rollback")
    assert decision["by"] == "alice"
    assert decision["reason"] == REASON
    assert decision["rotation_id"] == rotation_id
    assert decision["from_state"] == "grace"
    assert (decision["old_version_id"], decision["new_version_id"]) == (old.id, new.id)
    assert audit_details(store, "rotation.finished")[-1]["state"] == "rolled_back"
    with store.transaction() as s:
        audit.verify(s)
        active = s.execute(
            select(CredentialRow.active_rotation_id).where(CredentialRow.name == CREDENTIAL)
        ).scalar_one()
    assert active is None, "the credential is free for a new rotation"

    bundle = evidence_service.export(store, rotation_id, actor="auditor", now=clock.now())
    assert bundle["rotation"]["final_state"] == "rolled_back"
    assert bundle["rollback"] == {
        "by": "alice",
        "at": bundle["rollback"]["at"],
        "reason": REASON,
        "from_state": "grace",
    }
    assert evidence_service.verify(store, bundle).ok
    bundle["rollback"]["reason"] = "routine"
    assert "rollback" in (evidence_service.verify(store, bundle).problem or "")

    # The credential rotates again afterwards, from the restored version.
    _, again = _rotate(store, clock)
    assert again == RotationState.GRACE


def _needing_attention(store: Store, tmp_path: Path, clock: FakeClock) -> str:
    """A rotation that ended needs_attention with its old version still valid: a reload
    (`on_failure: continue`) never took the new version, so the old one was kept."""
    app = tmp_path / "app.json"
    actions: list[dict[str, Any]] = [
        {
            "type": "file",
            "order": 10,
            "on_failure": "abort",
            "config": {"path": str(app), "key": "Api:Key", "file_format": "json"},
        },
        {
            "type": "command",
            "order": 30,
            "on_failure": "continue",
            "config": {"argv": [sys.executable, "-c", "raise SystemExit(1)"]},
        },
    ]
    apply_estate(store, load_estate(write_estate(tmp_path, actions=actions)), actor="test")
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock)
    assert state == RotationState.GRACE
    clock.advance(timedelta(hours=2))
    [(_, _, after)] = asyncio.run(rotations.resume(store, actor="worker", context=clock.context()))
    assert after == RotationState.NEEDS_ATTENTION
    return rotation_id


def test_a_rotation_that_ended_needing_attention_with_the_old_version_valid_rolls_back(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    app = tmp_path / "app.json"
    rotation_id = _needing_attention(store, tmp_path, clock)
    old, _new = versions(store, CREDENTIAL)
    assert old.status == "previous"

    _, state = _roll_back(store, clock, rotation_id)

    assert state == RotationState.ROLLED_BACK
    assert json_value(app) == value_of(store, old)
    old, new = versions(store, CREDENTIAL)
    assert (old.status, new.status) == ("current", "disabled")
    assert audit_details(store, "rotation.rollback")[0]["from_state"] == "needs_attention"
    with store.transaction() as s:
        audit.verify(s)


def test_a_rotation_needing_attention_is_not_rolled_back_under_a_newer_one(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    rotation_id = _needing_attention(store, tmp_path, clock)
    newer = rotations.request(store, CREDENTIAL, actor="bob")
    before = _snapshot(store, tmp_path)

    with pytest.raises(RollbackRefused, match=f"has rotation {newer} in progress"):
        _roll_back(store, clock, rotation_id)

    assert _snapshot(store, tmp_path) == before


def test_a_rollback_waiting_for_revoke_approval_withdraws_the_request(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    policy = {
        "grace_period": "1h",
        "max_lifetime": "90d",
        "approval": {
            "required": False,
            "before_revoke": True,
            "approvers": ["user:bob", "user:carol"],
        },
    }
    apply_estate(store, load_estate(write_estate(tmp_path, policy=policy)), actor="test")
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock)
    clock.advance(timedelta(hours=2))
    [(_, _, waiting)] = asyncio.run(
        rotations.resume(store, actor="worker", context=clock.context())
    )
    assert (state, waiting) == (RotationState.GRACE, RotationState.AWAITING_REVOKE_APPROVAL)

    assert _roll_back(store, clock, rotation_id)[1] == RotationState.ROLLED_BACK

    [decision] = audit_details(store, "rotation.rollback")
    assert decision["from_state"] == "awaiting_revoke_approval"
    assert len(decision["withdrawn_requests"]) == 1
    assert approvals_service.requests(store) == [], "nothing left to decide"
    [request] = approvals_service.requests(store, pending_only=False)[-1:]
    assert request.status == "withdrawn"


def test_a_completed_rotation_is_refused_with_the_way_forward(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    apply_estate(store, load_estate(write_estate(tmp_path)), actor="test")
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock, grace="0s")
    assert state == RotationState.COMPLETED
    before = _snapshot(store, tmp_path)

    with pytest.raises(RollbackRefused) as refused:
        _roll_back(store, clock, rotation_id)

    assert "is revoked" in str(refused.value)
    assert "start a new rotation" in str(refused.value)
    assert _snapshot(store, tmp_path) == before


def test_a_second_rollback_is_refused_as_already_rolled_back(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    rotation_id = _in_grace(store, tmp_path, clock)
    _roll_back(store, clock, rotation_id)
    before = _snapshot(store, tmp_path)

    with pytest.raises(RollbackRefused, match="already rolled back"):
        _roll_back(store, clock, rotation_id, actor="bob")

    assert _snapshot(store, tmp_path) == before


def test_a_failed_rotation_is_refused(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    apply_estate(store, load_estate(write_estate(tmp_path)), actor="test")
    (tmp_path / "app.json").write_text("not json", encoding="utf-8")
    (tmp_path / "reload.log").write_text("", encoding="utf-8")
    rotation_id, state = _rotate(store, clock)
    assert state == RotationState.FAILED  # preflight: app.json does not parse
    before = _snapshot(store, tmp_path)

    with pytest.raises(RollbackRefused, match="failed"):
        _roll_back(store, clock, rotation_id)

    assert _snapshot(store, tmp_path) == before


def test_an_unknown_rotation_and_a_missing_reason_are_refused(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    rotation_id = _in_grace(store, tmp_path, clock)
    before = _snapshot(store, tmp_path)

    with pytest.raises(NotFound):
        _roll_back(store, clock, "no-such-rotation")
    with pytest.raises(ConfigError) as missing:
        asyncio.run(
            rotations.roll_back(
                store, rotation_id, actor="alice", reason="  ", context=clock.context()
            )
        )
    assert missing.value.path == "reason"
    assert _snapshot(store, tmp_path) == before


def test_a_rotation_leased_by_a_live_worker_is_refused(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    rotation_id = _in_grace(store, tmp_path, clock)
    with store.transaction() as s:
        row = s.get(RotationRow, rotation_id)
        assert row is not None
        row.lease_owner = "elsewhere/1/abc"
        row.lease_expires_at = clock.now() + timedelta(minutes=5)
    before = _snapshot(store, tmp_path)

    with pytest.raises(LeaseHeld):
        _roll_back(store, clock, rotation_id)

    assert _snapshot(store, tmp_path) == before


def test_two_rollbacks_at_once_roll_back_once(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    rotation_id = _in_grace(store, tmp_path, clock)
    start = threading.Barrier(2)
    outcomes: list[RotationState | KeyshiftError] = []

    def attempt(actor: str) -> None:
        start.wait()
        try:
            outcomes.append(_roll_back(store, clock, rotation_id, actor=actor)[1])
        except (LeaseHeld, RollbackRefused) as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=attempt, args=(who,)) for who in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(outcomes) == 2
    assert outcomes.count(RotationState.ROLLED_BACK) == 1, outcomes
    assert len(audit_details(store, "rotation.rollback")) == 1
    undone = [st.name for st in steps(store, rotation_id) if st.name.startswith("rollback:")]
    assert len(undone) == len(set(undone)) == 3, "each consumer restored once"


def test_the_rollback_command_rolls_back_and_refuses_a_second_time(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    for args in (
        ("apply", "-f", str(write_estate(tmp_path))),
        ("rotate", CREDENTIAL),
        ("rotate", CREDENTIAL, "--grace", "1h"),
    ):
        assert cli(*args).exit_code == 0
    rotation_id = rotations_of(store, CREDENTIAL)[-1].id

    missing = cli("rollback", rotation_id[:8])
    done = cli("rollback", rotation_id[:8], "--reason", REASON)
    again = cli("rollback", rotation_id, "--reason", REASON)

    assert missing.exit_code == 2, "--reason is required"
    assert done.exit_code == 0, done.output
    assert f"rotation {rotation_id} rolled_back" in done.output
    assert f"rolled back by test-operator: {REASON}" in done.output
    for version in versions(store, CREDENTIAL):
        assert value_of(store, version) not in done.output + again.output
    assert again.exit_code == 1
    assert "already rolled back" in again.output
    [decision] = audit_details(store, "rotation.rollback")
    assert decision["by"] == "test-operator"
    roles = cli("roles", "list").output
    assert "rotator" in roles


def test_the_first_version_has_nothing_to_go_back_to(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    apply_estate(store, load_estate(write_estate(tmp_path)), actor="test")
    first_id, _ = _rotate(store, clock)

    with pytest.raises(RollbackRefused, match="first version"):
        _roll_back(store, clock, first_id)


@pytest.mark.parametrize(
    ("capability", "verify_ok", "refusal"),
    [
        (Capability.IN_PLACE, True, "replaced the old value in place"),
        (Capability.AUTHENTICATES, False, "no longer authenticates"),
    ],
    ids=["issuer-replaces-in-place", "issuer-refuses-the-old-version"],
)
def test_an_old_version_that_cannot_work_again_is_not_put_back(
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capability: Capability,
    verify_ok: bool,
    refusal: str,
) -> None:
    clock = FakeClock()
    rotation_id = _in_grace(store, tmp_path, clock)
    verified: list[str] = []

    async def verify(_self: RandomProvider, request: VerifyRequest) -> VerifyResult:
        verified.append(request.version.provider_ref)
        return VerifyResult(verify_ok, "refused by the issuer")

    monkeypatch.setattr(
        RandomProvider, "capabilities", frozenset({Capability.DUAL_ACTIVE, capability})
    )
    monkeypatch.setattr(RandomProvider, "verify", verify)
    before = _snapshot(store, tmp_path)

    with pytest.raises(RollbackRefused, match=refusal):
        _roll_back(store, clock, rotation_id)

    assert _snapshot(store, tmp_path) == before
    old, _new = versions(store, CREDENTIAL)
    assert verified == ([old.provider_ref] if capability == Capability.AUTHENTICATES else [])


def test_the_reactivated_old_version_gets_an_explicit_expiry_and_owner(
    store: Store, tmp_path: Path
) -> None:
    # The first version was issued before the policy had a max_lifetime: no expiry.
    clock = FakeClock()
    apply_estate(
        store, load_estate(write_estate(tmp_path, policy={"grace_period": "1h"})), actor="test"
    )
    assert _rotate(store, clock)[1] == RotationState.COMPLETED
    apply_estate(store, load_estate(write_estate(tmp_path)), actor="test")  # max_lifetime 90d
    rotation_id, state = _rotate(store, clock)
    assert state == RotationState.GRACE
    old, _new = versions(store, CREDENTIAL)
    assert old.expires_at is None

    _roll_back(store, clock, rotation_id)

    old, _new = versions(store, CREDENTIAL)
    assert old.status == "current"
    assert old.expires_at == clock.now() + timedelta(days=90), "rotated again in time"
    [reactivated] = audit_details(store, "version.reactivated")
    assert reactivated == {
        "credential": CREDENTIAL,
        "version_id": old.id,
        "fingerprint": old.fingerprint,
        "owner": "team-test",
        "reactivated_by": "alice",
        "expires_at": old.expires_at.isoformat(),
    }
