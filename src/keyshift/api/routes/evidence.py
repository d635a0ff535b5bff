"""Evidence and audit: a rotation's evidence bundle and its verification, the audit
chain's verification and its export as JSON Lines."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from keyshift.api.auth import StoreDep, caller
from keyshift.api.routes.common import RotationId, actor_of, v1_router
from keyshift.domain.clock import utcnow
from keyshift.domain.rbac import Permission
from keyshift.service import evidence as evidence_service
from keyshift.service.identities import Identity

router = v1_router()


@router.get("/rotations/{rotation_id}/evidence", tags=["audit"])
def rotation_evidence(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.AUDIT_READ)],
    rotation_id: RotationId,
) -> dict[str, Any]:
    """The rotation's evidence bundle (`keyshift-evidence/1`): request, approvals, plan and
    hash, executor version, steps, versions by id and fingerprint, residual use, blast
    radius and the audit entries that attest them. The same document as `keyshift evidence`."""
    return evidence_service.export(store, rotation_id, actor=actor_of(who), now=utcnow())


class EvidenceVerification(BaseModel):
    ok: bool
    entries: int
    """Audit entries of the rotation that were checked."""
    chain_entries: int
    """Entries of the store's whole chain that verified (0 when the check stopped before)."""
    problem: str | None
    """The first mismatch, when the bundle does not verify."""


@router.post("/evidence/verify", tags=["audit"])
def verify_evidence(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.AUDIT_READ)],
    bundle: Annotated[
        dict[str, Any],
        Body(description="An evidence bundle, as exported.", examples=[{"format": "x"}]),
    ],
) -> EvidenceVerification:
    """Check a bundle against itself and the store's audit chain; name the first mismatch.
    A bundle that does not verify is still a 200 answer with `ok: false`."""
    result = evidence_service.verify(store, bundle)
    return EvidenceVerification(
        ok=result.ok,
        entries=result.entries,
        chain_entries=result.chain_entries,
        problem=result.problem,
    )


# Audit ----------------------------------------------------------------------------------


@router.get("/audit/verify", tags=["audit"])
def audit_verify(
    store: StoreDep, who: Annotated[Identity, caller(Permission.AUDIT_READ)]
) -> evidence_service.ChainCheck:
    """Recompute the hash chain; name the first edited, deleted or reordered entry."""
    return evidence_service.verify_chain(store)


@router.get(
    "/audit/export",
    tags=["audit"],
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def audit_export(
    store: StoreDep, who: Annotated[Identity, caller(Permission.AUDIT_READ)]
) -> StreamingResponse:
    """Every audit entry as JSON Lines (for a SIEM), streamed a page at a time."""
    return StreamingResponse(evidence_service.audit_lines(store), media_type="application/x-ndjson")
