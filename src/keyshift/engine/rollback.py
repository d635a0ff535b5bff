"""Rollback: the previous value back to the consumers that got the new one, after a
failed check (the abort path) or at an operator's decision; and the retirement, at the
issuer, of a rolled-back version once its retention is over.

The order is fixed: restore the stores (newest publish first), then reload, check and
announce again. A reload reads the stores, so one run before the restore would load the
new value once more.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from keyshift.domain.estate import Policy
from keyshift.domain.states import (
    MANUAL_ROLLBACK_FROM,
    Phase,
    RotationState,
    StepStatus,
    VersionStatus,
)
from keyshift.engine import approvals, rows
from keyshift.engine.bundle import reissue_started
from keyshift.engine.plan import PlannedAction
from keyshift.engine.run import RETAIN_DISABLED, Run, deliveries, issued, old_issued, revoked
from keyshift.engine.splits import SPLIT, Split, failing_action
from keyshift.engine.splits import attention as split_attention
from keyshift.engine.steps import Steps
from keyshift.errors import KeyshiftError, PluginError, RollbackRefused, scrub
from keyshift.providers.base import (
    Capability,
    Provider,
    RevokeRequest,
    RevokeResult,
    VerifyRequest,
    holds_no_value,
)
from keyshift.store.models import CredentialRow, RotationRow, StepRow, VersionRow
from keyshift.targets.base import RollbackRequest, StepResult

__all__ = ["Retirement", "Rollback"]


class Rollback:
    """Puts the previous version back where the new one went."""

    def __init__(self, steps: Steps, actor: str) -> None:
        self.steps = steps
        self.store = steps.store
        self.actor = actor

    async def restore(self, run: Run) -> None:
        """Restore the previous value where it was replaced, then reload, check and tell.

        First the publish actions that ran are undone, newest first (a publish that
        failed may have been applied in part, so it is undone too). Only then, with the
        old value back in the stores, do the reload actions that ran reload their
        consumers again, in their order as in a cutover: a reload reads the stores, so
        one run before the restore would load the new value once more (a reload that
        failed did not switch its consumer). Then the verify actions that ran (the
        failed one included) check the consumers again, and the notify actions that
        ran announce the rollback.
        """
        journal = self.steps.journal(run.rotation_id)
        succeeded = [s.name for s in journal if s.status == StepStatus.SUCCEEDED.value]
        ran = {s.name for s in journal}
        failed = {s.name for s in journal if s.status == StepStatus.FAILED.value}
        by_step = {a.step: a for a in run.plan.actions}
        failing = self._failing_consumer(run, journal)
        # Under `rollback: failing_only` only the failing consumer's steps are undone:
        # the consumers before it passed their checks, those after it never switched.
        actions = [a for a in run.plan.actions if failing is None or a.consumer == failing.consumer]
        restore = [
            a.step
            for a in actions
            if a.phase == Phase.PUBLISH and (a.step in succeeded or a.step in failed)
        ]
        reload = [a.step for a in actions if a.phase == Phase.RELOAD and a.step in succeeded]
        recheck = [a.step for a in actions if a.phase == Phase.VERIFY and a.step in ran]
        announce = [a.step for a in actions if a.phase == Phase.NOTIFY and a.step in succeeded]
        to_undo = [*reversed(restore), *reload, *recheck, *announce]
        not_restored: list[str] = []
        for name in to_undo:
            undo = f"rollback:{name}"
            if undo in succeeded:
                continue
            action = by_step[name]

            async def undo_action(action: PlannedAction = action) -> StepResult:
                new, previous = deliveries(self.store, run)
                target = self.steps.target(run, action)
                result = await target.rollback(RollbackRequest(failed=new, previous=previous))
                if run.adopted_old is None or holds_no_value(run.provider):
                    # Nothing unknown to say: versions without a value are put back by
                    # their identifiers (a KMS alias moved back to the adopted key).
                    return result
                # The value consumers had before was adopted, never known to keyshift:
                # the target rolled back as on a first rotation, with no previous value.
                note = (
                    f"adopted version {run.adopted_old}: its value was never known to "
                    "keyshift, so no previous value was restored"
                )
                return StepResult({**dict(result.detail), "previous": note})

            opened, result, error = await self.steps.attempt(run, undo, undo_action)
            if error is not None:
                not_restored.append(f"{name} ({error})")
            self.steps.end(run, opened, result, error)
        split = Split(run.plan, failing, not_restored) if failing is not None else None
        if split is not None and split.splits:
            self._finish_split(run, split)
        else:
            self._finish(run, not_restored)

    def _failing_consumer(self, run: Run, journal: list[StepRow]) -> PlannedAction | None:
        """The action whose failure is rolled back for its consumer alone (`rollback:
        failing_only`), or None when every switched consumer goes back: also on a first
        rotation or over an adopted old version (no old value to keep anyone on), and
        in the rollback by hand of a split (recorded on the rotation), which resolves it.

        Read from the journal and the stored rotation only, so a worker that resumes a
        rollback restores exactly the consumers the first one began to restore."""
        if SPLIT in run.residual:
            return None
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            old = rows.version(s, rot.old_version_id) if rot.old_version_id else None
            if old is None or rows.adopted(old):
                return None
        return failing_action(run.plan, journal)

    def _finish_split(self, run: Run, split: Split) -> None:
        """End a `failing_only` rollback that left consumers on both versions:
        `needs_attention`, with the split on the rotation (`residual`, the attention
        text) and audited (`rotation.split`). No version changes status: the old one
        stays current and valid, the new one stays pending (issued, in use, never cut
        over), and neither is revoked or retired."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            record = split.record(rot.id, rot.old_version_id, rot.new_version_id)
            rot.residual = run.residual = {**(rot.residual or {}), SPLIT: record}
            rot.attention = run.attention = "; ".join(
                filter(None, [rot.attention, split_attention(record)])
            )
            if split.not_restored:
                rot.error = (
                    f"{rot.error}; rollback incomplete, not restored: "
                    f"{', '.join(split.not_restored)}"
                )
            self.steps.audit(
                s, rot.id, "rotation.split", {"credential": run.credential, "split": record}
            )
            self.steps.set_state(s, run, RotationState.NEEDS_ATTENTION, rot)

    async def by_hand(self, rotation_id: str, *, reason: str) -> RotationState:
        """Roll back, at the operator's (`self.actor`) decision, a rotation whose new
        version is published while the old one is still valid: in `grace`,
        `awaiting_revoke_approval`, or ended `needs_attention` without revoking it.

        The rotation is claimed with its lease first (LeaseHeld while another live worker
        runs it), so of two rollbacks at once one runs and the other is refused, now or
        when it finds the rotation rolled back. Then it is the rollback of an abort
        failure (`restore`): the previous value goes back to the consumers that got
        the new one, newest first, their reloads and checks run again, the new version
        is kept disabled with an expiry and the old one is current again. Returns
        `rolled_back`, or `failed` naming what could not be restored.

        Refused with RollbackRefused, changing nothing, in any other state, when the old
        version is revoked or its value was never held, when a later rotation replaced
        the new version, or when the issuer no longer accepts the old version.
        """
        run = self.steps.claim(rotation_id)
        try:
            await self._check(run)
            self._begin(run, reason=reason)
            await self.restore(run)
            return run.state
        finally:
            await self.steps.let_go(run)

    async def _check(self, run: Run) -> None:
        """Raise RollbackRefused unless the claimed rotation may be rolled back now."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            old = rows.version(s, rot.old_version_id) if rot.old_version_id else None
            new = rows.version(s, rot.new_version_id) if rot.new_version_id else None
            why = _rollback_refusal(rot, old, new, run.provider)
            if why is None and reissue_started(run):
                why = (
                    "leaves were re-issued under the new CA (phase 2 began): rolling back "
                    "would remove it from the bundles and verifiers would refuse them; "
                    "rotate the CA again instead"
                )
            version = old_issued(self.store, old) if why is None and old is not None else None
        if version is not None:
            run.secrets.append(version.value.reveal())
        checkable = Capability.AUTHENTICATES in run.provider.capabilities
        if why is None and version is not None and checkable:
            # Re-publishing a value the issuer refuses would cut every consumer off.
            answer = await run.provider.verify(VerifyRequest(run.credential, version))
            if not answer.ok:
                why = (
                    f"the old version {rot.old_version_id} no longer authenticates at the "
                    f"issuer ({answer.detail}); rolling back would cut the consumers off"
                )
        if why is not None:
            raise RollbackRefused(
                scrub(f"rotation {run.rotation_id} of {run.credential}: {why}", run.secrets)
            )

    def _begin(self, run: Run, *, reason: str) -> None:
        """Record who rolls back and why, and move the rotation to `rolling_back`, in one
        transaction; from there a worker that stops is resumed like any rollback."""
        now = self.steps.context.now()
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            before = rot.state
            # A finished rotation freed its credential: claim it again, so that no new
            # rotation starts while the old value goes back to the consumers.
            if RotationState(before).is_final and not rows.claim_credential(
                s, rot.credential_id, rot.id
            ):
                cred = s.get(CredentialRow, rot.credential_id)
                active = cred.active_rotation_id if cred else None
                raise RollbackRefused(
                    f"rotation {rot.id} of {run.credential}: the credential has rotation "
                    f"{active} in progress; let it finish (or roll it back) first"
                )
            withdrawn = approvals.withdraw(s, rot.id, now)
            self.steps.audit(
                s,
                rot.id,
                "rotation.rollback",
                {
                    "rotation_id": rot.id,
                    "credential": run.credential,
                    "by": self.actor,
                    "reason": reason,
                    "from_state": before,
                    "old_version_id": rot.old_version_id,
                    "new_version_id": rot.new_version_id,
                    "withdrawn_requests": withdrawn,
                },
            )
            rot.error = "; ".join(
                filter(None, [rot.error, f"rolled back by {self.actor}: {reason}"])
            )
            rot.finished_at = None
            self.steps.set_state(s, run, RotationState.ROLLING_BACK, rot)

    def _finish(self, run: Run, not_restored: list[str]) -> None:
        now = self.steps.context.now()
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.new_version_id is not None:
                # Kept, not destroyed: disabled with an expiry, for analysis.
                new = rows.version(s, rot.new_version_id)
                new.status = VersionStatus.DISABLED.value
                new.expires_at = now + RETAIN_DISABLED
            if rot.old_version_id is not None:
                self._reactivate(s, run, rows.version(s, rot.old_version_id), now)
            if not_restored:
                rot.error = (
                    f"{rot.error}; rollback incomplete, not restored: {', '.join(not_restored)}; "
                    f"new version {rot.new_version_id} kept disabled"
                )
            self.steps.set_state(
                s, run, RotationState.FAILED if not_restored else RotationState.ROLLED_BACK, rot
            )

    def _reactivate(self, s: Session, run: Run, old: VersionRow, now: datetime) -> None:
        """Make the old version current again with an explicit expiry and owner (design.md:
        "a reactivated old version gets an explicit expiry and owner"), audited as
        `version.reactivated`. Its expiry is the one it had, or, without one, the policy's
        `max_lifetime` from now, so the scheduler rotates it again in time; the owner is
        the credential's accountable owner, and who rolled back is recorded beside."""
        old.status = VersionStatus.CURRENT.value
        lifetime = Policy.model_validate(run.plan.policy).max_lifetime
        if old.expires_at is None and lifetime is not None:
            old.expires_at = now + lifetime
        cred = s.get(CredentialRow, run.credential_id)
        owner = (cred.spec.get("credential") or {}).get("owner") if cred is not None else None
        self.steps.audit(
            s,
            run.rotation_id,
            "version.reactivated",
            {
                "credential": run.credential,
                "version_id": old.id,
                "fingerprint": old.fingerprint,
                "owner": owner,
                "reactivated_by": self.actor,
                "expires_at": old.expires_at.isoformat() if old.expires_at else None,
            },
        )


