"""Approval requests of supervised mode, as the engine opens and evaluates them.

A request names the exact plan (its hash) and holds what an approver needs: the
credential, its application and tenant, the current expiry, the proposed time,
every step that will run and the rollback plan. Decisions count only for that
plan; a plan changed before the rotation runs supersedes the request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from keyshift.domain.durations import format_duration
from keyshift.domain.estate import Approval, Governance, Policy
from keyshift.domain.states import Phase
from keyshift.engine.plan import Plan, stored_plan
from keyshift.governance import (
    NO_EXEMPTIONS,
    Decision,
    Exemptions,
    Tally,
    approval_rule,
    exemptions,
    tally,
)
from keyshift.store.models import (
    ApprovalDecisionRow,
    ApprovalRequestRow,
    CredentialRow,
    EstateRevision,
    Meta,
    RotationRow,
    VersionRow,
)

GOVERNANCE_KEY = "estate.governance"
"""Meta row holding the governance section of the estate last applied (read per request)."""
ROTATION = "rotation"
REVOKE = "revoke"
PENDING = "pending"
WITHDRAWN = "withdrawn"


def governance(s: Session) -> Governance:
    """The governance section of the estate as last applied."""
    stored = s.get(Meta, GOVERNANCE_KEY)
    if stored is not None:
        return Governance.model_validate_json(stored.value)
    # Stores applied before the governance key existed: read the last estate document.
    document = s.execute(
        select(EstateRevision.document).order_by(EstateRevision.id.desc()).limit(1)
    ).scalar_one_or_none()
    if not document:
        return Governance()
    # Only the governance section: validating the whole estate on every request
    # would cost a rotation more than its journal does.
    return Governance.model_validate(document.get("governance") or {})


def current_plan(s: Session, rotation: RotationRow, plan: Plan) -> Plan | None:
    """The plan a rotation of this credential would get from the estate now (None if
    the credential left the estate), keeping the rotation's grace period."""
    cred = s.get(CredentialRow, rotation.credential_id)
    if cred is None or cred.removed_at is not None:
        return None
    return stored_plan(cred.spec, timedelta(seconds=plan.grace_period_s))


def summary(
    s: Session, rotation: RotationRow, plan: Plan, kind: str, now: datetime
) -> dict[str, Any]:
    """What the approver decides on. Ids, names and times only; never a value."""
    cred = s.get(CredentialRow, rotation.credential_id)
    old = s.get(VersionRow, rotation.old_version_id) if rotation.old_version_id else None
    tenants = [str(i.get("tenant_id")) for i in plan.integrations.values() if i.get("tenant_id")]
    base: dict[str, Any] = {
        "credential": plan.credential,
        "owner": cred.owner if cred else None,
        "environment": cred.environment if cred else None,
        "provider": plan.provider_type,
        "app_id": plan.provider_config.get("app_id"),
        "tenant_id": tenants[0] if tenants else None,
        "current_version_id": old.id if old else None,
        "current_expiry": old.expires_at.isoformat() if old and old.expires_at else None,
        "proposed_at": now.isoformat(),
        "plan_hash": plan.hash,
    }
    if kind == REVOKE:
        return {
            **base,
            "steps": [f"revoking: remove the old version {rotation.old_version_id}"],
            "rollback": ["none: a revoked version cannot be restored; the new one stays"],
        }
    switched = [a for a in plan.actions if a.phase in (Phase.PUBLISH, Phase.RELOAD)]
    checks = [a for a in plan.actions if a.phase == Phase.VERIFY]
    return {
        **base,
        "steps": [
            "creating: issue a new version (the current one stays valid)",
            *[f"{a.step} (on_failure: {a.on_failure.value})" for a in plan.actions],
            f"grace: both versions valid for {format_duration(plan.grace_period)}",
            "revoking: remove the old version",
        ],
        "rollback": [
            *[f"restore the previous value: {a.step}" for a in reversed(switched)],
            *[f"check again on the previous value: {a.step}" for a in checks],
            "disable the new version (kept for analysis)",
        ],
    }


