"""The notification outbox: the engine's state changes that operators are told of,
written as `notifications` rows inside the transaction that makes the change.

A rotation that ends failed, rolled back, needing attention or completed, an approval
requested and an approval decided each become one row with a fresh dedup key. The row
commits with the change or not at all, so a worker killed between the change and the
delivery loses no event, and a delivery retried after a crash carries the same key.
Routing to channels and delivery happen later (`service.notifications`), so a channel
that is down never fails or delays a rotation.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from keyshift.domain import notifications as kinds
from keyshift.domain.states import RotationState, StepStatus
from keyshift.engine import approvals, rows
from keyshift.engine.events import EngineEvent, Subscriber
from keyshift.store.models import (
    ApprovalRequestRow,
    CredentialRow,
    NotificationRow,
    RotationRow,
    StepRow,
    VersionRow,
)

__all__ = ["Outbox", "event_kinds", "queue"]

_FINAL = {
    RotationState.FAILED: kinds.ROTATION_FAILED,
    RotationState.ROLLED_BACK: kinds.ROTATION_ROLLED_BACK,
    RotationState.NEEDS_ATTENTION: kinds.ROTATION_NEEDS_ATTENTION,
    RotationState.COMPLETED: kinds.ROTATION_COMPLETED,
}
_AWAITING = {
    RotationState.AWAITING_APPROVAL: approvals.ROTATION,
    RotationState.AWAITING_REVOKE_APPROVAL: approvals.REVOKE,
}


def event_kinds(event: EngineEvent) -> list[str]:
    """The notification kinds one state change causes (none for most)."""
    if event.kind != "rotation.state":
        return []
    found: list[str] = []
    if event.previous in _AWAITING and event.state not in _AWAITING:
        found.append(kinds.APPROVAL_DECIDED)
    if event.state in _AWAITING and event.previous != event.state:
        found.append(kinds.APPROVAL_REQUESTED)
    if event.state in _FINAL:
        found.append(_FINAL[event.state])
    return found


def queue(
    s: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    at: datetime,
    rotation_id: str | None = None,
    credential: str | None = None,
) -> None:
    """Queue one event in the outbox, in the caller's transaction, with a fresh dedup key
    (kept by every delivery attempt of it)."""
    s.add(
        NotificationRow(
            dedup_key=uuid.uuid4().hex,
            kind=kind,
            rotation_id=rotation_id,
            credential=credential,
            created_at=at,
            payload={"event": kind, **payload},
            routed=False,
        )
    )


class Outbox(Subscriber):
    """Queues the events operators are told of, in the change's own transaction."""

    def in_transaction(self, s: Session, event: EngineEvent) -> None:
        for kind in event_kinds(event):
            queue(
                s,
                kind,
                _payload(s, event, kind),
                at=event.at,
                rotation_id=event.rotation_id,
                credential=event.credential,
            )


def _payload(s: Session, event: EngineEvent, kind: str) -> dict[str, Any]:
    """What a message says: ids, names, states, the failing step and its error."""
    s.flush()  # the change this event reports is visible to the reads below
    rot = rows.rotation(s, event.rotation_id)
    cred = s.get(CredentialRow, rot.credential_id)
    payload: dict[str, Any] = {
        "event": kind,
        "credential": event.credential,
        "owner": cred.owner if cred else None,
        "environment": cred.environment if cred else None,
        "rotation_id": rot.id,
        "state": event.state.value,
        "previous_state": event.previous.value if event.previous else None,
        "reason": rot.reason,
        "requested_by": rot.requested_by,
        "error": rot.error,
        "attention": rot.attention,
        "plan_hash": rot.plan_hash,
        **_versions(s, rot),
        "at": event.at.isoformat(),
    }
    failed = s.execute(
        select(StepRow.name, StepRow.error)
        .where(StepRow.rotation_id == rot.id, StepRow.status == StepStatus.FAILED.value)
        .order_by(StepRow.seq.desc())
        .limit(1)
    ).first()
    payload["failed_step"] = failed[0] if failed else None
    payload["failed_step_error"] = failed[1] if failed else None
    approval_kind = _AWAITING.get(event.state) or _AWAITING.get(event.previous or event.state)
    if kind in (kinds.APPROVAL_REQUESTED, kinds.APPROVAL_DECIDED) and approval_kind:
        payload.update(_approval(s, rot, approval_kind, kind))
    return payload


def _versions(s: Session, rot: RotationRow) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, version_id in (("old", rot.old_version_id), ("new", rot.new_version_id)):
        row = s.get(VersionRow, version_id) if version_id else None
        out[f"{side}_version_id"] = version_id
        out[f"{side}_fingerprint"] = row.fingerprint if row else None
    return out


def _approval(s: Session, rot: RotationRow, approval_kind: str, kind: str) -> dict[str, Any]:
    """The request the event is about: for `approval.requested` what changes, the rollback
    plan and how to decide; for `approval.decided` its outcome."""
    request = s.execute(
        select(ApprovalRequestRow)
        .where(ApprovalRequestRow.rotation_id == rot.id, ApprovalRequestRow.kind == approval_kind)
        .order_by(ApprovalRequestRow.created_at.desc())
        .limit(1)
    ).scalar_one_or_none()
    if request is None:
        return {"approval_kind": approval_kind}
    # The rule the rotation is held to (one approval for a person's break-glass).
    approval = approvals.rule_of(rot, approval_kind)
    out: dict[str, Any] = {
        "approval_kind": approval_kind,
        "request_id": request.id,
        "request_status": request.status,
        "approvers": list(approval.approvers) if approval else [],
        "min_approvals": approval.min_approvals if approval else 1,
    }
    if kind == kinds.APPROVAL_REQUESTED:
        summary = dict(request.summary)
        out.update(
            {
                "steps": list(summary.get("steps") or []),
                "rollback": list(summary.get("rollback") or []),
                "plan_hash": request.plan_hash,
                "decide": f"keyshift approve {request.id}  (or: keyshift reject {request.id})",
            }
        )
    return out
