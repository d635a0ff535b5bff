"""The gates a rotation waits at: governance when it starts, approvals before it rotates
or revokes, and the grace period with its residual-use evidence before revocation.

A gate changes nothing outside the store. It either lets the run move on (and moves it,
in the same transaction as its audit entry), or leaves it where it is for a later run.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import select

from keyshift.checks.command import UsageCommand, command_usage
from keyshift.domain.durations import format_duration
from keyshift.domain.estate import CredentialSpec, Policy, ResidualUse
from keyshift.domain.states import Phase, RotationState, StepStatus
from keyshift.engine import approvals, rows
from keyshift.engine.run import Run, old_issued
from keyshift.engine.steps import Steps
from keyshift.errors import KeyshiftError, PermanentError, PluginError, scrub
from keyshift.governance import refusals
from keyshift.providers.base import Capability, Provider, UsageReport, UsageRequest
from keyshift.store.models import CredentialRow, StepRow
from keyshift.targets.base import StepResult

__all__ = ["AWAITING", "ApprovalGate", "GraceGate", "validate"]

AWAITING = {
    RotationState.AWAITING_APPROVAL: approvals.ROTATION,
    RotationState.AWAITING_REVOKE_APPROVAL: approvals.REVOKE,
}
"""The states that wait for an approval, and the kind of request each waits for."""


def validate(steps: Steps, run: Run) -> StepResult:
    """The `validated` step: the credential is still in the estate and governance (allowlist,
    owner, environment, window, overlap) still allows rotating it now (a break-glass
    rotation's window is not checked)."""
    with steps.store.transaction() as s:
        cred = s.get(CredentialRow, run.credential_id)
        if cred is None or cred.removed_at is not None:
            raise PermanentError(f"credential {run.credential} is no longer in the estate")
        refused = refusals(
            CredentialSpec.model_validate(cred.spec["credential"]),
            Policy.model_validate(run.plan.policy),
            approvals.governance(s),
            now=steps.context.now(),
            grace=run.plan.grace_period,
            exempt=run.exempt,
        )
    if refused:
        raise PermanentError("refused by policy: " + "; ".join(refused))
    return StepResult({"plan_hash": run.plan.hash, "actions": len(run.plan.actions)})


class ApprovalGate:
    """Approval requests of a rotation (before it rotates, before it revokes) and their
    quorum."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    def ask(self, run: Run, kind: str) -> None:
        """Open (or find) the approval request of this kind and wait for it."""
        now = self.steps.context.now()
        with self.steps.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            request = approvals.open_request(s, rot, run.plan, kind, now)
            approval = approvals.rule(Policy.model_validate(run.plan.policy), kind, run.exempt)
            self.steps.audit(
                s,
                run.rotation_id,
                "approval.requested",
                {
                    "request_id": request.id,
                    "kind": kind,
                    "plan_hash": request.plan_hash,
                    "approvers": approval.approvers if approval else [],
                    "min_approvals": approval.min_approvals if approval else 0,
                },
            )
            waiting = (
                RotationState.AWAITING_APPROVAL
                if kind == approvals.ROTATION
                else RotationState.AWAITING_REVOKE_APPROVAL
            )
            self.steps.set_state(s, run, waiting, rot)

    def needed_to_rotate(self, run: Run) -> bool:
        approval = Policy.model_validate(run.plan.policy).approval
        return approval is not None and approval.required

    def needed_to_revoke(self, run: Run) -> bool:
        approval = Policy.model_validate(run.plan.policy).approval
        if approval is None or not approval.before_revoke:
            return False
        with self.steps.store.transaction() as s:
            return not approvals.granted(s, run.rotation_id, approvals.REVOKE)

    def passes(self, run: Run) -> bool:
        """Move on when enough approvers accepted this plan; True once the run moved.

        A rotation whose estate changed since it was requested gets its new plan and a
        new request: approvals of the old plan do not authorise the new one.
        """
        kind = AWAITING[run.state]
        now = self.steps.context.now()
        policy = Policy.model_validate(run.plan.policy)
        with self.steps.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            request = approvals.pending_request(s, run.rotation_id, kind)
            if request is None or policy.approval is None:
                request = approvals.open_request(s, rot, run.plan, kind, now)
            if kind == approvals.ROTATION:
                fresh = approvals.current_plan(s, rot, run.plan)
                if fresh is not None and fresh.hash != run.plan.hash:
                    request.status, request.decided_at = "superseded", now
                    rot.plan, rot.plan_hash = fresh.to_json(), fresh.hash
                    s.flush()
                    replacement = approvals.open_request(s, rot, fresh, kind, now)
                    self.steps.audit(
                        s,
                        run.rotation_id,
                        "approval.superseded",
                        {
                            "request_id": request.id,
                            "old_plan_hash": run.plan.hash,
                            "new_plan_hash": fresh.hash,
                            "new_request_id": replacement.id,
                        },
                    )
                    return False  # the next run loads the new plan
            if policy.approval is None:
                return False
            verdict = approvals.evaluate(s, request, policy, now, run.exempt)
            details = {
                "request_id": request.id,
                "kind": kind,
                "plan_hash": request.plan_hash,
                "approved_by": verdict.tally.counted,
                "not_counted": [f"{who}: {why}" for who, why in verdict.tally.ignored],
            }
            if verdict.tally.rejected_by is not None:
                request.status, request.decided_at = "rejected", now
                why = f"rejected by {verdict.tally.rejected_by}: {verdict.comment or ''}".strip()
                self.steps.audit(
                    s,
                    run.rotation_id,
                    "approval.closed",
                    {**details, "outcome": "rejected"},
                    actor=verdict.tally.rejected_by,
                )
                if kind == approvals.ROTATION:
                    rot.error = why
                    self.steps.set_state(s, run, RotationState.FAILED, rot)
                else:
                    rot.attention = run.attention = f"revocation {why}; the old version stays valid"
                    self.steps.set_state(s, run, RotationState.NEEDS_ATTENTION, rot)
                return True
            if not verdict.tally.satisfied(verdict.rule):
                return False
            request.status, request.decided_at = "approved", now
            # Closed by the approval that completed the quorum, whichever run (that
            # approver's, or an earlier approver's still going) saw it first.
            self.steps.audit(
                s,
                run.rotation_id,
                "approval.closed",
                {**details, "outcome": "approved"},
                actor=verdict.tally.counted[-1] if verdict.tally.counted else None,
            )
            after = RotationState.APPROVED if kind == approvals.ROTATION else RotationState.REVOKING
            self.steps.set_state(s, run, after, rot)
        return True


class GraceGate:
    """The end of the grace period: revoke once the old version is unused (or the period
    is over), or stop for a person when revoking would cut a consumer off."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    async def passes(self, run: Run) -> bool:
        """Decide whether the grace period may end now; True once the run moved on.

        Without a `residual_use` policy (or a provider that can see sessions) the old
        version is revoked when the grace period ends. With one, it is revoked as soon
        as it has been unused for `quiet_for`, checking every `check_every`; if the
        grace period ends while it is still in use, `on_timeout` decides. The evidence
        (checks, session counts, times) is kept on the rotation and goes into the
        revocation's audit entry.
        """
        gate = Policy.model_validate(run.plan.policy).residual_use
        over = run.grace_until is None or self.steps.context.now() >= run.grace_until
        if over:
            missed = self._consumers_left_behind(run)
            if missed:
                # An `on_failure: continue` publish or reload failed: that consumer still
                # holds the old value, and revoking it would cut the consumer off.
                evidence = {
                    **run.residual,
                    "outcome": "not revoked: consumers still on the old version",
                    "left_behind": missed,
                }
                return self._leave(
                    run,
                    evidence,
                    RotationState.NEEDS_ATTENTION,
                    error=f"the old version was not revoked: {', '.join(missed)} did not "
                    "take the new version; fix them, then rotate again or revoke by hand",
                )
        if gate is None or not _can_check(gate, run.provider):
            if over:
                self.steps.transition(run, RotationState.REVOKING)
            return over
        now = self.steps.context.now()
        evidence = dict(run.residual)
        last_check = evidence.get("last_check")
        if last_check and now - datetime.fromisoformat(last_check) < gate.check_every and not over:
            return False
        sessions = await self._count_sessions(run, gate, evidence)
        evidence["checks"] = evidence.get("checks", 0) + 1
        evidence.setdefault("first_check", now.isoformat())
        evidence["last_check"] = now.isoformat()
        evidence["last_sessions"] = sessions
        evidence["max_sessions"] = max(evidence.get("max_sessions", 0), sessions)
        if sessions:
            evidence["last_in_use"] = now.isoformat()
        quiet_since = datetime.fromisoformat(evidence.get("last_in_use") or evidence["first_check"])
        if sessions == 0 and now - quiet_since >= gate.quiet_for:
            evidence["outcome"] = f"unused since {quiet_since.isoformat()}"
            return self._leave(run, evidence, RotationState.REVOKING)
        if over and gate.on_timeout == "revoke":
            evidence["outcome"] = "grace period ended while in use; revoked as the policy says"
            return self._leave(run, evidence, RotationState.REVOKING)
        if over and gate.on_timeout == "fail":
            evidence["outcome"] = "grace period ended before the old version was quiet"
            why = (
                f"still in use ({sessions} session(s))"
                if sessions
                else f"last used at {quiet_since.isoformat()}, less than quiet_for "
                f"({format_duration(gate.quiet_for)}) before"
            )
            return self._leave(
                run,
                evidence,
                RotationState.NEEDS_ATTENTION,
                error=f"the old version was {why} when the grace period ended; it was not "
                "revoked (residual_use.on_timeout: fail)",
            )
        run.residual = evidence
        with self.steps.store.transaction() as s:
            rows.rotation(s, run.rotation_id).residual = evidence
        return False

    async def _count_sessions(self, run: Run, gate: ResidualUse, evidence: dict[str, Any]) -> int:
        """Sessions still using the old version, from the provider and/or the policy's
        command. A failed check counts as in use: revoking on missing evidence is what
        the gate exists to prevent."""
        with self.steps.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            row = rows.version(s, rot.old_version_id) if rot.old_version_id else None
            old = old_issued(self.steps.store, row) if row is not None else None
        if old is None or row is None:
            return 0
        sessions = 0
        details: dict[str, Any] = {}
        evidence.pop("last_error", None)
        if Capability.RESIDUAL_USE in run.provider.capabilities:
            checker = cast(Any, run.provider)
            try:
                request = UsageRequest(
                    run.credential, old, policy=Policy.model_validate(run.plan.policy)
                )
                report: UsageReport = await checker.residual_use(request)
                sessions += report.sessions
                details["provider"] = dict(report.detail)
            except (PluginError, KeyshiftError) as exc:
                evidence["last_error"] = scrub(str(exc), run.secrets)
                sessions += max(1, int(evidence.get("last_sessions", 1)))
        if gate.command:
            report = await command_usage(
                UsageCommand(gate.command, gate.command_timeout),
                credential=run.credential,
                version_id=row.id,
                fingerprint=row.fingerprint,
                version=old,
                env=self.steps.context.env,
            )
            sessions += report.sessions
            details["command"] = dict(report.detail)
        evidence["last_detail"] = details
        return sessions

    def _leave(
        self, run: Run, evidence: dict[str, Any], state: RotationState, *, error: str | None = None
    ) -> bool:
        run.residual = evidence
        with self.steps.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            rot.residual = evidence
            if error:
                rot.error = error
            self.steps.audit(
                s,
                run.rotation_id,
                "rotation.residual_use",
                {"credential": run.credential, "evidence": evidence, "next": state.value},
            )
            self.steps.set_state(s, run, state, rot)
        return True

    def _consumers_left_behind(self, run: Run) -> list[str]:
        """Publish and reload steps whose last attempt failed (under `on_failure:
        continue`): the consumers they serve never switched to the new version."""
        steps = {a.step for a in run.plan.actions if a.phase in (Phase.PUBLISH, Phase.RELOAD)}
        if not steps:
            return []
        with self.steps.store.transaction() as s:
            found = s.execute(
                select(StepRow.name, StepRow.status)
                .where(StepRow.rotation_id == run.rotation_id, StepRow.name.in_(steps))
                .order_by(StepRow.seq)
            ).all()
        last = {name: status for name, status in found}  # noqa: C416 (rows are Row tuples)
        return sorted(name for name, status in last.items() if status == StepStatus.FAILED.value)


def _can_check(gate: ResidualUse, provider: Provider) -> bool:
    """Whether residual use of this provider's versions can be observed at all."""
    return bool(gate.command) or Capability.RESIDUAL_USE in provider.capabilities
