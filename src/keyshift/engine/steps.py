"""The journaled step: how every step of a rotation runs, whatever it does.

Durability rules, applied at every step:

- The step's row is written (`running`) and committed before its side effect.
- The side effect's result is stored before the step is closed; the step is closed and
  the rotation moved to its next state in one transaction, together with the events
  of both (the audit trail writes its entries there).
- On restart the engine rolls forward: a step left `running` is marked interrupted
  and run again. Every step is idempotent, so running it again never issues a second
  version and never publishes a different value.

`Steps` owns the run's lease (claim, heartbeat, release), the journal writes, the
retries of transient errors and every state change; the step bodies (`issuer`,
`rollout`, `gates`, `rollback`) only say what a step does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import structlog
from sqlalchemy.orm import Session

from keyshift.context import PluginContext
from keyshift.domain.states import RotationState, StepStatus
from keyshift.engine import journal, rows
from keyshift.engine.events import EngineEvent, EventBus
from keyshift.engine.faults import crash_point
from keyshift.engine.journal import OpenStep
from keyshift.engine.leases import Leases
from keyshift.engine.plan import Plan, PlannedAction
from keyshift.engine.plugins import build_provider, build_target
from keyshift.engine.run import Run
from keyshift.engine.subscribers import AuditTrail
from keyshift.errors import KeyshiftError, NotFound, PluginError, TransientError, scrub
from keyshift.governance import exemptions
from keyshift.store.models import CredentialRow, RotationRow, StepRow
from keyshift.store.store import Store
from keyshift.targets.base import StepResult, Target

__all__ = ["MAX_IN_STEP_WAIT", "TRANSIENT_ATTEMPTS", "StepBody", "Steps"]

log = structlog.get_logger("keyshift.engine")

MAX_IN_STEP_WAIT = 300.0
"""The longest wait between attempts of one step; a longer Retry-After fails the attempt."""

TRANSIENT_ATTEMPTS = 3
"""Tries of one step on TransientError before it counts as failed."""

T = TypeVar("T")

StepBody = Callable[[Run], Awaitable[StepResult]]
ContextFor = Callable[[dict[str, dict[str, Any]], list[str]], PluginContext]


class Steps:
    """Runs journaled steps of claimed rotations and moves them between states."""

    def __init__(
        self,
        store: Store,
        *,
        context: PluginContext,
        leases: Leases,
        events: EventBus,
        trail: AuditTrail,
        context_for: ContextFor,
    ) -> None:
        self.store = store
        self.context = context
        self.leases = leases
        self.events = events
        self.trail = trail
        self.context_for = context_for
        self.holds: Callable[[Session, Run], list[str] | None] | None = None
        """Why a run may not go on from the state it just entered (a freeze, a disabled
        integration), asked in the transaction that moves it there (`Engine._held`)."""

    # The lease -------------------------------------------------------------------------

    def claim(self, rotation_id: str) -> Run:
        """Take the rotation's lease and load what a run needs: the plan, its plugins and
        what the journal says about earlier attempts."""
        with self.store.transaction() as s:
            rot, lease_until = self.leases.take(s, rotation_id)
            cred = s.get(CredentialRow, rot.credential_id)
            if cred is None:
                raise NotFound(f"credential of rotation {rotation_id}")
            plan = Plan.from_json(rot.plan)
            attempts = journal.attempts_of(s, rotation_id)
        secrets: list[str] = []
        context = self.context_for(plan.integrations, secrets)
        provider = build_provider(plan.provider_type, plan.provider_config, context)
        run = Run(
            rotation_id,
            cred.id,
            cred.name,
            plan,
            provider,
            context,
            lease_until=lease_until,
            state=RotationState(rot.state),
            grace_until=rot.grace_until,
            attention=rot.attention,
            residual=dict(rot.residual or {}),
            seq=len(attempts),
            secrets=secrets,
            exempt=exemptions(rot.trigger, from_event=rot.event_id is not None),
        )
        for step_name, attempt, step_status in attempts:
            run.attempts[step_name] = max(attempt, run.attempts.get(step_name, 0))
            if step_status == StepStatus.RUNNING.value:
                run.interrupted.add(step_name)
            elif step_status == StepStatus.SUCCEEDED.value:
                run.succeeded.add(step_name)
        return run

    async def let_go(self, run: Run) -> None:
        """Close the run's provider and release its lease."""
        try:
            await run.provider.aclose()
        finally:
            self.leases.release(run.rotation_id)

    async def _heartbeat(self, run: Run) -> None:
        """Keep the lease while a long step runs."""

        def renewed(until: datetime) -> None:
            run.lease_until = until

        await self.leases.heartbeat(run.rotation_id, renewed)

    # Steps -----------------------------------------------------------------------------

    async def step(
        self,
        run: Run,
        name: str,
        body: StepBody,
        next_state: RotationState | None,
        *,
        finishes: bool = False,
    ) -> None:
        """Journal `name`, run `body`, then close the step and advance in one transaction.

        For the steps before anything is published (validate, preflight, create) and
        revocation: a failure ends the run `failed`, or `needs_attention` at revocation.
        Failures after publishing take the abort path instead (`Rollout`).
        """
        opened, result, error = await self.attempt(run, name, lambda: body(run))
        if error is not None:
            final = RotationState.NEEDS_ATTENTION if name == "revoking" else RotationState.FAILED
            self.end(run, opened, None, error, next_state=final)
            return
        if finishes:
            next_state = self.finished_state(run)
        self.end(run, opened, result, None, next_state=next_state)

    async def attempt(
        self, run: Run, name: str, call: Callable[[], Awaitable[StepResult]]
    ) -> tuple[OpenStep, StepResult | None, str | None]:
        """Journal the step as running, then run it (retrying transient errors).

        Returns the open step with either its result or its scrubbed error; the
        caller closes it. The crash point sits between the side effect and the close.
        """
        opened = self._begin(run, name)
        heartbeat = asyncio.create_task(self._heartbeat(run))
        try:
            result = await self.retrying(call)
        except (PluginError, KeyshiftError) as exc:
            return opened, None, scrub(str(exc), run.secrets)
        finally:
            heartbeat.cancel()
        crash_point(name)
        return opened, result, None

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """Call, retrying a TransientError after its Retry-After (or a backoff)."""
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                return await call()
            except TransientError as exc:
                if attempt == TRANSIENT_ATTEMPTS:
                    raise
                delay = exc.retry_after if exc.retry_after is not None else 2.0 ** (attempt - 1)
                if delay > MAX_IN_STEP_WAIT:
                    # Sleeping this long inside a step would hold the run (and the stores
                    # already switched) for hours; leave the step failed-for-now instead,
                    # so its on_failure decides and an operator sees it at once.
                    raise
                log.warning(
                    "transient failure, retrying", attempt=attempt, delay_s=delay, error=str(exc)
                )
                await self.context.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _begin(self, run: Run, name: str) -> OpenStep:
        """Journal the step as running (and renew the lease when due) in one transaction.

        Attempt numbers and the step sequence come from the journal read when the
        lease was claimed: while this worker holds the lease nobody else writes it.
        """
        now = self.context.now()
        attempt = run.attempts.get(name, 0) + 1
        run.seq += 1
        with self.store.transaction() as s:
            conn = s.connection()
            run.lease_until = self.leases.renew(conn, run.rotation_id, run.lease_until, now)
            # After an interruption the worker that ran an earlier attempt stopped
            # mid-step; its side effect may or may not have happened, so it runs again.
            step_id = journal.open_step(
                conn,
                run.rotation_id,
                seq=run.seq,
                name=name,
                attempt=attempt,
                now=now,
                after_interruption=name in run.interrupted,
            )
            run.interrupted.discard(name)
            self.events.emit(
                s,
                EngineEvent(
                    "step.started",
                    run.rotation_id,
                    run.credential,
                    now,
                    run.state,
                    step=name,
                    attempt=attempt,
                    status=StepStatus.RUNNING,
                    started_at=now,
                ),
            )
        run.attempts[name] = attempt
        return OpenStep(step_id, name, attempt, now, time.monotonic())

    def end(
        self,
        run: Run,
        opened: OpenStep,
        result: StepResult | None,
        error: str | None,
        *,
        next_state: RotationState | None = None,
        attention: str | None = None,
        rotation_error: str | None = None,
    ) -> None:
        """Close a step (succeeded when `error` is None), emit it, and maybe advance."""
        now = self.context.now()
        duration = time.monotonic() - opened.started
        name = opened.name
        status = StepStatus.SUCCEEDED if error is None else StepStatus.FAILED
        detail = dict(result.detail) if result is not None else {}
        with self.store.transaction() as s:
            journal.close_step(
                s.connection(), opened.id, status=status, now=now, detail=detail, error=error
            )
            self.events.emit(
                s,
                EngineEvent(
                    "step.ended",
                    run.rotation_id,
                    run.credential,
                    now,
                    run.state,
                    step=name,
                    attempt=opened.attempt,
                    status=status,
                    started_at=opened.started_at,
                    duration_s=duration,
                    detail=detail,
                    error=error,
                ),
            )
            final_error = error is not None and next_state in (
                RotationState.FAILED,
                RotationState.NEEDS_ATTENTION,
            )
            if attention or rotation_error or final_error:
                rot = rows.rotation(s, run.rotation_id)
                if attention:
                    rot.attention = run.attention = "; ".join(
                        filter(None, [rot.attention, attention])
                    )
                if rotation_error:
                    rot.error = rotation_error
                elif final_error:
                    rot.error = f"{name}: {error}"
                if next_state is not None:
                    self.set_state(s, run, next_state, rot)
            elif next_state is not None:
                self.set_state(s, run, next_state)
        if error is None:
            run.succeeded.add(name)

    def journal(self, rotation_id: str) -> list[StepRow]:
        with self.store.transaction() as s:
            return journal.steps_of(s, rotation_id)

    def target(self, run: Run, action: PlannedAction) -> Target:
        """The action's target, built once a run."""
        if action.step not in run.targets:
            run.targets[action.step] = build_target(
                action.type, action.config, run.context, action.agent_id
            )
        return run.targets[action.step]

    # State -----------------------------------------------------------------------------

    def transition(self, run: Run, state: RotationState) -> None:
        with self.store.transaction() as s:
            self.set_state(s, run, state)

    def set_state(
        self, s: Session, run: Run, state: RotationState, rot: RotationRow | None = None
    ) -> None:
        """Move the rotation to `state` and emit the change; a final state also frees the
        credential (the audit trail records it). Intermediate states take one prebuilt
        statement (every step has one)."""
        now = self.context.now()
        previous, run.state = run.state, state
        # Asked here, in the move's own transaction, the engine need not open another to
        # ask before it goes on.
        run.held = None if self.holds is None or state.is_final else self.holds(s, run)
        changed = EngineEvent(
            "rotation.state", run.rotation_id, run.credential, now, state, previous=previous
        )
        if rot is None and not state.is_final:
            journal.set_state(s.connection(), run.rotation_id, state, now)
            self.events.emit(s, changed)
            return
        rot = rot or rows.rotation(s, run.rotation_id)
        rot.state = state.value
        rot.updated_at = now
        if state.is_final:
            rot.finished_at = now
            rows.free_credential(s, rot.credential_id, rot.id)
            rows.note_finished(s, rot.credential_id)
            log.info("rotation finished", rotation_id=rot.id, state=state.value)
        self.events.emit(s, changed)

    def finished_state(self, run: Run) -> RotationState:
        return RotationState.NEEDS_ATTENTION if run.attention else RotationState.COMPLETED

    def note_attention(self, run: Run, why: str) -> None:
        """Record that the run needs a person, without failing the step it is in."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            rot.attention = run.attention = "; ".join(filter(None, [rot.attention, why]))

    def audit(
        self,
        s: Session,
        rotation_id: str,
        action: str,
        details: Mapping[str, Any],
        *,
        actor: str | None = None,
    ) -> None:
        """Audit `action` on the rotation, by default as the engine's actor."""
        self.trail.record(s, rotation_id, action, details, actor=actor)
