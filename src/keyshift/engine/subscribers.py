"""The engine's own subscribers: the audit trail and progress reports.

`AuditTrail` writes the evidence of each step's end and each rotation's end into the
hash-chained audit inside the transaction that makes the change; `StepProgress` hands
committed step starts and ends to a callback (a terminal's progress lines, the API's
follower). Notifications and metrics subscribe at the same seam (`events.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from keyshift import __version__
from keyshift.engine import rows
from keyshift.engine.events import EngineEvent, Subscriber
from keyshift.engine.journal import StepEvent
from keyshift.store.store import Store

__all__ = ["AuditTrail", "StepProgress"]


class AuditTrail(Subscriber):
    """Writes the evidence of each step's end and of a rotation's end into the audit
    chain, inside the transaction that makes the change."""

    def __init__(self, store: Store, actor: str) -> None:
        self.store = store
        self.actor = actor

    def in_transaction(self, s: Session, event: EngineEvent) -> None:
        if event.kind == "step.ended":
            self.record(
                s,
                event.rotation_id,
                "rotation.step",
                {
                    "credential": event.credential,
                    "step": event.step,
                    "attempt": event.attempt,
                    "outcome": event.status.value if event.status else None,
                    "started_at": event.started_at.isoformat() if event.started_at else None,
                    "ended_at": event.at.isoformat(),
                    "detail": event.detail or {},
                    "error": event.error,
                },
            )
        elif event.kind == "rotation.state" and event.state.is_final:
            rot = rows.rotation(s, event.rotation_id)
            self.record(
                s,
                event.rotation_id,
                "rotation.finished",
                {
                    "credential": event.credential,
                    "state": event.state.value,
                    "plan_hash": rot.plan_hash,
                    "keyshift_version": __version__,
                    "old_version_id": rot.old_version_id,
                    "new_version_id": rot.new_version_id,
                    "error": rot.error,
                    "attention": rot.attention,
                },
            )

    def record(
        self,
        s: Session,
        rotation_id: str,
        action: str,
        details: Mapping[str, Any],
        *,
        actor: str | None = None,
    ) -> None:
        """Audit `action` on a rotation (subject `rotation:ID`) as `actor`, by default the
        engine's actor."""
        self.store.audit(
            s,
            actor=actor or self.actor,
            action=action,
            subject=f"rotation:{rotation_id}",
            details=details,
        )


class StepProgress(Subscriber):
    """Hands each step's start and end, once committed, to a progress callback (a
    terminal's progress lines, a server's follower)."""

    def __init__(self, report: Callable[[StepEvent], None]) -> None:
        self.report = report

    def after_commit(self, event: EngineEvent) -> None:
        if event.kind == "rotation.state" or event.step is None or event.status is None:
            return
        self.report(
            StepEvent(event.rotation_id, event.step, event.status, event.duration_s, event.error)
        )