def open_request(
    s: Session, rotation: RotationRow, plan: Plan, kind: str, now: datetime
) -> ApprovalRequestRow:
    """The pending request of this kind, or a new one for `plan`."""
    found = pending_request(s, rotation.id, kind)
    if found is not None:
        return found
    row = ApprovalRequestRow(
        id=str(uuid.uuid4()),
        rotation_id=rotation.id,
        kind=kind,
        plan_hash=plan.hash,
        requested_by=rotation.requested_by,
        created_at=now,
        status=PENDING,
        summary=summary(s, rotation, plan, kind, now),
        decided_at=None,
    )
    s.add(row)
    return row


def pending_request(s: Session, rotation_id: str, kind: str) -> ApprovalRequestRow | None:
    return s.execute(
        select(ApprovalRequestRow).where(
            ApprovalRequestRow.rotation_id == rotation_id,
            ApprovalRequestRow.kind == kind,
            ApprovalRequestRow.status == PENDING,
        )
    ).scalar_one_or_none()


def withdraw(s: Session, rotation_id: str, now: datetime) -> list[str]:
    """Close the rotation's pending requests as `withdrawn` (it was rolled back, so there
    is nothing left to decide); returns their ids."""
    pending = s.execute(
        select(ApprovalRequestRow).where(
            ApprovalRequestRow.rotation_id == rotation_id, ApprovalRequestRow.status == PENDING
        )
    ).scalars()
    closed: list[str] = []
    for request in pending:
        request.status, request.decided_at = WITHDRAWN, now
        closed.append(request.id)
    return closed


def granted(s: Session, rotation_id: str, kind: str) -> bool:
    return (
        s.execute(
            select(ApprovalRequestRow.id).where(
                ApprovalRequestRow.rotation_id == rotation_id,
                ApprovalRequestRow.kind == kind,
                ApprovalRequestRow.status == "approved",
            )
        ).first()
        is not None
    )


@dataclass(frozen=True)
class Evaluation:
    request: ApprovalRequestRow
    tally: Tally
    comment: str | None
    """The rejecting approver's comment, when rejected."""
    rule: Approval
    """The rule the decisions were counted under (`rule`)."""


def rule(policy: Policy, kind: str, exempt: Exemptions = NO_EXEMPTIONS) -> Approval | None:
    """The approval rule a request of this kind is held to: the policy's, with one
    approval for a person's break-glass rotation (`governance.approval_rule`); approvals
    before revocation keep the policy's rule."""
    if policy.approval is None:
        return None
    return approval_rule(policy.approval, exempt) if kind == ROTATION else policy.approval


def rule_of(rotation: RotationRow, kind: str) -> Approval | None:
    """`rule` for a stored rotation (its plan's policy, its trigger)."""
    exempt = exemptions(rotation.trigger, from_event=rotation.event_id is not None)
    return rule(Policy.model_validate(rotation.plan["policy"]), kind, exempt)


def evaluate(
    s: Session,
    request: ApprovalRequestRow,
    policy: Policy,
    now: datetime,
    exempt: Exemptions = NO_EXEMPTIONS,
) -> Evaluation:
    """Count the request's decisions under the policy's rules (`rule`)."""
    approval = rule(policy, request.kind, exempt)
    if approval is None:
        raise ValueError("the policy asks for no approval")
    rows = list(
        s.execute(
            select(ApprovalDecisionRow)
            .where(ApprovalDecisionRow.request_id == request.id)
            .order_by(ApprovalDecisionRow.id)
        ).scalars()
    )
    decisions = [Decision(r.approver, r.approved, r.plan_hash, r.decided_at) for r in rows]
    result = tally(
        decisions,
        approval,
        governance(s),
        requester=request.requested_by,
        plan_hash=request.plan_hash,
        now=now,
    )
    comment = next(
        (r.comment for r in rows if not r.approved and result.rejected_by is not None), None
    )
    return Evaluation(request, result, comment, approval)
