"""The rollout: publish, reload, verify and notify, each phase's actions in plan order,
then the cutover and the grace period.

A failed `on_failure: abort` action (or the issuer refusing the new version after
publishing) sends the rotation to `rolling_back`; a failed `continue` action, or a step
deliberately not performed, leaves its consumer on the old version for a person while
the others switch. Under `rollback: failing_only` the consumers switch one after
another, so that a failure stops the new version before the next consumer gets it.
"""

from __future__ import annotations

from keyshift.domain.states import OnFailure, Phase, RotationState, VersionStatus
from keyshift.engine import rows
from keyshift.engine.issuer import Issuer
from keyshift.engine.plan import PlannedAction
from keyshift.engine.run import VERIFY_PROVIDER_STEP, Run, deliveries
from keyshift.engine.steps import Steps
from keyshift.engine.trust import Trust
from keyshift.errors import NotDelivered, NotFound
from keyshift.targets.base import PublishRequest, StepResult

__all__ = ["PHASE_OF_STATE", "STATE_AFTER_PHASE", "STATE_OF_PHASE", "Rollout"]

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
STATE_OF_PHASE: dict[Phase, RotationState] = {p: s for s, p in PHASE_OF_STATE.items()}


class Rollout:
    """Runs the phases that hand the new version to its consumers."""

    def __init__(self, steps: Steps, issuer: Issuer, trust: Trust) -> None:
        self.steps = steps
        self.issuer = issuer
        self.trust = trust
        self.store = steps.store

    async def phase(self, run: Run) -> bool:
        """Run the actions of the phase the rotation is in, then move to the next one.
        False when it rests in the phase (a trust-first rotation waiting before its
        signers get the new version: `Trust`); True otherwise."""
        if run.plan.failing_only and run.state != RotationState.NOTIFYING:
            return await self._one_by_one(run)
        phase = PHASE_OF_STATE[run.state]
        done = set(run.succeeded)
        for action in run.plan.in_phase(phase):
            if action.step in done:
                continue  # finished before a restart: publishing again is not needed
            if not await self.trust.signers_may_start(run, action):
                return False  # the verifiers' caches may not hold the new key yet
            if await self._action(run, action):
                return True  # aborted: the run is rolling back
        verify_at_issuer = phase == Phase.VERIFY and VERIFY_PROVIDER_STEP not in done
        if verify_at_issuer and not await self._verify_at_issuer(run):
            return True
        self._next_phase(run, phase)
        return True

    async def _one_by_one(self, run: Run) -> bool:
        """`rollback: failing_only`: switch the consumers one after another, each one's
        publish, reload and verify actions before the next consumer gets the new version,
        so that a failed check leaves the consumers after it untouched (`Rollback`
        then puts back only the failing one). The rotation's state follows the phase of
        the step it is at, so a freeze stops it between two consumers too.

        Resumed, it goes on from the first step that has not run (a step left running
        by a worker that stopped runs again; a failed `on_failure: continue` one does
        not); each call runs the steps of one state and returns once the state changes,
        so the run loop checks freezes and disabled integrations at every boundary."""
        ran = set(run.attempts) - run.interrupted
        for action in run.plan.one_by_one():
            if action.step in ran:
                continue
            state = STATE_OF_PHASE[action.phase]
            if run.state != state:
                self.steps.transition(run, state)
                return True
            if not await self.trust.signers_may_start(run, action):
                return False
            if await self._action(run, action):
                return True  # aborted: the run rolls back the failing consumer
        if VERIFY_PROVIDER_STEP not in run.succeeded:
            if run.state != RotationState.VERIFYING:
                self.steps.transition(run, RotationState.VERIFYING)
                return True
            if not await self._verify_at_issuer(run):
                return True
        self._next_phase(run, Phase.VERIFY)
        return True

    async def _verify_at_issuer(self, run: Run) -> bool:
        """The post-cutover test at the issuer; False when it failed (rolling back)."""
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
            return False
        self.steps.end(run, opened, result, None)
        return True

    def _next_phase(self, run: Run, phase: Phase) -> None:
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
            grace = self.trust.grace(run)
            rot.grace_until = run.grace_until = self.steps.context.now() + grace
            self.steps.set_state(s, run, RotationState.GRACE, rot)