class Retirement:
    """Revokes at the issuer what a rollback kept disabled, once its retention is over."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.store = steps.store

    async def retire_disabled(self, rotation_id: str) -> dict[str, Any] | None:
        """Revoke at the issuer the new version that a rolled-back rotation kept disabled,
        once its retention (`RETAIN_DISABLED`) is over. Returns the audited facts, or None
        when there is nothing to retire (yet).

        A rollback only stops keyshift from using the new version; the issuer still
        accepts it (an Entra secret, a Redis password). Left alone it would be a valid
        credential nobody owns. Only a rotation that ended `rolled_back` qualifies: after
        an incomplete rollback (`failed`) a consumer may still hold the new value.

        The credential is claimed for the duration, so no rotation starts meanwhile. An
        issuer that signs in (`AUTHENTICATES`) is asked first whether it still accepts the
        version: a later rotation may have given the same user a new password, and
        revoking by user would then cut that rotation's consumers off. Refused by the
        issuer means already gone: the row is marked revoked without an issuer call.
        """
        now = self.steps.context.now()
        with self.store.transaction() as s:
            rot = rows.rotation(s, rotation_id)
            if rot.state != RotationState.ROLLED_BACK.value or rot.new_version_id is None:
                return None
            row = rows.version(s, rot.new_version_id)
            if (
                row.status != VersionStatus.DISABLED.value
                or row.expires_at is None
                or row.expires_at > now
            ):
                return None
            credential_id = rot.credential_id
            if not rows.claim_credential(s, credential_id, rotation_id):
                return None  # a rotation of the credential is running; try at the next scan
        try:
            return await self._retire(rotation_id)
        finally:
            with self.store.transaction() as s:
                rows.free_credential(s, credential_id, rotation_id)

    async def _retire(self, rotation_id: str) -> dict[str, Any]:
        run = self.steps.claim(rotation_id)
        try:
            with self.store.transaction() as s:
                row = rows.version(s, rows.rotation(s, rotation_id).new_version_id or "")
                version = issued(self.store, row)
            run.secrets.append(version.value.reveal())
            accepted = True
            if Capability.AUTHENTICATES in run.provider.capabilities:
                accepted = (await run.provider.verify(VerifyRequest(run.credential, version))).ok
            result = (
                await run.provider.revoke(RevokeRequest(run.credential, rotation_id, version))
                if accepted
                else RevokeResult(already_gone=True, detail={"issuer": "refuses it already"})
            )
            with self.store.transaction() as s:
                row = rows.version(s, row.id)
                revoked(row, self.steps.context.now())
                facts: dict[str, Any] = {
                    "credential": run.credential,
                    "version_id": row.id,
                    "fingerprint": row.fingerprint,
                    "provider_ref": row.provider_ref,
                    "reason": "kept disabled after a rollback; its retention is over",
                    "already_gone": result.already_gone,
                    **dict(result.detail),
                }
                self.steps.audit(s, rotation_id, "version.retired", facts)
            return facts
        except (PluginError, KeyshiftError) as exc:
            raise KeyshiftError(
                scrub(f"retiring version of rotation {rotation_id}: {exc}", run.secrets)
            ) from None
        finally:
            await self.steps.let_go(run)


def _rollback_refusal(
    rot: RotationRow, old: VersionRow | None, new: VersionRow | None, provider: Provider
) -> str | None:
    """Why this rotation may not be rolled back by hand now, or None when it may."""
    state = RotationState(rot.state)
    if state == RotationState.ROLLED_BACK:
        return "it is already rolled back"
    if state == RotationState.FAILED:
        return f"it failed ({rot.error}); there is no published version to roll back"
    first = "it issued the credential's first version; there is no previous one to go back to"
    if state == RotationState.COMPLETED and old is None:
        return first
    if state == RotationState.COMPLETED or (
        old is not None and old.status == VersionStatus.REVOKED.value
    ):
        return (
            f"its old version {rot.old_version_id} is revoked, so there is nothing to go "
            f"back to; start a new rotation (`keyshift rotate`) to replace version "
            f"{rot.new_version_id}"
        )
    if state not in MANUAL_ROLLBACK_FROM:
        allowed = ", ".join(sorted(s.value for s in MANUAL_ROLLBACK_FROM))
        return (
            f"it is {state.value}; only a rotation in {allowed} can be rolled back "
            "(`keyshift resume` continues an unfinished one)"
        )
    if old is None:
        return first
    if rows.adopted(old) and not holds_no_value(provider):
        return (
            f"its old version {old.id} was adopted from the issuer and keyshift never held "
            "its value, so it cannot be published again"
        )
    # A split (`rollback: failing_only`) never cut over: its new version stays pending
    # while the consumers before the failing one use it.
    split = SPLIT in (rot.residual or {})
    taken = VersionStatus.PENDING.value if split else VersionStatus.CURRENT.value
    if new is None or new.status != taken:
        return f"its new version {rot.new_version_id} is no longer current (rotated since)"
    if Capability.IN_PLACE in provider.capabilities:
        return (
            "its issuer replaced the old value in place, so the old version stopped "
            "working at the cutover; start a new rotation instead"
        )
    return None
