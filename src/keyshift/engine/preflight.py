"""Preflight: every plugin of a plan says whether it is ready, changing nothing.

The same checks serve the dry run (`keyshift preflight`, `rotate --dry-run`) and the
`preflighted` step of a run, which stops the rotation before anything is created when
one is blocked (for now, when only transient reasons block it: it is retried).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import structlog

from keyshift.context import PluginContext
from keyshift.domain.estate import Policy
from keyshift.engine.plan import Plan
from keyshift.engine.plugins import build_provider, build_target
from keyshift.engine.run import Run
from keyshift.errors import KeyshiftError, PermanentError, TransientError, scrub
from keyshift.providers.base import Provider
from keyshift.targets.base import PreflightRequest, PreflightResult, Readiness, StepResult

__all__ = ["check", "preflighted"]

log = structlog.get_logger("keyshift.engine")


async def check(
    plan: Plan,
    context_for: Callable[[list[str]], PluginContext],
    *,
    provider: Provider | None = None,
    secrets: list[str] | None = None,
) -> list[tuple[str, PreflightResult]]:
    """The provider's readiness (step `provider:<type>`), then each action's in plan
    order, changing nothing.

    `context_for(secrets)` gives the plugins' context. Without `provider` one is built
    from the plan and closed afterwards. An error raised while building or checking a
    plugin makes its step blocked with the error's message. Every reason is scrubbed of
    the values read for the check (collected in `secrets`).
    """
    known = secrets if secrets is not None else []
    request = PreflightRequest(
        credential=plan.credential, policy=Policy.model_validate(plan.policy)
    )
    results: list[tuple[str, PreflightResult]] = []
    try:
        ctx = context_for(known)
    except KeyshiftError as exc:
        # The plan's integrations do not validate: nothing can be checked.
        blocked = PreflightResult(Readiness.BLOCKED, scrub(str(exc), known))
        steps = [f"provider:{plan.provider_type}", *(a.step for a in plan.actions)]
        return [(step, blocked) for step in steps]
    results.append(
        (f"provider:{plan.provider_type}", await _provider_ready(plan, request, ctx, provider))
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


async def preflighted(run: Run) -> StepResult:
    """The `preflighted` step: blocked is a permanent failure, unless every reason is
    transient (e.g. the issuer is unreachable for now), which is retried."""
    results = await check(
        run.plan, lambda _: run.context, provider=run.provider, secrets=run.secrets
    )
    blocked = [(step, r) for step, r in results if r.readiness == Readiness.BLOCKED]
    why = "preflight blocked: " + "; ".join(f"{step}: {r.reason}" for step, r in blocked)
    if blocked and all(r.transient for _, r in blocked):
        raise TransientError(why)
    if blocked:
        raise PermanentError(why)
    return StepResult({step: r.readiness.value for step, r in results})


async def _provider_ready(
    plan: Plan, request: PreflightRequest, context: PluginContext, provider: Provider | None
) -> PreflightResult:
    built: Provider | None = None
    try:
        if provider is None:
            provider = built = build_provider(plan.provider_type, plan.provider_config, context)
        return await provider.preflight(request)
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
