"""Requesting a rotation: governance first, then the request recorded with its frozen
plan, the credential claimed by it, and the request audited, in one transaction.

The claim is a conditional update of the credential row, so two requests of the same
credential cannot both succeed; a refusal is audited and changes nothing else.

A worker's request (`guard` given) locks the credential's row first, passing over one
another worker holds, and asks the guard whether the credential is still due inside the
same transaction: of several workers sharing a store, exactly one starts each due
rotation, and none starts one that another finished a moment ago.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.orm import Session

from keyshift import __version__
from keyshift.context import PluginContext
from keyshift.domain.estate import CredentialSpec, Policy, disabled_integrations
from keyshift.domain.states import RotationState, Trigger
from keyshift.domain.triggers import EventRef
from keyshift.engine import approvals, freezes, rows, splits
from keyshift.engine.events import EngineEvent, EventBus
from keyshift.engine.leases import Leases
from keyshift.engine.plan import Plan, build_plan
from keyshift.errors import (
    ConfigError,
    KeyshiftError,
    NotClaimed,
    PermissionDenied,
    PolicyRefused,
)
from keyshift.governance import (
    BREAK_GLASS_PERMISSION,
    break_glass_refusal,
    exemptions,
    refusals,
)
from keyshift.store.models import CredentialRow, RotationRow
from keyshift.store.store import Store

__all__ = ["Guard", "Requests"]

log = structlog.get_logger("keyshift.engine")

Guard = Callable[[Session, CredentialRow], str | None]
"""Asked inside the request's transaction, with the credential's row locked: why the
credential is not to be rotated after all (no longer due), or None to go on."""


class Requests:
    """Records requested rotations."""

    def __init__(
        self, store: Store, events: EventBus, context: PluginContext, leases: Leases
    ) -> None:
        self.store = store
        self.events = events
        self.context = context
        self.leases = leases

    def request(
        self,
        credential: str,
        *,
        requested_by: str,
        reason: str = "manual",
        trigger: Trigger = Trigger.CLI,
        grace: timedelta | None = None,
        audit_refusal: bool = True,
        guard: Guard | None = None,
        lease: bool = False,
        break_glass_permitted: bool = True,
        event: EventRef | None = None,
    ) -> str:
        """Record a new rotation of `credential` in state `requested` and return its id.

        Governance is checked first (allowlist, owner, environment, window, overlap,
        freezes): a refusal raises PolicyRefused, is audited (unless `audit_refusal` is
        off) and changes nothing else. Refused too while another rotation of the same
        credential is unfinished: the credential row is claimed with a conditional
        update, so two requests cannot both succeed.

        A break-glass request (`trigger` break-glass) skips the window and, asked by a
        person (no `event`), every freeze; a person's break-glass of a `prod` credential
        needs `break_glass_permitted` (the caller holds `rotations:break_glass`), else it
        is refused (audited) with PermissionDenied. `event`: the inbound event that asked
        for it, audited and stored with it.

        With `guard` (the worker's scheduled rotations) the credential's row is locked
        first and NotClaimed raised, changing nothing, when another worker holds it or
        has a rotation of it under way, or when the guard says it is no longer due. With
        `lease` the rotation is born leased to this engine, so that no other worker can
        take it between its request and its run.
        """
        if trigger == Trigger.BREAK_GLASS and not reason.strip():
            raise ConfigError("reason", "is required with break-glass: say why")
        exempt = exemptions(trigger, from_event=event is not None)
        rotation_id = str(uuid.uuid4())
        now = self.context.now()
        with self.store.transaction() as s:
            if guard is None:
                cred = rows.credential(s, credential)
            else:
                cred = self._claimable(s, credential, guard)
            spec = CredentialSpec.model_validate(cred.spec["credential"])
            policy = Policy.model_validate(cred.spec["policy"])
            plan = build_plan(spec, policy, grace, cred.spec.get("integrations", {}))
            denied = (
                break_glass_refusal(spec.environment, permitted=break_glass_permitted)
                if exempt.freezes
                else []
            )
            refused = denied + refusals(
                spec,
                policy,
                approvals.governance(s),
                now=now,
                grace=plan.grace_period,
                disabled=disabled_integrations(cred.spec.get("integrations", {})),
                exempt=exempt,
            )
            if not exempt.freezes:
                refused += freezes.refusals(
                    freezes.holding(s, now), spec.name, spec.owner, spec.environment
                )
            # A split rotation's consumers still use both versions (`splits`).
            refused += splits.refusals(s, cred.id)
            if refused:
                if audit_refusal:
                    self.store.audit(
                        s,
                        actor=requested_by,
                        action="rotation.refused",
                        subject=f"credential:{credential}",
                        details={
                            "reasons": refused,
                            "reason": reason,
                            "trigger": trigger.value,
                            "break_glass": exempt.break_glass,
                            **_event_details(event),
                            "plan_hash": plan.hash,
                        },
                    )
            else:
                self._record(
                    s,
                    cred,
                    plan,
                    rotation_id=rotation_id,
                    by=requested_by,
                    reason=reason,
                    trigger=trigger,
                    now=now,
                    lease=lease,
                    event=event,
                )
        if refused:
            # Raised once the refusal's audit entry is committed; nothing else changed.
            if denied:
                raise PermissionDenied(requested_by, BREAK_GLASS_PERMISSION)
            raise PolicyRefused(credential, refused)
        log.info("rotation requested", rotation_id=rotation_id, credential=credential)
        return rotation_id

    def _record(
        self,
        s: Session,
        cred: CredentialRow,
        plan: Plan,
        *,
        rotation_id: str,
        by: str,
        reason: str,
        trigger: Trigger,
        now: datetime,
        lease: bool,
        event: EventRef | None,
    ) -> None:
        """Claim the credential for this rotation and record the request."""
        credential, requested_by = cred.name, by
        if not rows.claim_credential(s, cred.id, rotation_id):
            raise KeyshiftError(
                f"credential {credential} already has rotation {cred.active_rotation_id} "
                "in progress; `keyshift resume` continues it"
            )
        current = rows.current_version(s, cred.id)
        s.add(
            RotationRow(
                id=rotation_id,
                credential_id=cred.id,
                state=RotationState.REQUESTED.value,
                requested_by=requested_by,
                requested_at=now,
                reason=reason,
                trigger=trigger.value,
                event_trigger=event.trigger if event else None,
                event_id=event.event_id if event else None,
                plan=plan.to_json(),
                plan_hash=plan.hash,
                keyshift_version=__version__,
                old_version_id=current.id if current else None,
                updated_at=now,
                lease_owner=self.leases.owner if lease else None,
                lease_expires_at=now + self.leases.ttl if lease else None,
            )
        )
        self.store.audit(
            s,
            actor=requested_by,
            action="rotation.requested",
            subject=f"rotation:{rotation_id}",
            details={
                "credential": credential,
                "requested_by": requested_by,
                "reason": reason,
                "trigger": trigger.value,
                "break_glass": trigger == Trigger.BREAK_GLASS,
                **_event_details(event),
                "inputs": {"grace_period_s": plan.grace_period_s},
                "plan_hash": plan.hash,
                "keyshift_version": __version__,
                "old_version_id": current.id if current else None,
                "old_fingerprint": current.fingerprint if current else None,
            },
        )
        self.events.emit(
            s,
            EngineEvent("rotation.state", rotation_id, credential, now, RotationState.REQUESTED),
        )

    @staticmethod
    def _claimable(s: Session, credential: str, guard: Guard) -> CredentialRow:
        """The credential's row, locked, if this worker may start its rotation now."""
        cred = rows.lock_credential(s, credential)
        if cred is None:
            raise NotClaimed(f"credential {credential} is being claimed by another worker")
        if cred.active_rotation_id is not None:
            raise NotClaimed(
                f"credential {credential} has rotation {cred.active_rotation_id} under way"
            )
        why = guard(s, cred)
        if why is not None:
            raise NotClaimed(f"credential {credential}: {why}")
        return cred


def _event_details(event: EventRef | None) -> dict[str, Any]:
    """The audit details naming the inbound event that asked, when one did."""
    return {"event": event.to_json()} if event is not None else {}
