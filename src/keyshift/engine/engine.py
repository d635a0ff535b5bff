"""The rotation engine: runs the state machine of design.md, one journaled step at a time.

`Engine` is the facade the service layer uses: `request`, `run`, `preflight`,
`roll_back`, `retire_disabled` and `import_current`. The state machine reads top to
bottom in `_table`: one entry per state that a worker advances, each naming the step
(or gate) that moves it on. What the steps do lives in one module per responsibility:
`steps` (journal, retries, lease and state writes), `issuer`, `rollout`, `gates`,
`rollback`, `imports`, and for trust-first credentials `trust` (a JWKS, a CA's bundles)
and `bundle` (a CA's leaves, re-issued in its grace period); events of every change go
to the subscribers of `events` (the audit trail first).

A rotation is owned by one worker at a time through a lease on its row; a lease whose
holder died (same host, process gone) or expired is taken over.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from keyshift.context import PluginContext
from keyshift.domain.estate import disabled_integrations
from keyshift.domain.secret import Secret
from keyshift.domain.states import RotationState, Trigger
from keyshift.domain.triggers import EventRef
from keyshift.engine import approvals, freezes, preflight, rows
from keyshift.engine.bundle import Leaves, Progress
from keyshift.engine.events import EventBus, Subscriber
from keyshift.engine.gates import ApprovalGate, GraceGate, validate
from keyshift.engine.imports import Imported, import_current
from keyshift.engine.issuer import Issuer
from keyshift.engine.journal import StepEvent
from keyshift.engine.leases import Leases
from keyshift.engine.measure import Measure
from keyshift.engine.outbox import Outbox
from keyshift.engine.plan import Plan
from keyshift.engine.plugins import build_integrations
from keyshift.engine.requests import Guard, Requests
from keyshift.engine.rollback import Retirement, Rollback
from keyshift.engine.rollout import Rollout
from keyshift.engine.run import Run
from keyshift.engine.steps import Steps
from keyshift.engine.subscribers import AuditTrail, StepProgress
from keyshift.engine.trust import Trust
from keyshift.errors import ConfigError, KeyshiftError, NotFound
from keyshift.governance import integration_disabled
from keyshift.providers.base import Capability, Provider
from keyshift.sources import read_source
from keyshift.store.models import CredentialRow
from keyshift.store.store import Store
from keyshift.targets.base import PreflightResult, StepResult

__all__ = ["Engine"]

log = structlog.get_logger("keyshift.engine")

Advance = Callable[[Run], Awaitable[bool]]
"""What a worker does in one state: True when the run moved on, False when it rests
(waiting for a gate, a person or the end of the grace period)."""


_HELD_BY = select(
    CredentialRow.owner,
    CredentialRow.environment,
    CredentialRow.spec["integrations"],
    freezes.ANY_HOLDING,
).where(CredentialRow.name == bindparam("name"), CredentialRow.removed_at.is_(None))
"""What `Engine._held_in` reads of the credential, not all of its spec, and whether any
freeze holds, at every state."""


class Engine:
    """Requests and runs rotations against one store."""

    def __init__(
        self,
        store: Store,
        *,
        actor: str,
        context: PluginContext | None = None,
        lease_ttl: timedelta = timedelta(seconds=120),
        on_event: Callable[[StepEvent], None] | None = None,
        subscribers: Iterable[Subscriber] = (),
    ) -> None:
        self.store = store
        self.actor = actor
        self.context = context or PluginContext()
        self.lease_ttl = lease_ttl
        self.leases = Leases(store, lease_ttl, self.context.now)
        # The audit trail first: it writes the evidence inside each change's transaction;
        # then the outbox of what operators are told, in the same transaction.
        self.trail = AuditTrail(store, actor)
        listeners: list[Subscriber] = [self.trail, Outbox(), Measure(), *subscribers]
        if on_event is not None:
            listeners.append(StepProgress(on_event))
        self.events = EventBus(listeners)
        self.steps = Steps(
            store,
            context=self.context,
            leases=self.leases,
            events=self.events,
            trail=self.trail,
            context_for=self.context_for,
        )
        self.steps.holds = self._held_on_move
        self.issuer = Issuer(self.steps)
        self.trust = Trust(self.steps)
        self.rollout = Rollout(self.steps, self.issuer, self.trust)
        self.approval = ApprovalGate(self.steps)
        self.grace = GraceGate(self.steps)
        self.rollback = Rollback(self.steps, actor)
        self.retirement = Retirement(self.steps)
        self.requests = Requests(store, self.events, self.context, self.leases)
        self.leaves = Leaves(self.steps, self.requests, actor)
        self.leaves.run_rotation = self.run
        self._table = self._state_machine()

    @property
    def owner(self) -> str:
        """This engine's lease holder name (`host/pid/random`)."""
        return self.leases.owner

    def _state_machine(self) -> dict[RotationState, Advance]:
        """What moves a rotation on from each state, in the order of the happy path."""
        steps, issuer, approval = self.steps, self.issuer, self.approval

        def step(
            name: str, body: Callable[[Run], Any], after: RotationState | None, **kw: Any
        ) -> Advance:
            async def advance(run: Run) -> bool:
                await steps.step(run, name, body, after, **kw)
                return True

            return advance

        async def validated(run: Run) -> StepResult:
            return validate(steps, run)

        async def after_validated(run: Run) -> bool:
            if approval.needed_to_rotate(run):
                approval.ask(run, approvals.ROTATION)
                return True
            return await preflighted(run)

        preflighted = step("preflighted", preflight.preflighted, RotationState.PREFLIGHTED)

        async def to_creating(run: Run) -> bool:
            steps.transition(run, RotationState.CREATING)
            return True

        async def creating(run: Run) -> bool:
            # An issuer keyshift cannot sign in to (random: keyshift is the issuer) has
            # nothing to prove; the creating step's detail says so.
            proves = Capability.AUTHENTICATES in run.provider.capabilities
            after = RotationState.PROVING if proves else RotationState.PUBLISHING
            await steps.step(run, "creating", issuer.create, after)
            return True

        async def proving(run: Run) -> bool:
            await issuer.prove(run)
            return True

        async def rolling_out(run: Run) -> bool:
            return await self.rollout.phase(run)

        async def awaiting(run: Run) -> bool:
            return approval.passes(run)

        async def revoking(run: Run) -> bool:
            if approval.needed_to_revoke(run):
                approval.ask(run, approvals.REVOKE)
                return False
            # A CA is withdrawn once no leaf presents a certificate it signed; a
            # trust-first credential's verifiers stop trusting the old version first. For
            # every other credential these return at once, having done nothing.
            if not await self.leaves.left_old_ca(run):
                return True
            if not await self.trust.withdrawn(run):
                return True
            await steps.step(run, "revoking", issuer.revoke, None, finishes=True)
            return True

        async def in_grace(run: Run) -> bool:
            # A CA rotation re-issues its leaves first (phase 2); nothing for any other.
            progress = await self.leaves.reissue(run)
            if progress is Progress.RESTING:
                return False
            if progress is Progress.STOPPED:
                return True
            return await self.grace.passes(run)

        async def rolling_back(run: Run) -> bool:
            await self.rollback.restore(run)
            return True

        return {
            RotationState.REQUESTED: step("validated", validated, RotationState.VALIDATED),
            RotationState.VALIDATED: after_validated,
            RotationState.AWAITING_APPROVAL: awaiting,
            RotationState.APPROVED: preflighted,
            RotationState.PREFLIGHTED: to_creating,
            RotationState.CREATING: creating,
            RotationState.PROVING: proving,
            RotationState.PUBLISHING: rolling_out,
            RotationState.RELOADING: rolling_out,
            RotationState.VERIFYING: rolling_out,
            RotationState.NOTIFYING: rolling_out,
            RotationState.GRACE: in_grace,
            RotationState.AWAITING_REVOKE_APPROVAL: awaiting,
            RotationState.REVOKING: revoking,
            RotationState.ROLLING_BACK: rolling_back,
        }

    # Requesting ----------------------------------------------------------------------

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
        """Record a new rotation of `credential` in state `requested` and return its id
        (`Requests.request` says when it is refused, what break-glass skips, and what
        `guard` and `lease` do)."""
        return self.requests.request(
            credential,
            requested_by=requested_by,
            reason=reason,
            trigger=trigger,
            grace=grace,
            audit_refusal=audit_refusal,
            guard=guard,
            lease=lease,
            break_glass_permitted=break_glass_permitted,
            event=event,
        )

    # Running -------------------------------------------------------------------------

    async def run(self, rotation_id: str) -> RotationState:
        """Advance the rotation as far as it can go now.

        Returns the state it stopped in: a final state, or one that waits (`grace`
        while the grace period lasts, an approval, a freeze); a later `run`, e.g. from
        the worker, goes on from there. A freeze that covers the credential, or an
        integration it uses that the estate disabled, stops the run between two states,
        with no step half-done; a rollback is not stopped.
        """
        run = self.steps.claim(rotation_id)
        bound = log.bind(rotation_id=rotation_id, credential=run.credential)
        try:
            while not run.state.is_final:
                held = self._held(run) if run.held is None else run.held
                run.held = None  # what advancing the state finds next
                if held:
                    bound.info("paused", state=run.state.value, reason=held[0])
                    break
                advance = self._table.get(run.state)
                if advance is None:
                    raise KeyshiftError(
                        f"rotation {run.rotation_id} is in state {run.state}, which needs a human"
                    )
                bound.debug("advancing", state=run.state.value)
                if not await advance(run):
                    break
            return run.state
        finally:
            await self.steps.let_go(run)

    def _held(self, run: Run) -> list[str]:
        """Why this run waits now: a freeze holds it, or the estate disabled an integration
        it calls through (as applied since the rotation was requested). Empty when
        nothing does, and while it rolls back. A person's break-glass rotation is not
        held by freezes, not even one started after it."""
        if run.state == RotationState.ROLLING_BACK:
            return []
        with self.store.transaction() as s:
            return self._held_in(s, run)

    def _held_in(self, s: Session, run: Run) -> list[str]:
        """`_held`, inside the transaction of `s`."""
        if run.state == RotationState.ROLLING_BACK:
            return []
        now = self.steps.context.now()
        found = s.execute(_HELD_BY, {"name": run.credential, "now": now}).one_or_none()
        if found is None:
            raise NotFound(f"no credential named {run.credential} in the estate")
        owner, environment, integrations, frozen = found
        disabled = disabled_integrations(integrations or {})
        held = [integration_disabled(name, run.credential) for name in disabled]
        if run.exempt.freezes or not frozen:
            return held
        return held + freezes.refusals(freezes.holding(s, now), run.credential, owner, environment)

    def _held_on_move(self, s: Session, run: Run) -> list[str] | None:
        """`_held_in` for `Steps.set_state`; None (asked again later, in a transaction
        of its own) where it raises, so that a move never fails on the question."""
        try:
            return self._held_in(s, run)
        except NotFound:
            return None

    async def roll_back(self, rotation_id: str, *, reason: str) -> RotationState:
        """Roll back by hand a rotation whose new version is published while the old one
        is still valid (`Rollback.by_hand` says when that is refused)."""
        return await self.rollback.by_hand(rotation_id, reason=reason)

    async def retire_disabled(self, rotation_id: str) -> dict[str, Any] | None:
        """Revoke at the issuer what a rollback kept disabled, once its retention is over
        (`Retirement.retire_disabled`)."""
        return await self.retirement.retire_disabled(rotation_id)

    async def preflight(
        self,
        plan: Plan,
        *,
        provider: Provider | None = None,
        context: PluginContext | None = None,
        secrets: list[str] | None = None,
    ) -> list[tuple[str, PreflightResult]]:
        """The provider's readiness, then each action's, changing nothing (the dry run).

        Without `provider` and `context` both are built from the plan (the provider is
        closed afterwards); see `preflight.check`.
        """

        def context_for(known: list[str]) -> PluginContext:
            return context or self.plugin_context(plan, known)

        return await preflight.check(plan, context_for, provider=provider, secrets=secrets)

    # Importing -------------------------------------------------------------------------

    async def import_current(
        self,
        credential: str,
        value: Secret,
        *,
        username: str | None = None,
        kid: str | None = None,
        expires_at: datetime | None = None,
    ) -> Imported:
        """Store a value the issuer holds now as the credential's current version, proven
        first (`imports.import_current`)."""
        return await import_current(
            self.store,
            self.context_for,
            credential,
            value,
            actor=self.actor,
            username=username,
            kid=kid,
            expires_at=expires_at,
        )

    # Plugin contexts -------------------------------------------------------------------

    def plugin_context(self, plan: Plan, secrets: list[str] | None = None) -> PluginContext:
        """The context plugins of this plan get: the plan's integrations, and a resolver
        for `env:`, `file:` and `credential:` references (values read are remembered in
        `secrets`, so error messages can be scrubbed of them)."""
        return self.context_for(plan.integrations, secrets)

    def context_for(
        self, integrations: dict[str, dict[str, Any]], secrets: list[str] | None = None
    ) -> PluginContext:
        """A plugin context with these integrations (in their stored form, with `type`)."""

        def resolve(path: str, ref: str) -> Secret:
            value = read_source(path, ref, self.context.env, credential=self._current_value)
            if secrets is not None:
                secrets.append(value.reveal())
            return value

        return replace(
            self.context,
            integrations=build_integrations(integrations),
            resolve_secret=resolve,
        )

    def _current_value(self, credential: str) -> Secret:
        """The current version's value of another keyshift credential (`credential:NAME`)."""
        with self.store.transaction() as s:
            cred = rows.credential(s, credential)
            current = rows.current_version(s, cred.id)
            if current is None:
                raise ConfigError(f"credential:{credential}", "has no current version yet")
            if rows.adopted(current):
                raise ConfigError(
                    f"credential:{credential}",
                    "has only adopted secrets, whose value keyshift never held",
                )
            return self.store.reveal(current)
