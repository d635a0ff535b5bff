"""Use cases of supervised mode: list approval requests, approve, reject.

A decision is refused (and audited) when the approver requested the rotation, is not
one of the policy's approvers, already decided, or the request is no longer pending.
After a decision the rotation is run: it moves on when the policy's rule is met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.domain.states import RotationState
from keyshift.engine import approvals as gates
from keyshift.engine.engine import Engine
from keyshift.engine.journal import StepEvent
from keyshift.errors import ApprovalRefused, NotFound
from keyshift.governance import may_approve, person
from keyshift.store.models import (
    ApprovalDecisionRow,
    ApprovalRequestRow,
    CredentialRow,
    RotationRow,
)
from keyshift.store.store import Store


@dataclass(frozen=True)
class ApprovalView:
    id: str
    rotation_id: str
    credential: str
    kind: str
    status: str
    requested_by: str
    created_at: datetime
    plan_hash: str
    approvals: list[str]
    rejections: list[str]
    needed: int
    approvers: list[str]
    summary: dict[str, Any]


def _view(s: Any, row: ApprovalRequestRow) -> ApprovalView:
    rot = s.get(RotationRow, row.rotation_id)
    cred = s.get(CredentialRow, rot.credential_id)
    approval = gates.rule_of(rot, row.kind)
    decisions = list(
        s.execute(
            select(ApprovalDecisionRow).where(ApprovalDecisionRow.request_id == row.id)
        ).scalars()
    )
    return ApprovalView(
        id=row.id,
        rotation_id=row.rotation_id,
        credential=cred.name,
        kind=row.kind,
        status=row.status,
        requested_by=row.requested_by,
        created_at=row.created_at,
        plan_hash=row.plan_hash,
        approvals=[person(d.approver) for d in decisions if d.approved],
        rejections=[person(d.approver) for d in decisions if not d.approved],
        needed=approval.min_approvals if approval else 0,
        approvers=approval.approvers if approval else [],
        summary=dict(row.summary),
    )


def requests(store: Store, *, pending_only: bool = True) -> list[ApprovalView]:
    with store.transaction() as s:
        query = select(ApprovalRequestRow).order_by(ApprovalRequestRow.created_at)
        if pending_only:
            query = query.where(ApprovalRequestRow.status == gates.PENDING)
        return [_view(s, row) for row in s.execute(query).scalars()]


def _find(s: Any, request_id: str) -> ApprovalRequestRow:
    row = s.get(ApprovalRequestRow, request_id)
    if row is not None:
        return row  # type: ignore[no-any-return]
    matches = list(
        s.execute(
            select(ApprovalRequestRow).where(ApprovalRequestRow.id.startswith(request_id))
        ).scalars()
    )
    if len(matches) != 1 or len(request_id) < 6:
        raise NotFound(f"no approval request {request_id}")
    return matches[0]  # type: ignore[no-any-return]


def show(store: Store, request_id: str) -> ApprovalView:
    with store.transaction() as s:
        return _view(s, _find(s, request_id))


def record(
    store: Store,
    request_id: str,
    *,
    approver: str,
    approve: bool,
    comment: str = "",
    now: datetime,
) -> str:
    """Record one decision on a pending request (audited either way); returns the
    rotation id. Raises ApprovalRefused, with the reason, when the decision may not be
    taken; nothing but the refusal's audit entry is written then. Running the rotation
    afterwards is the caller's part (`decide` runs it now; the API in the background)."""
    refusal: str | None = None
    with store.transaction() as s:
        row = _find(s, request_id)
        rot = s.get(RotationRow, row.rotation_id)
        if rot is None:
            raise NotFound(f"rotation {row.rotation_id} of request {row.id} is gone")
        approval = Policy.model_validate(rot.plan["policy"]).approval
        already = s.execute(
            select(ApprovalDecisionRow.id).where(
                ApprovalDecisionRow.request_id == row.id,
                ApprovalDecisionRow.approver == approver,
            )
        ).first()
        if row.status != gates.PENDING:
            refusal = f"request {row.id} is {row.status}, not pending"
        elif person(approver) == person(row.requested_by):
            refusal = "the requester cannot approve or reject their own rotation"
        elif approval is None or not may_approve(approver, approval, gates.governance(s)):
            allowed = ", ".join(approval.approvers) if approval else "nobody"
            refusal = f"{person(approver)} is not one of the approvers ({allowed})"
        elif already is not None:
            refusal = f"{person(approver)} already decided on request {row.id}"
        if refusal is not None:
            store.audit(
                s,
                actor=approver,
                action="approval.refused",
                subject=f"rotation:{row.rotation_id}",
                details={"request_id": row.id, "reason": refusal},
            )
        else:
            s.add(
                ApprovalDecisionRow(
                    request_id=row.id,
                    approver=approver,
                    approved=approve,
                    comment=comment,
                    plan_hash=row.plan_hash,
                    decided_at=now,
                )
            )
            store.audit(
                s,
                actor=approver,
                action="approval.approved" if approve else "approval.rejected",
                subject=f"rotation:{row.rotation_id}",
                details={
                    "request_id": row.id,
                    "kind": row.kind,
                    "plan_hash": row.plan_hash,
                    "comment": comment,
                },
            )
        rotation_id: str = row.rotation_id
    if refusal is not None:
        raise ApprovalRefused(refusal)
    return rotation_id


async def decide(
    store: Store,
    request_id: str,
    *,
    approver: str,
    approve: bool,
    comment: str = "",
    context: PluginContext | None = None,
    on_event: Callable[[StepEvent], None] | None = None,
) -> tuple[str, RotationState]:
    """Record a decision, then run the rotation (it moves on when the rule is met).
    Returns the rotation id and the state it stopped in."""
    engine = Engine(store, actor=approver, context=context, on_event=on_event)
    rotation_id = record(
        store,
        request_id,
        approver=approver,
        approve=approve,
        comment=comment,
        now=engine.context.now(),
    )
    return rotation_id, await engine.run(rotation_id)
