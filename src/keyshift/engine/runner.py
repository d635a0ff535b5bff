"""The rotation engine: runs the state machine of design.md, one journaled step at a time.

Durability rules, applied at every step:

- The step's row is written (`running`) and committed before its side effect.
- The side effect's result is stored before the step is closed; the step is
  closed and the rotation advanced to its next state in one transaction,
  together with the step's audit entry.
- On restart the engine rolls forward: a step left `running` is marked
  interrupted and run again. Every step is idempotent, so running it again
  never issues a second version (the version stored for this rotation is
  reused) and never publishes a different value.

A rotation is owned by one worker at a time through a lease on its row;
a lease whose holder died (same host, process gone) or expired is taken over.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from keyshift import __version__
from keyshift.checks.command import UsageCommand, command_usage
from keyshift.context import PluginContext
from keyshift.domain.durations import format_duration
from keyshift.domain.estate import CredentialSpec, Policy, ResidualUse
from keyshift.domain.secret import Secret
from keyshift.domain.states import (
    MANUAL_ROLLBACK_FROM,
    OnFailure,
    Phase,
    RotationState,
    StepStatus,
    VersionStatus,
)
from keyshift.engine import approvals, journal, rows
from keyshift.engine.events import EngineEvent, EventBus, Subscriber
from keyshift.engine.faults import crash_point
from keyshift.engine.journal import OpenStep, StepEvent
from keyshift.engine.leases import Leases
from keyshift.engine.plan import Plan, PlannedAction, build_plan
from keyshift.engine.plugins import build_integrations, build_provider, build_target
from keyshift.engine.propagation import IssuerWait, wait_for_issuer
from keyshift.errors import (
    ConfigError,
    KeyshiftError,
    NotDelivered,
    NotFound,
    PermanentError,
    PluginError,
    PolicyRefused,
    RollbackRefused,
    TransientError,
    scrub,
)
from keyshift.governance import refusals
from keyshift.providers.base import (
    AdoptedVersion,
    AdoptRequest,
    Capability,
    CreateRequest,
    IssuedVersion,
    Provider,
    RevokeRequest,
    RevokeResult,
    UsageReport,
    UsageRequest,
    VerifyRequest,
    propagation_of,
)
from keyshift.sources import read_source
from keyshift.store.models import CredentialRow, RotationRow, StepRow, VersionRow
from keyshift.store.store import Store
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PreflightResult,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
    Target,
)

log = structlog.get_logger("keyshift.engine")

MAX_IN_STEP_WAIT = 300.0
"""The longest wait between attempts of one step; a longer Retry-After fails the attempt."""

T = TypeVar("T")

RETAIN_DISABLED = timedelta(days=7)
"""How long a rolled-back new version is kept (disabled) for analysis before it expires."""

TRANSIENT_ATTEMPTS = 3
"""Tries of one step on TransientError before it counts as failed."""

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
VERIFY_PROVIDER_STEP = "verifying:provider"
PROVE_STEP = "proving"


@dataclass
class _Run:
    """What one `run` call holds in memory: the loaded plan and its plugin instances."""

    rotation_id: str
    credential_id: str
    credential: str
    plan: Plan
    provider: Provider
    context: PluginContext
    lease_until: datetime
    state: RotationState
    grace_until: datetime | None
    attention: str | None
    residual: dict[str, Any]
    seq: int = 0
    attempts: dict[str, int] = field(default_factory=dict)
    interrupted: set[str] = field(default_factory=set)
    succeeded: set[str] = field(default_factory=set)
    """Steps whose last attempt was left `running` by a worker that stopped."""
    targets: dict[str, Target] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    deliveries: tuple[Delivery, Delivery | None] | None = None
    adopted_old: str | None = None
    """The old version's id when it is adopted (no value): rollback cannot restore it."""


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
        # The audit trail first: it writes the evidence inside each change's transaction.
        self.trail = AuditTrail(store, actor)
        listeners: list[Subscriber] = [self.trail, *subscribers]
        if on_event is not None:
            listeners.append(StepProgress(on_event))
        self.events = EventBus(listeners)

    @property
    def owner(self) -> str:
        """This engine's lease holder name (`host/pid/random`)."""
        return self.leases.owner

    # Requesting ----------------------------------------------------------------------

    def request(
        self,
        credential: str,
        *,
        requested_by: str,
        reason: str = "manual",
        grace: timedelta | None = None,
        audit_refusal: bool = True,
    ) -> str:
        """Record a new rotation of `credential` in state `requested` and return its id.

        Governance is checked first (allowlist, owner, environment, window, overlap):
        a refusal raises PolicyRefused, is audited (unless `audit_refusal` is off) and
        changes nothing else. Refused too while another rotation of the same credential
        is unfinished: the credential row is claimed with a conditional update, so two
        requests cannot both succeed.
        """
        rotation_id = str(uuid.uuid4())
        now = self.context.now()
        with self.store.transaction() as s:
            cred = rows.credential(s, credential)
            spec = CredentialSpec.model_validate(cred.spec["credential"])
            policy = Policy.model_validate(cred.spec["policy"])
            plan = build_plan(spec, policy, grace, cred.spec.get("integrations", {}))
            refused = refusals(
                spec, policy, approvals.governance(s), now=now, grace=plan.grace_period
            )
            if refused:
                if audit_refusal:
                    self.store.audit(
                        s,
                        actor=requested_by,
                        action="rotation.refused",
                        subject=f"credential:{credential}",
                        details={"reasons": refused, "reason": reason, "plan_hash": plan.hash},
                    )
            else:
                self._record_request(
                    s, cred, plan, rotation_id=rotation_id, by=requested_by, reason=reason, now=now
                )
        if refused:
            # Raised once the refusal's audit entry is committed; nothing else changed.
            raise PolicyRefused(credential, refused)
        log.info("rotation requested", rotation_id=rotation_id, credential=credential)
        return rotation_id

    def _record_request(
        self,
        s: Session,
        cred: CredentialRow,
        plan: Plan,
        *,
        rotation_id: str,
        by: str,
        reason: str,
        now: datetime,
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
                plan=plan.to_json(),
                plan_hash=plan.hash,
                keyshift_version=__version__,
                old_version_id=current.id if current else None,
                updated_at=now,
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

    # Running -------------------------------------------------------------------------

    async def run(self, rotation_id: str) -> RotationState:
        """Advance the rotation as far as it can go now.

        Returns the state it stopped in: a final state, or `grace` while the grace
        period lasts (a later `run`, e.g. from the worker, revokes after it).
        """
        run = self._claim(rotation_id)
        bound = log.bind(rotation_id=rotation_id, credential=run.credential)
        try:
            while True:
                # The run's in-memory state mirrors the row: only this lease holder
                # writes it, and every write goes through _set_state.
                state = run.state
                if state.is_final:
                    return state
                if state == RotationState.GRACE:
                    if not await self._grace_gate(run):
                        return state
                    continue  # the gate moved the run on (revoking, or needs_attention)
                if state in _AWAITING:
                    if not self._approval_gate(run, _AWAITING[state]):
                        return run.state
                    continue
                if state == RotationState.REVOKING and self._revoke_needs_approval(run):
                    self._ask_approval(run, approvals.REVOKE)
                    return run.state
                bound.debug("advancing", state=state.value)
                await self._advance(run, state)
        finally:
            await self._close(run)
            self._release(rotation_id)

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

    async def preflight(
        self,
        plan: Plan,
        *,
        provider: Provider | None = None,
        context: PluginContext | None = None,
        secrets: list[str] | None = None,
    ) -> list[tuple[str, PreflightResult]]:
        """The provider's readiness (step `provider:<type>`), then each action's in plan
        order, changing nothing (dry run and the `preflighted` step).

        A run passes its own provider and context; otherwise they are built from the plan
        and the provider is closed afterwards. An error raised while building or checking
        a plugin makes its step blocked with the error's message. Every reason is scrubbed
        of the values read for the check (collected in `secrets`).
        """
        known = secrets if secrets is not None else []
        request = PreflightRequest(
            credential=plan.credential, policy=Policy.model_validate(plan.policy)
        )
        results: list[tuple[str, PreflightResult]] = []
        try:
            ctx = context or self.plugin_context(plan, known)
        except KeyshiftError as exc:
            # The plan's integrations do not validate: nothing can be checked.
            blocked = PreflightResult(Readiness.BLOCKED, scrub(str(exc), known))
            steps = [f"provider:{plan.provider_type}", *(a.step for a in plan.actions)]
            return [(step, blocked) for step in steps]
        results.append(
            (f"provider:{plan.provider_type}", await self._provider_preflight(plan, ctx, provider))
        )
        for action in plan.actions:
            try:
                target = build_target(action.type, action.config, ctx, action.agent_id)
                result = await target.preflight(request)
            except TransientError as exc:
                result = PreflightResult(Readiness.BLOCKED, str(exc), transient=True)
            except KeyshiftError as exc:
                result = PreflightResult(Readiness.BLOCKED, str(exc))
            results.append((action.step, result))
        return [(step, replace(r, reason=scrub(r.reason, known))) for step, r in results]

    async def _provider_preflight(
        self, plan: Plan, context: PluginContext, provider: Provider | None
    ) -> PreflightResult:
        built: Provider | None = None
        try:
            if provider is None:
                provider = built = build_provider(plan.provider_type, plan.provider_config, context)
            return await provider.preflight(
                PreflightRequest(
                    credential=plan.credential, policy=Policy.model_validate(plan.policy)
                )
            )
        except TransientError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc), transient=True)
        except KeyshiftError as exc:
            return PreflightResult(Readiness.BLOCKED, str(exc))
        finally:
            if built is not None:
                try:
                    await built.aclose()
                except KeyshiftError as exc:
                    log.warning(
                        "provider close failed after preflight",
                        provider=plan.provider_type,
                        error_type=type(exc).__name__,
                    )

    async def _advance(self, run: _Run, state: RotationState) -> None:
        match state:
            case RotationState.REQUESTED:
                await self._step(run, "validated", self._validate, RotationState.VALIDATED)
            case RotationState.VALIDATED:
                approval = Policy.model_validate(run.plan.policy).approval
                if approval is not None and approval.required:
                    self._ask_approval(run, approvals.ROTATION)
                else:
                    await self._step(run, "preflighted", self._preflight, RotationState.PREFLIGHTED)
            case RotationState.APPROVED:
                await self._step(run, "preflighted", self._preflight, RotationState.PREFLIGHTED)
            case RotationState.PREFLIGHTED:
                self._transition(run, RotationState.CREATING)
            case RotationState.CREATING:
                # An issuer keyshift cannot sign in to (random: keyshift is the issuer)
                # has nothing to prove; the creating step's detail says so.
                proves = Capability.AUTHENTICATES in run.provider.capabilities
                after = RotationState.PROVING if proves else RotationState.PUBLISHING
                await self._step(run, "creating", self._create, after)
            case RotationState.PROVING:
                await self._prove_step(run)
            case (
                RotationState.PUBLISHING
                | RotationState.RELOADING
                | RotationState.VERIFYING
                | RotationState.NOTIFYING
            ):
                await self._run_phase(run, PHASE_OF_STATE[state])
            case RotationState.REVOKING:
                await self._step(run, "revoking", self._revoke, None, finishes=True)
            case RotationState.ROLLING_BACK:
                await self._roll_back(run)
            case _:
                raise KeyshiftError(
                    f"rotation {run.rotation_id} is in state {state}, which needs a human"
                )

    # Steps ---------------------------------------------------------------------------

    async def _step(
        self,
        run: _Run,
        name: str,
        body: Callable[[_Run], Awaitable[StepResult]],
        next_state: RotationState | None,
        *,
        finishes: bool = False,
    ) -> None:
        """Journal `name`, run `body`, then close the step and advance in one transaction.

        For the steps before anything is published (validate, preflight, create) and
        revocation: a failure ends the run `failed`, or `needs_attention` at revocation.
        Failures after publishing take the abort path instead (`_run_phase`).
        """
        opened, result, error = await self._attempt(run, name, lambda: body(run))
        if error is not None:
            final = RotationState.NEEDS_ATTENTION if name == "revoking" else RotationState.FAILED
            self._end(run, opened, None, error, next_state=final)
            return
        if finishes:
            next_state = self._finished_state(run)
        self._end(run, opened, result, None, next_state=next_state)

    async def _attempt(
        self, run: _Run, name: str, call: Callable[[], Awaitable[StepResult]]
    ) -> tuple[OpenStep, StepResult | None, str | None]:
        """Journal the step as running, then run it (retrying transient errors).

        Returns the open step with either its result or its scrubbed error; the
        caller closes it. The crash point sits between the side effect and the close.
        """
        opened = self._begin(run, name)
        heartbeat = asyncio.create_task(self._heartbeat(run))
        try:
            result = await self._retrying(call)
        except (PluginError, KeyshiftError) as exc:
            return opened, None, scrub(str(exc), run.secrets)
        finally:
            heartbeat.cancel()
        crash_point(name)
        return opened, result, None

    async def _run_phase(self, run: _Run, phase: Phase) -> None:
        done = set(run.succeeded)
        for action in run.plan.in_phase(phase):
            if action.step in done:
                continue  # finished before a restart: publishing again is not needed
            if await self._run_action(run, action):
                return  # aborted: the run is rolling back
        if phase == Phase.VERIFY and VERIFY_PROVIDER_STEP not in done:
            opened, result, error = await self._attempt(
                run, VERIFY_PROVIDER_STEP, lambda: self._verify(run)
            )
            if error is not None:
                # Consumers hold the new version and the issuer does not accept it: the
                # abort path puts the previous value back, as a failed verify action does.
                self._end(
                    run,
                    opened,
                    None,
                    error,
                    next_state=RotationState.ROLLING_BACK,
                    rotation_error=f"{VERIFY_PROVIDER_STEP}: {error}",
                )
                return
            self._end(run, opened, result, None)
        next_state = STATE_AFTER_PHASE[phase]
        if phase == Phase.VERIFY:
            self._cut_over(run)
        if next_state == RotationState.GRACE:
            self._enter_grace(run)
        else:
            self._transition(run, next_state)

    async def _run_action(self, run: _Run, action: PlannedAction) -> bool:
        """Run one action's step. Returns True when its failure aborts the run."""

        not_delivered = False

        async def publish() -> StepResult:
            nonlocal not_delivered
            new, previous = self._deliveries(run)
            target = self._target(run, action)
            try:
                return await target.publish(PublishRequest(delivery=new, previous=previous))
            except NotDelivered:
                not_delivered = True
                raise

        opened, result, error = await self._attempt(run, action.step, publish)
        if error is None:
            self._end(run, opened, result, None)
            return False
        why = f"{action.step}: {error}"
        # A step deliberately not performed leaves its consumer on the old version for a
        # person: the others still switch, and the old version is kept (not revoked).
        if action.on_failure == OnFailure.ABORT and not not_delivered:
            self._end(
                run, opened, None, error, next_state=RotationState.ROLLING_BACK, rotation_error=why
            )
            return True
        self._end(run, opened, None, error, attention=why)
        return False

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
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

    # Step bodies ---------------------------------------------------------------------

    async def _validate(self, run: _Run) -> StepResult:
        with self.store.transaction() as s:
            cred = s.get(CredentialRow, run.credential_id)
            if cred is None or cred.removed_at is not None:
                raise PermanentError(f"credential {run.credential} is no longer in the estate")
            refused = refusals(
                CredentialSpec.model_validate(cred.spec["credential"]),
                Policy.model_validate(run.plan.policy),
                approvals.governance(s),
                now=self.context.now(),
                grace=run.plan.grace_period,
            )
        if refused:
            raise PermanentError("refused by policy: " + "; ".join(refused))
        return StepResult({"plan_hash": run.plan.hash, "actions": len(run.plan.actions)})

    # Approvals -----------------------------------------------------------------------

    def _ask_approval(self, run: _Run, kind: str) -> None:
        """Open (or find) the approval request of this kind and wait for it."""
        now = self.context.now()
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            request = approvals.open_request(s, rot, run.plan, kind, now)
            approval = Policy.model_validate(run.plan.policy).approval
            self._audit(
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
            self._set_state(s, run, waiting, rot)

    def _revoke_needs_approval(self, run: _Run) -> bool:
        approval = Policy.model_validate(run.plan.policy).approval
        if approval is None or not approval.before_revoke:
            return False
        with self.store.transaction() as s:
            return not approvals.granted(s, run.rotation_id, approvals.REVOKE)

    def _approval_gate(self, run: _Run, kind: str) -> bool:
        """Move on when enough approvers accepted this plan; True once the run moved.

        A rotation whose estate changed since it was requested gets its new plan and a
        new request: approvals of the old plan do not authorise the new one.
        """
        now = self.context.now()
        policy = Policy.model_validate(run.plan.policy)
        with self.store.transaction() as s:
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
                    self._audit(
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
            verdict = approvals.evaluate(s, request, policy, now)
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
                self._audit(
                    s,
                    run.rotation_id,
                    "approval.closed",
                    {**details, "outcome": "rejected"},
                    actor=verdict.tally.rejected_by,
                )
                if kind == approvals.ROTATION:
                    rot.error = why
                    self._set_state(s, run, RotationState.FAILED, rot)
                else:
                    rot.attention = run.attention = f"revocation {why}; the old version stays valid"
                    self._set_state(s, run, RotationState.NEEDS_ATTENTION, rot)
                return True
            if not verdict.tally.satisfied(policy.approval):
                return False
            request.status, request.decided_at = "approved", now
            # Closed by the approval that completed the quorum, whichever run (that
            # approver's, or an earlier approver's still going) saw it first.
            self._audit(
                s,
                run.rotation_id,
                "approval.closed",
                {**details, "outcome": "approved"},
                actor=verdict.tally.counted[-1] if verdict.tally.counted else None,
            )
            after = RotationState.APPROVED if kind == approvals.ROTATION else RotationState.REVOKING
            self._set_state(s, run, after, rot)
        return True

    async def _preflight(self, run: _Run) -> StepResult:
        results = await self.preflight(
            run.plan, provider=run.provider, context=run.context, secrets=run.secrets
        )
        blocked = [(step, r) for step, r in results if r.readiness == Readiness.BLOCKED]
        why = "preflight blocked: " + "; ".join(f"{step}: {r.reason}" for step, r in blocked)
        if blocked and all(r.transient for _, r in blocked):
            raise TransientError(why)  # e.g. the issuer is unreachable for now: retried
        if blocked:
            raise PermanentError(why)
        return StepResult({step: r.readiness.value for step, r in results})

    async def _create(self, run: _Run) -> StepResult:
        # Look before creating: a version stored for this rotation before a crash is
        # the one this rotation issued; creating again would mint a second one.
        with self.store.transaction() as s:
            existing = s.execute(
                select(VersionRow).where(VersionRow.rotation_id == run.rotation_id)
            ).scalar_one_or_none()
            if existing is not None:
                self._set_new_version(s, run, existing.id)
                return StepResult(
                    {
                        "version_id": existing.id,
                        "fingerprint": existing.fingerprint,
                        "reused": True,
                        **self._no_proof(run),
                    }
                )
            current = rows.current_version(s, run.credential_id)
            # An adopted current version has no value to hand to the provider.
            current_issued = (
                self._issued(current) if current and not rows.adopted(current) else None
            )
            first = current is None and rows.rotation(s, run.rotation_id).old_version_id is None
        adopted = await self._adopt(run) if first else {}
        issued = await self._issue(run, current_issued)
        # A crash here leaves a version at the issuer that keyshift has not stored;
        # the provider's create is idempotent for this rotation's marker.
        crash_point("creating:issuer")
        try:
            with self.store.transaction() as s:
                serial = rows.next_serial(s, run.credential_id)
                row = VersionRow(
                    id=str(uuid.uuid4()),
                    credential_id=run.credential_id,
                    rotation_id=run.rotation_id,
                    serial=serial,
                    provider_ref=issued.provider_ref,
                    attributes=dict(issued.attributes),
                    status=VersionStatus.PENDING.value,
                    fingerprint=self.store.fingerprint(issued.value),
                    created_at=self.context.now(),
                    expires_at=issued.expires_at,
                    revoked_at=None,
                )
                self.store.seal_into(row, issued.value)
                s.add(row)
                s.flush()
                self._set_new_version(s, run, row.id)
                detail = {
                    "version_id": row.id,
                    "fingerprint": row.fingerprint,
                    "provider_ref": row.provider_ref,
                    "serial": serial,
                    **adopted,
                    **self._no_proof(run),
                }
        except Exception as exc:
            # The issuer holds a version keyshift could not store: revoke it so no
            # unknown credential stays valid, and name it if that fails too.
            try:
                await run.provider.revoke(RevokeRequest(run.credential, run.rotation_id, issued))
            except Exception as cleanup:
                raise PermanentError(
                    f"storing the new version failed ({exc.__class__.__name__}) and revoking it "
                    f"failed too ({cleanup.__class__.__name__}): orphaned version "
                    f"{issued.provider_ref} at the issuer"
                ) from exc
            raise PermanentError(
                f"storing the new version failed ({exc.__class__.__name__}); the issued "
                f"version {issued.provider_ref} was revoked"
            ) from exc
        return StepResult(detail)

    async def _adopt(self, run: _Run) -> dict[str, Any]:
        """On a credential's first rotation, record the issuer's versions that keyshift did
        not create (if the provider adopts them) as the rotation's old version, so the
        grace period, residual-use and approval gates and the revocation treat them as
        they treat any old version. Returns facts for the create step's detail.

        The row and `old_version_id` are written in one transaction before the new version
        is issued: a create step run again after a crash finds `old_version_id` set and
        adopts nothing a second time (nor the new secret, which carries the marker).
        """
        if Capability.ADOPTS_EXISTING not in run.provider.capabilities:
            return {}
        finder = cast(Any, run.provider)
        found: AdoptedVersion | None = await finder.adopt_existing(AdoptRequest(run.credential))
        if found is None:
            return {"adopted": "nothing to adopt"}
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            serial = rows.next_serial(s, run.credential_id)
            row = VersionRow(
                id=str(uuid.uuid4()),
                credential_id=run.credential_id,
                rotation_id=None,  # not issued by a rotation; `_create` looks rows up by it
                serial=serial,
                provider_ref=found.provider_ref,
                attributes=dict(found.attributes),
                # Current until the cutover makes it previous, as an issued version would be.
                status=VersionStatus.CURRENT.value,
                fingerprint=rows.ADOPTED_FINGERPRINT,
                ciphertext=None,
                wrapped_key=None,
                master_key_id=None,
                created_at=self.context.now(),
                expires_at=found.expires_at,
                revoked_at=None,
            )
            s.add(row)
            s.flush()
            rot.old_version_id = row.id
            facts = {
                "adopted_version_id": row.id,
                "adopted_provider_ref": row.provider_ref,
                **{f"adopted_{k}": v for k, v in found.attributes.items()},
            }
            self._audit(
                s,
                run.rotation_id,
                "version.adopted",
                {"credential": run.credential, **facts},
            )
        log.info("versions adopted", rotation_id=run.rotation_id, version_id=row.id)
        return facts

    async def _issue(self, run: _Run, current: IssuedVersion | None) -> IssuedVersion:
        policy = Policy.model_validate(run.plan.policy)
        issued = await run.provider.create(
            CreateRequest(
                credential=run.credential,
                rotation_id=run.rotation_id,
                marker=f"keyshift:{run.rotation_id}",
                policy=policy,
                current=current,
            )
        )
        run.secrets.append(issued.value.reveal())
        return issued

    def _no_proof(self, run: _Run) -> dict[str, str]:
        if Capability.AUTHENTICATES in run.provider.capabilities:
            return {}
        return {"proof": "not applicable: keyshift cannot sign in to this issuer"}

    def _new_issued(self, run: _Run) -> tuple[VersionRow, IssuedVersion]:
        """The rotation's new version, as stored, and as the provider receives it."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.new_version_id is None:
                raise PermanentError(f"rotation {rot.id} has no new version")
            row = rows.version(s, rot.new_version_id)
            if row.status == VersionStatus.REVOKED.value:
                raise PermanentError(f"the new version {row.id} was revoked")
            issued = self._issued(row)
        run.secrets.append(issued.value.reveal())
        return row, issued

    async def _prove_step(self, run: _Run) -> None:
        """Sign in with the new version at the issuer before any consumer gets it.

        Proven: the rotation moves on to publishing. Not proven within the propagation
        timeout (or refused outright): nothing was published, so the new version is
        revoked at the issuer and the rotation ends `failed` with the reason. A worker
        that stops mid-proof is resumed into the same proof of the same stored version.
        """
        opened, result, error = await self._attempt(run, PROVE_STEP, lambda: self._prove(run))
        if error is None:
            self._end(run, opened, result, None, next_state=RotationState.PUBLISHING)
            return
        withdrawn = await self._withdraw_unproven(run)
        self._end(run, opened, None, f"{error}; {withdrawn}", next_state=RotationState.FAILED)

    async def _prove(self, run: _Run) -> StepResult:
        return await self._new_version_accepted(run, "proved", "was not accepted by the issuer")

    async def _new_version_accepted(self, run: _Run, verb: str, refused: str) -> StepResult:
        """Sign in with the new version until the issuer accepts it, within the propagation
        timeout; the attempts for the step's result, or PermanentError saying `refused`."""
        row, issued = self._new_issued(run)
        wait = await self._until_issuer(run, issued, accepted=True)
        if not wait.settled:
            raise PermanentError(
                f"the new version {row.id} {refused} {wait.summary}: {wait.detail}"
            )
        return StepResult(
            {
                "version_id": row.id,
                "fingerprint": row.fingerprint,
                "detail": wait.detail,
                **wait.facts(verb),
            }
        )

    async def _withdraw_unproven(self, run: _Run) -> str:
        """Revoke a new version that was never proven (and never published), so that no
        credential nobody uses stays valid; the outcome, for the rotation's error."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            row = rows.version(s, rot.new_version_id) if rot.new_version_id else None
            if row is None or row.status == VersionStatus.REVOKED.value:
                return "nothing was published"
            issued = self._issued(row)
        try:
            await self._retrying(
                lambda: run.provider.revoke(RevokeRequest(run.credential, run.rotation_id, issued))
            )
        except (PluginError, KeyshiftError) as exc:
            with self.store.transaction() as s:
                held = rows.version(s, row.id)
                held.status = VersionStatus.DISABLED.value
                held.expires_at = self.context.now() + RETAIN_DISABLED
            return scrub(
                f"nothing was published; revoking the new version failed too ({exc}): "
                f"version {issued.provider_ref} is still valid at the issuer",
                run.secrets,
            )
        with self.store.transaction() as s:
            held = rows.version(s, row.id)
            held.status = VersionStatus.REVOKED.value
            held.revoked_at = self.context.now()
            # Revoked on purpose: the value is no longer kept.
            held.ciphertext = held.wrapped_key = held.master_key_id = None
        if Capability.IN_PLACE in run.provider.capabilities:
            return (
                "nothing was published; the issuer replaced the value in place, so "
                "consumers keep the previous value, which it may no longer accept"
            )
        return f"nothing was published; the new version {row.id} was revoked at the issuer"

    async def _verify(self, run: _Run) -> StepResult:
        """Post-cutover test at the issuer, waiting out propagation like the proof."""
        return await self._new_version_accepted(run, "verified", "does not authenticate")

    def _propagation_timeout(self, run: _Run) -> timedelta:
        declared = Policy.model_validate(run.plan.policy).propagation_timeout
        return declared if declared is not None else propagation_of(run.provider).timeout

    async def _until_issuer(
        self, run: _Run, version: IssuedVersion, *, accepted: bool
    ) -> IssuerWait:
        return await wait_for_issuer(
            run.provider,
            run.credential,
            version,
            accepted=accepted,
            within=self._propagation_timeout(run),
            context=self.context,
            secrets=run.secrets,
        )

    async def _revoke(self, run: _Run) -> StepResult:
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.old_version_id is None:
                return StepResult({"revoked": None, "reason": "no previous version"})
            old = rows.version(s, rot.old_version_id)
            if old.status == VersionStatus.REVOKED.value:
                # Revoked before a restart; the issuer call succeeded then.
                return StepResult(
                    {"version_id": old.id, "fingerprint": old.fingerprint, "already_revoked": True}
                )
            adopted = rows.adopted(old)
            if adopted and Capability.ADOPTS_EXISTING not in run.provider.capabilities:
                # The estate stopped retiring adopted versions (e.g. `adopt_existing: keep`)
                # after this one was adopted: what was made by hand stays valid.
                return StepResult(
                    {
                        "version_id": old.id,
                        "revoked": None,
                        "reason": "adopted version kept: the provider no longer retires them",
                    }
                )
            issued = self._old_issued(old)
        result = await run.provider.revoke(RevokeRequest(run.credential, run.rotation_id, issued))
        crash_point("revoking:issuer")
        proof = (
            {
                "revocation_proof": "not possible by sign-in: keyshift never held the "
                "adopted version's value; the issuer's answer is the evidence"
            }
            if adopted
            else await self._revocation_proof(run, issued)
        )
        with self.store.transaction() as s:
            old = rows.version(s, issued_id := rot.old_version_id)
            old.status = VersionStatus.REVOKED.value
            old.revoked_at = self.context.now()
            # Revoked on purpose: the value is no longer kept.
            old.ciphertext = old.wrapped_key = old.master_key_id = None
        return StepResult(
            {
                "version_id": issued_id,
                "fingerprint": old.fingerprint,
                "provider_ref": old.provider_ref,
                "already_gone": result.already_gone,
                **proof,
                "residual_use": run.residual or "not checked",
                **dict(result.detail),
            }
        )

    async def _revocation_proof(self, run: _Run, old: IssuedVersion) -> dict[str, Any]:
        """Sign in with the revoked version, as a consumer would, until the issuer refuses
        it everywhere, within the propagation timeout (Entra ID keeps accepting a removed
        secret for minutes). Still accepted at the timeout: the run ends needs_attention
        with "old version still accepted by the issuer", never completed.

        Only issuers whose `verify` really logs in can prove this; for the others
        (keyshift itself is the issuer of `random`) the proof is not applicable.
        """
        if Capability.AUTHENTICATES not in run.provider.capabilities:
            return {"revocation_proof": "not applicable"}
        wait = await self._until_issuer(run, old, accepted=False)
        facts = wait.facts("refused")
        if wait.settled:
            return {"revocation_proof": f"refused: {wait.detail}", **facts}
        why = (
            f"old version still accepted by the issuer {wait.summary} after its revocation "
            f"({wait.detail}); check again, and revoke it at the issuer by hand if it stays"
        )
        self._note_attention(run, why)
        return {"revocation_proof": f"still accepted: {wait.detail}", **facts}

    def _note_attention(self, run: _Run, why: str) -> None:
        """Record that the run needs a person, without failing the step it is in."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            rot.attention = run.attention = "; ".join(filter(None, [rot.attention, why]))

    async def _roll_back(self, run: _Run) -> None:
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
        journal = self._journal(run.rotation_id)
        succeeded = [s.name for s in journal if s.status == StepStatus.SUCCEEDED.value]
        ran = {s.name for s in journal}
        failed = {s.name for s in journal if s.status == StepStatus.FAILED.value}
        by_step = {a.step: a for a in run.plan.actions}
        restore = [
            a.step
            for a in run.plan.actions
            if a.phase == Phase.PUBLISH and (a.step in succeeded or a.step in failed)
        ]
        reload = [
            a.step for a in run.plan.actions if a.phase == Phase.RELOAD and a.step in succeeded
        ]
        recheck = [a.step for a in run.plan.actions if a.phase == Phase.VERIFY and a.step in ran]
        announce = [
            a.step for a in run.plan.actions if a.phase == Phase.NOTIFY and a.step in succeeded
        ]
        to_undo = [*reversed(restore), *reload, *recheck, *announce]
        not_restored: list[str] = []
        for name in to_undo:
            undo = f"rollback:{name}"
            if undo in succeeded:
                continue
            action = by_step[name]

            async def undo_action(action: PlannedAction = action) -> StepResult:
                new, previous = self._deliveries(run)
                target = self._target(run, action)
                result = await target.rollback(RollbackRequest(failed=new, previous=previous))
                if run.adopted_old is None:
                    return result
                # The value consumers had before was adopted, never known to keyshift:
                # the target rolled back as on a first rotation, with no previous value.
                note = (
                    f"adopted version {run.adopted_old}: its value was never known to "
                    "keyshift, so no previous value was restored"
                )
                return StepResult({**dict(result.detail), "previous": note})

            opened, result, error = await self._attempt(run, undo, undo_action)
            if error is not None:
                not_restored.append(f"{name} ({error})")
            self._end(run, opened, result, error)
        self._finish_rollback(run, not_restored)

    # Rolling back by hand ------------------------------------------------------------

    async def roll_back(self, rotation_id: str, *, reason: str) -> RotationState:
        """Roll back, at the operator's (`self.actor`) decision, a rotation whose new
        version is published while the old one is still valid: in `grace`,
        `awaiting_revoke_approval`, or ended `needs_attention` without revoking it.

        The rotation is claimed with its lease first (LeaseHeld while another live worker
        runs it), so of two rollbacks at once one runs and the other is refused, now or
        when it finds the rotation rolled back. Then it is the rollback of an abort
        failure (`_roll_back`): the previous value goes back to the consumers that got
        the new one, newest first, their reloads and checks run again, the new version
        is kept disabled with an expiry and the old one is current again. Returns
        `rolled_back`, or `failed` naming what could not be restored.

        Refused with RollbackRefused, changing nothing, in any other state, when the old
        version is revoked or its value was never held, when a later rotation replaced
        the new version, or when the issuer no longer accepts the old version.
        """
        run = self._claim(rotation_id)
        try:
            await self._check_rollback(run)
            self._begin_rollback(run, reason=reason)
            await self._roll_back(run)
            return run.state
        finally:
            await self._close(run)
            self._release(rotation_id)

    async def _check_rollback(self, run: _Run) -> None:
        """Raise RollbackRefused unless the claimed rotation may be rolled back now."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            old = rows.version(s, rot.old_version_id) if rot.old_version_id else None
            new = rows.version(s, rot.new_version_id) if rot.new_version_id else None
            why = _rollback_refusal(rot, old, new, run.provider)
            issued = self._old_issued(old) if why is None and old is not None else None
        if issued is not None:
            run.secrets.append(issued.value.reveal())
        checkable = Capability.AUTHENTICATES in run.provider.capabilities
        if why is None and issued is not None and checkable:
            # Re-publishing a value the issuer refuses would cut every consumer off.
            answer = await run.provider.verify(VerifyRequest(run.credential, issued))
            if not answer.ok:
                why = (
                    f"the old version {rot.old_version_id} no longer authenticates at the "
                    f"issuer ({answer.detail}); rolling back would cut the consumers off"
                )
        if why is not None:
            raise RollbackRefused(
                scrub(f"rotation {run.rotation_id} of {run.credential}: {why}", run.secrets)
            )

    def _begin_rollback(self, run: _Run, *, reason: str) -> None:
        """Record who rolls back and why, and move the rotation to `rolling_back`, in one
        transaction; from there a worker that stops is resumed like any rollback."""
        now = self.context.now()
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
            self._audit(
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
            self._set_state(s, run, RotationState.ROLLING_BACK, rot)

    # Retiring a rolled-back version --------------------------------------------------

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
        now = self.context.now()
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
        run = self._claim(rotation_id)
        try:
            with self.store.transaction() as s:
                row = rows.version(s, rows.rotation(s, rotation_id).new_version_id or "")
                issued = self._issued(row)
            run.secrets.append(issued.value.reveal())
            accepted = True
            if Capability.AUTHENTICATES in run.provider.capabilities:
                accepted = (await run.provider.verify(VerifyRequest(run.credential, issued))).ok
            result = (
                await run.provider.revoke(RevokeRequest(run.credential, rotation_id, issued))
                if accepted
                else RevokeResult(already_gone=True, detail={"issuer": "refuses it already"})
            )
            with self.store.transaction() as s:
                row = rows.version(s, row.id)
                row.status = VersionStatus.REVOKED.value
                row.revoked_at = self.context.now()
                # Revoked on purpose: the value is no longer kept.
                row.ciphertext = row.wrapped_key = row.master_key_id = None
                facts: dict[str, Any] = {
                    "credential": run.credential,
                    "version_id": row.id,
                    "fingerprint": row.fingerprint,
                    "provider_ref": row.provider_ref,
                    "reason": "kept disabled after a rollback; its retention is over",
                    "already_gone": result.already_gone,
                    **dict(result.detail),
                }
                self._audit(
                    s,
                    rotation_id,
                    "version.retired",
                    facts,
                )
            return facts
        except (PluginError, KeyshiftError) as exc:
            raise KeyshiftError(
                scrub(f"retiring version of rotation {rotation_id}: {exc}", run.secrets)
            ) from None
        finally:
            await self._close(run)
            self._release(rotation_id)

    # Journal and state ---------------------------------------------------------------

    def _audit(
        self,
        s: Session,
        rotation_id: str,
        action: str,
        details: Mapping[str, Any],
        *,
        actor: str | None = None,
    ) -> None:
        self.trail.record(s, rotation_id, action, details, actor=actor)

    def _begin(self, run: _Run, name: str) -> OpenStep:
        """Journal the step as running (and renew the lease when due) in one transaction.

        Attempt numbers and the step sequence come from the journal read when the
        lease was claimed: while this worker holds the lease nobody else writes it.
        The journal statements run on the session's connection as plain Core
        statements, built once: they are on the path of every step.
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

    async def _heartbeat(self, run: _Run) -> None:
        """Keep the lease while a long step runs."""

        def renewed(until: datetime) -> None:
            run.lease_until = until

        await self.leases.heartbeat(run.rotation_id, renewed)

    def _end(
        self,
        run: _Run,
        opened: OpenStep,
        result: StepResult | None,
        error: str | None,
        *,
        next_state: RotationState | None = None,
        attention: str | None = None,
        rotation_error: str | None = None,
    ) -> None:
        """Close a step (succeeded when `error` is None), audit it, and maybe advance."""
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
                    self._set_state(s, run, next_state, rot)
            elif next_state is not None:
                self._set_state(s, run, next_state)
        if error is None:
            run.succeeded.add(name)

    def _transition(self, run: _Run, state: RotationState) -> None:
        with self.store.transaction() as s:
            self._set_state(s, run, state)

    def _set_state(
        self, s: Session, run: _Run, state: RotationState, rot: RotationRow | None = None
    ) -> None:
        """Move the rotation to `state` and emit the change; a final state also frees the
        credential (the audit trail records it). Intermediate states take one prebuilt
        statement (every step has one)."""
        now = self.context.now()
        previous, run.state = run.state, state
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
            log.info("rotation finished", rotation_id=rot.id, state=state.value)
        self.events.emit(s, changed)

    def _finished_state(self, run: _Run) -> RotationState:
        return RotationState.NEEDS_ATTENTION if run.attention else RotationState.COMPLETED

    def _set_new_version(self, s: Session, run: _Run, version_id: str) -> None:
        rows.rotation(s, run.rotation_id).new_version_id = version_id

    def _cut_over(self, run: _Run) -> None:
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

    def _enter_grace(self, run: _Run) -> None:
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.old_version_id is None:
                # First issuance: nothing to overlap with and nothing to revoke.
                self._set_state(s, run, self._finished_state(run), rot)
                return
            rot.grace_until = run.grace_until = self.context.now() + run.plan.grace_period
            self._set_state(s, run, RotationState.GRACE, rot)

    async def _grace_gate(self, run: _Run) -> bool:
        """Decide whether the grace period may end now; True once the run moved on.

        Without a `residual_use` policy (or a provider that can see sessions) the old
        version is revoked when the grace period ends. With one, it is revoked as soon
        as it has been unused for `quiet_for`, checking every `check_every`; if the
        grace period ends while it is still in use, `on_timeout` decides. The evidence
        (checks, session counts, times) is kept on the rotation and goes into the
        revocation's audit entry.
        """
        gate = Policy.model_validate(run.plan.policy).residual_use
        over = self._grace_over(run)
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
                return self._leave_grace(
                    run,
                    evidence,
                    RotationState.NEEDS_ATTENTION,
                    error=f"the old version was not revoked: {', '.join(missed)} did not "
                    "take the new version; fix them, then rotate again or revoke by hand",
                )
        if gate is None or not _can_check(gate, run.provider):
            if over:
                self._transition(run, RotationState.REVOKING)
            return over
        now = self.context.now()
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
            return self._leave_grace(run, evidence, RotationState.REVOKING)
        if over and gate.on_timeout == "revoke":
            evidence["outcome"] = "grace period ended while in use; revoked as the policy says"
            return self._leave_grace(run, evidence, RotationState.REVOKING)
        if over and gate.on_timeout == "fail":
            evidence["outcome"] = "grace period ended before the old version was quiet"
            why = (
                f"still in use ({sessions} session(s))"
                if sessions
                else f"last used at {quiet_since.isoformat()}, less than quiet_for "
                f"({format_duration(gate.quiet_for)}) before"
            )
            return self._leave_grace(
                run,
                evidence,
                RotationState.NEEDS_ATTENTION,
                error=f"the old version was {why} when the grace period ended; it was not "
                "revoked (residual_use.on_timeout: fail)",
            )
        self._save_residual(run, evidence)
        return False

    async def _count_sessions(self, run: _Run, gate: ResidualUse, evidence: dict[str, Any]) -> int:
        """Sessions still using the old version, from the provider and/or the policy's
        command. A failed check counts as in use: revoking on missing evidence is what
        the gate exists to prevent."""
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            row = rows.version(s, rot.old_version_id) if rot.old_version_id else None
            old = self._old_issued(row) if row is not None else None
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
                env=self.context.env,
            )
            sessions += report.sessions
            details["command"] = dict(report.detail)
        evidence["last_detail"] = details
        return sessions

    def _save_residual(self, run: _Run, evidence: dict[str, Any]) -> None:
        run.residual = evidence
        with self.store.transaction() as s:
            rows.rotation(s, run.rotation_id).residual = evidence

    def _leave_grace(
        self, run: _Run, evidence: dict[str, Any], state: RotationState, *, error: str | None = None
    ) -> bool:
        run.residual = evidence
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            rot.residual = evidence
            if error:
                rot.error = error
            self._audit(
                s,
                run.rotation_id,
                "rotation.residual_use",
                {"credential": run.credential, "evidence": evidence, "next": state.value},
            )
            self._set_state(s, run, state, rot)
        return True

    def _consumers_left_behind(self, run: _Run) -> list[str]:
        """Publish and reload steps whose last attempt failed (under `on_failure:
        continue`): the consumers they serve never switched to the new version."""
        steps = {a.step for a in run.plan.actions if a.phase in (Phase.PUBLISH, Phase.RELOAD)}
        if not steps:
            return []
        with self.store.transaction() as s:
            rows = s.execute(
                select(StepRow.name, StepRow.status)
                .where(StepRow.rotation_id == run.rotation_id, StepRow.name.in_(steps))
                .order_by(StepRow.seq)
            ).all()
        last = {name: status for name, status in rows}  # noqa: C416 (rows are Row tuples)
        return sorted(name for name, status in last.items() if status == StepStatus.FAILED.value)

    def _grace_over(self, run: _Run) -> bool:
        return run.grace_until is None or self.context.now() >= run.grace_until

    def _finish_rollback(self, run: _Run, not_restored: list[str]) -> None:
        now = self.context.now()
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
            self._set_state(
                s, run, RotationState.FAILED if not_restored else RotationState.ROLLED_BACK, rot
            )

    def _reactivate(self, s: Session, run: _Run, old: VersionRow, now: datetime) -> None:
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
        self._audit(
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

    # Leases ----------------------------------------------------------------------------

    def _claim(self, rotation_id: str) -> _Run:
        with self.store.transaction() as s:
            rot, lease_until = self.leases.take(s, rotation_id)
            cred = s.get(CredentialRow, rot.credential_id)
            if cred is None:
                raise NotFound(f"credential of rotation {rotation_id}")
            plan = Plan.from_json(rot.plan)
            attempts = journal.attempts_of(s, rotation_id)
        secrets: list[str] = []
        context = self.plugin_context(plan, secrets)
        provider = build_provider(plan.provider_type, plan.provider_config, context)
        run = _Run(
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
        )
        for step_name, attempt, step_status in attempts:
            run.attempts[step_name] = max(attempt, run.attempts.get(step_name, 0))
            if step_status == StepStatus.RUNNING.value:
                run.interrupted.add(step_name)
            elif step_status == StepStatus.SUCCEEDED.value:
                run.succeeded.add(step_name)
        return run

    def _release(self, rotation_id: str) -> None:
        self.leases.release(rotation_id)

    # Helpers ---------------------------------------------------------------------------

    def _journal(self, rotation_id: str) -> list[StepRow]:
        with self.store.transaction() as s:
            return journal.steps_of(s, rotation_id)

    def _target(self, run: _Run, action: PlannedAction) -> Target:
        if action.step not in run.targets:
            run.targets[action.step] = build_target(
                action.type, action.config, run.context, action.agent_id
            )
        return run.targets[action.step]

    def _issued(self, row: VersionRow) -> IssuedVersion:
        value = self.store.reveal(row)
        return IssuedVersion(row.provider_ref, value, dict(row.attributes), row.expires_at)

    def _old_issued(self, row: VersionRow) -> IssuedVersion:
        """The old version for revocation and residual-use checks. An adopted one has no
        value: it goes with an empty one and its identifiers (the providers that adopt
        remove by identifier, and the usage command never receives a value)."""
        if rows.adopted(row):
            return IssuedVersion(row.provider_ref, Secret(""), dict(row.attributes), row.expires_at)
        return self._issued(row)

    def _deliveries(self, run: _Run) -> tuple[Delivery, Delivery | None]:
        """The new and previous versions as consumers receive them (decrypted once a run)."""
        if run.deliveries is not None:
            return run.deliveries
        with self.store.transaction() as s:
            rot = rows.rotation(s, run.rotation_id)
            if rot.new_version_id is None:
                raise PermanentError(f"rotation {rot.id} has no new version to deliver")
            new = self._delivery(run, rows.version(s, rot.new_version_id))
            old = rows.version(s, rot.old_version_id) if rot.old_version_id is not None else None
            if old is not None and rows.adopted(old):
                # Consumers get no previous value, as on a first rotation.
                run.adopted_old, old = old.id, None
            previous = self._delivery(run, old) if old is not None else None
        run.deliveries = (new, previous)
        return new, previous

    def _delivery(self, run: _Run, row: VersionRow) -> Delivery:
        value = self.store.reveal(row)
        run.secrets.append(value.reveal())
        return Delivery(
            run.credential, run.rotation_id, row.id, row.fingerprint, value, dict(row.attributes)
        )

    async def _close(self, run: _Run) -> None:
        await run.provider.aclose()


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
    if rows.adopted(old):
        return (
            f"its old version {old.id} was adopted from the issuer and keyshift never held "
            "its value, so it cannot be published again"
        )
    if new is None or new.status != VersionStatus.CURRENT.value:
        return f"its new version {rot.new_version_id} is no longer current (rotated since)"
    if Capability.IN_PLACE in provider.capabilities:
        return (
            "its issuer replaced the old value in place, so the old version stopped "
            "working at the cutover; start a new rotation instead"
        )
    return None


def _can_check(gate: ResidualUse, provider: Provider) -> bool:
    """Whether residual use of this provider's versions can be observed at all."""
    return bool(gate.command) or Capability.RESIDUAL_USE in provider.capabilities


_AWAITING = {
    RotationState.AWAITING_APPROVAL: approvals.ROTATION,
    RotationState.AWAITING_REVOKE_APPROVAL: approvals.REVOKE,
}
