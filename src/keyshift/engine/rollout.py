"""The rollout: publish, reload, verify and notify, each phase's actions in plan order,
then the cutover and the grace period.

A failed `on_failure: abort` action (or the issuer refusing the new version after
publishing) sends the rotation to `rolling_back`; a failed `continue` action, or a step
deliberately not performed, leaves its consumer on the old version for a person while
the others switch.
"""

from __future__ import annotations

from keyshift.domain.states import OnFailure, Phase, RotationState, VersionStatus
from keyshift.engine import rows
from keyshift.engine.issuer import Issuer
from keyshift.engine.plan import PlannedAction
from keyshift.engine.run import VERIFY_PROVIDER_STEP, Run, deliveries
from keyshift.engine.steps import Steps
from keyshift.errors import NotDelivered, NotFound
from keyshift.targets.base import PublishRequest, StepResult

__all__ = ["PHASE_OF_STATE", "STATE_AFTER_PHASE", "Rollout"]

STATE_AFTER_PHASE: dict[Phase, RotationState] = {
    Phase.PUBLISH: RotationState.RELOADING,
    Phase.RELOAD: RotationState.VERIFYING,
    Phase.VERIFY: RotationState.NOTIFYING,
    Phase.NOTIFY: RotationState.GRACE,
}
PHASE_OF_STATE: dict[RotationState, Phase] = {
    RotationState.PUBLISHING: Phase.PUBLISH,
    RotationState.RELOADING: Phase.RELOAD,
    RotationState.VERIFYING: Phase.VERIFY,
    RotationState.NOTIFYING: Phase.NOTIFY,
}


class Rollout:
    """Runs the phases that hand the new version to its consumers."""

    def __init__(self, steps: Steps, issuer: Issuer) -> None:
        self.steps = steps
        self.issuer = issuer
        self.store = steps.store

    async def phase(self, run: Run) -> None:
        """Run the actions of the phase the rotation is in, then move to the next one."""
        phase = PHASE_OF_STATE[run.state]
        done = set(run.succeeded)
        for action in run.plan.in_phase(phase):
            if action.step in done:
                continue  # finished before a restart: publishing again is not needed
            if await self._action(run, action):
                return  # aborted: the run is rolling back
        if phase == Phase.VERIFY and VERIFY_PROVIDER_STEP not in done:
            opened, result, error = await self.steps.attempt(
                run, VERIFY_PROVIDER_STEP, lambda: self.issuer.verify(run)
            )
            if error is not None:
                # Consumers hold the new version and the issuer does not accept it: the
                # abort path puts the previous value back, as a failed verify action does.
                self.steps.end(
                    run,
                    opened,
                    None,
                    error,
                    next_state=RotationState.ROLLING_BACK,
                    rotation_error=f"{VERIFY_PROVIDER_STEP}: {error}",
                )
                return
            self.steps.end(run, opened, result, None)
        next_state = STATE_AFTER_PHASE[phase]
        if phase == Phase.VERIFY:
            self._cut_over(run)
        if next_state == RotationState.GRACE:
            self._enter_grace(run)
        else:
            self.steps.transition(run, next_state)

    async def _action(self, run: Run, action: PlannedAction) -> bool:
        """Run one action's step. Returns True when its failure aborts the run."""

        not_delivered = False

        async def publish() -> StepResult:
            nonlocal not_delivered
            new, previous = deliveries(self.store, run)
            target = self.steps.target(run, action)
            try:
                return await target.publish(PublishRequest(delivery=new, previous=previous))
            except NotDelivered:
                not_delivered = True
                raise

        opened, result, error = await self.steps.attempt(run, action.step, publish)
        if error is None:
            self.steps.end(run, opened, result, None)
            return False
        why = f"{action.step}: {error}"
        # A step deliberately not performed leaves its consumer on the old version for a
        # person: the others still switch, and the old version is kept (not revoked).
        if action.on_failure == OnFailure.ABORT and not not_delivered:
            self.steps.end(
                run, opened, None, error, next_state=RotationState.ROLLING_BACK, rotation_error=why
            )
            return True
        self.steps.end(run, opened, None, error, attention=why)
        return False

    def _cut_over(self, run: Run) -> None:
        """The new version becomes current and the old one previous (still valid)."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.new_version_id is None:
                raise NotFound(f"rotation {rot.id} reached cutover without a new version")
            rows.version(s, rot.new_version_id).status = VersionStatus.CURRENT.value
            if rot.old_version_id is not None:
                old = rows.version(s, rot.old_version_id)
                if old.status == VersionStatus.CURRENT.value:
                    old.status = VersionStatus.PREVIOUS.value

    def _enter_grace(self, run: Run) -> None:
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.old_version_id is None:
                # First issuance: nothing to overlap with and nothing to revoke.
                self.steps.set_state(s, run, self.steps.finished_state(run), rot)
                return
            rot.grace_until = run.grace_until = self.steps.context.now() + run.plan.grace_period
            self.steps.set_state(s, run, RotationState.GRACE, rot)
