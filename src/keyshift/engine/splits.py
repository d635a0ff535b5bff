"""The split a `rollback: failing_only` rotation can end in: some consumers on the new
version, the others on the old one, both versions valid.

Consumers of such a rotation switch one after another (`Plan.one_by_one`). When a
check fails, `Rollback` puts back only the consumer it failed for (`failing_action`
names it); those before it passed their checks and keep the new version, those after
it never got it. The rotation then ends `needs_attention` with the split recorded on
it (`residual["split"]`, audited as `rotation.split`): neither version may be revoked
while a consumer uses it, so no new rotation of the credential starts (`refusals`)
until an operator resolves the split with `keyshift rollback`, which puts every
consumer back on the old version.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from keyshift.domain.states import OnFailure, Phase, RotationState, StepStatus
from keyshift.engine.plan import Plan, PlannedAction, consumer_name
from keyshift.store.models import RotationRow, StepRow

__all__ = ["SPLIT", "Split", "failing_action", "refusals"]

SPLIT = "split"
"""The key of the split in a rotation's `residual` (evidence of who uses which version)."""


def failing_action(plan: Plan, journal: Sequence[StepRow]) -> PlannedAction | None:
    """The action whose `on_failure: abort` failure sent a `failing_only` rotation to roll
    back, when it belongs to a consumer: only that consumer goes back. None when every
    switched consumer goes back: another policy, a failure at the issuer
    (`verifying:provider`), or a rollback decided by hand."""
    if not plan.failing_only:
        return None
    by_step = {a.step: a for a in plan.actions}
    failed = [
        step.name
        for step in journal
        if step.status == StepStatus.FAILED.value and not step.name.startswith("rollback:")
    ]
    action = by_step.get(failed[-1]) if failed else None
    if action is None or action.on_failure != OnFailure.ABORT or action.phase == Phase.NOTIFY:
        return None
    return action


class Split:
    """Who is on which version once `failing` was put back (its restore may have failed:
    `not_restored` then names it and why)."""

    def __init__(self, plan: Plan, failing: PlannedAction, not_restored: list[str]) -> None:
        consumers = plan.consumers()
        at = consumers.index(failing.consumer)
        self.failing = failing
        self.on_new = [consumer_name(c) for c in consumers[:at]]
        self.never_switched = [consumer_name(c) for c in consumers[at + 1 :]]
        self.not_restored = not_restored
        self.rolled_back = [] if not_restored else [failing.consumer_name]

    @property
    def splits(self) -> bool:
        """Whether some consumer kept the new version; if none did, the rollback is a
        plain one (every consumer that got the new version is back on the old one)."""
        return bool(self.on_new)

    def record(self, rotation_id: str, old: str | None, new: str | None) -> dict[str, Any]:
        """The split as stored on the rotation and audited."""
        return {
            "rollback": "failing_only",
            "failed_step": self.failing.step,
            "on_new": self.on_new,
            "rolled_back": self.rolled_back,
            "not_restored": self.not_restored,
            "never_switched": self.never_switched,
            "old_version_id": old,
            "new_version_id": new,
            "resolve": f"keyshift rollback {rotation_id}",
        }


def attention(split: dict[str, Any]) -> str:
    """The split in words, for the rotation's attention text."""
    parts = [
        f"rollback: failing_only split the consumers: {', '.join(split['on_new'])} keep(s) "
        f"the new version {split['new_version_id']}"
    ]
    if split["rolled_back"]:
        parts.append(
            f"{', '.join(split['rolled_back'])} rolled back to the old version "
            f"{split['old_version_id']} ({split['failed_step']} failed)"
        )
    if split["not_restored"]:
        parts.append(
            f"{', '.join(split['not_restored'])} could not be restored and is still on the "
            "new version"
        )
    if split["never_switched"]:
        parts.append(
            f"{', '.join(split['never_switched'])} never switched (propagation stopped) and "
            "stay(s) on the old version"
        )
    parts.append(
        "both versions stay valid and the old one is not revoked while consumers use it; "
        f"`{split['resolve']}` puts every consumer back on the old version"
    )
    return "; ".join(parts)


def on_old(split: dict[str, Any]) -> list[str]:
    """The consumers a split left on the old version."""
    return [*split["rolled_back"], *split["never_switched"]]


def refusals(s: Session, credential_id: str) -> list[str]:
    """Why no new rotation of the credential may start: one of its rotations ended in a
    split nobody resolved (rolling it back ends it `rolled_back`). A new rotation would
    retire the version that consumers on the old side still use (an alternating user's
    password is set anew; the next grace period ends with a revocation)."""
    attended = s.execute(
        select(RotationRow.id, RotationRow.residual).where(
            RotationRow.credential_id == credential_id,
            RotationRow.state == RotationState.NEEDS_ATTENTION.value,
        )
    ).all()
    reasons: list[str] = []
    for rotation_id, residual in attended:
        split = (residual or {}).get(SPLIT)
        if not split:
            continue
        reasons.append(
            f"rotation {rotation_id} left {', '.join(on_old(split)) or 'no consumer'} on the "
            f"old version and {', '.join(split['on_new'])} on the new one (rollback: "
            f"failing_only); resolve that first: `{split['resolve']}` puts every consumer "
            "back on the old version, then rotate again"
        )
    return reasons
