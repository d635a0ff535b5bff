"""Trust first, identity second (design.md), for a provider that declares `TrustFirst`
(a JWKS signing key, a CA) and for a credential whose estate hands verifiers its public
part (a certificate's accepted-thumbprint list): the steps its rotation adds to the state
machine, and nothing for any other rotation.

A credential whose provider declares no `TrustFirst` but which has trust actions (an
`x509_ca` leaf with a `thumbprints` list) is rotated trust first with no wait
(`UNDECLARED`): the list holds the new thumbprint before the signer gets the certificate,
and the old one until just before it is revoked.

- publishing: the trust actions (targets that say `trust_only`: a JWKS document) run
  first; then the `waiting:signers` step journals when the signers may get the new
  version (`signers_after` later); the rotation rests in `publishing` until then (a
  worker's later run goes on), and then the other actions run. A first version (no old
  one) does not wait.
- grace: never shorter than `keep_old_for` (tokens signed with the old key just before
  the switch are still in use until then).
- revoking: a `withdrawing:<action>` step per trust action drops the old version from
  what verifiers trust, then the old version is revoked as for any provider.

Every step is journaled like any other: resumed, a run skips the succeeded ones and goes
on with the wait from the time the journal holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from keyshift.domain.durations import format_duration
from keyshift.domain.states import Phase, RotationState, StepStatus
from keyshift.engine.plan import PlannedAction
from keyshift.engine.plugins import trust_only
from keyshift.engine.run import Run, deliveries
from keyshift.engine.steps import Steps
from keyshift.errors import PermanentError
from keyshift.providers.base import TrustFirst, trust_first_of
from keyshift.store.models import StepRow
from keyshift.targets.base import StepResult, WithdrawRequest

__all__ = ["SIGNERS_WAIT_STEP", "UNDECLARED", "WITHDRAW_PREFIX", "Trust", "trust_actions"]

UNDECLARED = TrustFirst(signers_after=timedelta(0), keep_old_for=timedelta(0))
"""The waits of a rotation with trust actions whose provider declares none: the trust
actions run first and the signers go on at once; the grace period is the plan's."""
SIGNERS_WAIT_STEP = "waiting:signers"
"""The journaled wait between the trust actions and the signers."""
WITHDRAW_PREFIX = "withdrawing:"


def trust_actions(run: Run) -> list[PlannedAction]:
    """The publish actions that serve verifiers only (a JWKS, a CA bundle, a thumbprint
    list); empty for a rotation without any, which is unchanged. The estate allows each
    only for the credentials whose versions it can hold (`keyshift.service.estate`)."""
    return [a for a in run.plan.in_phase(Phase.PUBLISH) if trust_only(a.type, a.config)]


class Trust:
    """The waits and withdrawals of a trust-first rotation."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps

    def _declared(self, run: Run) -> TrustFirst | None:
        if not trust_actions(run):
            return None
        return trust_first_of(run.provider) or UNDECLARED

    def grace(self, run: Run) -> timedelta:
        """The grace period: the plan's, or `keep_old_for` when that is longer."""
        declared = self._declared(run)
        if declared is None:
            return run.plan.grace_period
        return max(run.plan.grace_period, declared.keep_old_for)

    async def signers_may_start(self, run: Run, action: PlannedAction) -> bool:
        """Whether `action` may run now: any action of a rotation that is not trust-first,
        and a trust action; a signer's once `signers_after` has passed since the trust
        actions ran (journaled as `waiting:signers` the first time it is asked)."""
        declared = self._declared(run)
        if declared is None or trust_only(action.type, action.config):
            return True
        if SIGNERS_WAIT_STEP not in run.succeeded:
            if deliveries(self.steps.store, run)[1] is None:
                # A first version: no signer signs with anything verifiers could confuse it
                # with, and nothing signed yet needs the old key; there is nothing to wait for.
                return True
            await self._start_wait(run, declared)
        return self.steps.context.now() >= self._signers_from(run)

    async def _start_wait(self, run: Run, declared: TrustFirst) -> None:
        """Journal when the signers may get the new version: `signers_after` from now, the
        trust actions having run. Interrupted before it closed, it runs again (from then)."""

        async def wait() -> StepResult:
            now = self.steps.context.now()
            return StepResult(
                {
                    "signers_from": (now + declared.signers_after).isoformat(),
                    "cache_ttl": format_duration(declared.signers_after),
                    "trusted_by": [a.step for a in trust_actions(run)],
                }
            )

        opened, result, error = await self.steps.attempt(run, SIGNERS_WAIT_STEP, wait)
        self.steps.end(run, opened, result, error)

    def _signers_from(self, run: Run) -> datetime:
        step = self._last_succeeded(run, SIGNERS_WAIT_STEP)
        if step is None or "signers_from" not in (step.detail or {}):
            raise PermanentError(f"rotation {run.rotation_id}: {SIGNERS_WAIT_STEP} has no time")
        return datetime.fromisoformat(str(step.detail["signers_from"]))

    def _last_succeeded(self, run: Run, name: str) -> StepRow | None:
        found = [
            s
            for s in self.steps.journal(run.rotation_id)
            if s.name == name and s.status == StepStatus.SUCCEEDED.value
        ]
        return found[-1] if found else None

    async def withdrawn(self, run: Run) -> bool:
        """Withdraw the old version from every trust action that does not hold it any more
        (just before revoking). True when it is withdrawn everywhere (at once for a
        rotation that is not trust-first); False when a withdrawal failed: the run then
        needs a person, and the old version is not revoked."""
        for action in trust_actions(run):
            name = WITHDRAW_PREFIX + action.key
            if name in run.succeeded:
                continue

            async def withdraw(action: PlannedAction = action) -> StepResult:
                new, previous = deliveries(self.steps.store, run)
                if previous is None:
                    return StepResult({"withdrawn": None, "note": "no old version to withdraw"})
                target = self.steps.target(run, action)
                method = getattr(target, "withdraw", None)
                if method is None:
                    raise PermanentError(f"{action.step}: {action.type} cannot withdraw a key")
                result: StepResult = await method(WithdrawRequest(current=new, withdrawn=previous))
                return result

            opened, result, error = await self.steps.attempt(run, name, withdraw)
            if error is not None:
                self.steps.end(
                    run,
                    opened,
                    None,
                    error,
                    next_state=RotationState.NEEDS_ATTENTION,
                    rotation_error=f"{name}: {error}; the old version is still trusted there "
                    "and was not revoked",
                )
                return False
            self.steps.end(run, opened, result, None)
        return True
