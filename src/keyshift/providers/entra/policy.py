"""The app management policy in force for an application, and what it means for its
client secrets: the preflight of `entra_client_secret`, the lifetime cap `create` applies
and the wording of a refusal. See `keyshift.providers.entra` for the rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import structlog

from keyshift.domain.durations import format_duration
from keyshift.domain.estate import Policy
from keyshift.errors import KeyshiftError, PermanentError, TransientError
from keyshift.providers.base import PreflightResult, Readiness
from keyshift.providers.graph import (
    AUDIT_LOG_ROLE,
    NEEDED_PERMISSION,
    POLICY_PERMISSION,
    WRITE_ROLES,
    Application,
    AppManagementPolicy,
    GraphClient,
    GraphRequestFailed,
    PasswordRestriction,
    parse_iso_duration,
    token_roles,
)

log = structlog.get_logger("keyshift.providers.entra")

GRAPH_DEFAULT_LIFETIME: Final = timedelta(days=730)
"""The lifetime Graph gives a secret added without `endDateTime`: two years."""
CAP_MARGIN: Final = timedelta(minutes=5)
"""How much earlier than `maxLifetime` from keyshift's clock a capped secret ends, so a
clock ahead of Entra ID's does not make the secret outlive the policy's limit."""
POLICY_REFUSALS: Final = {
    "CredentialTypeNotAllowedAsPerAppPolicy": "passwordAddition",
    "CredentialInvalidLifetimeAsPerAppPolicy": "passwordLifetime",
}
"""addPassword's 400 codes for an app management policy's refusal, and the rule behind each."""


@dataclass(frozen=True)
class SecretRules:
    """What the app management policy in force allows for the application's client secrets."""

    policy: AppManagementPolicy
    addition: PasswordRestriction | None
    """The `passwordAddition` restriction that applies to the application, if any."""
    lifetime: PasswordRestriction | None
    """The `passwordLifetime` restriction that applies to the application, if any."""
    max_lifetime: timedelta | None
    """`lifetime`'s `maxLifetime`, None if there is none or it does not parse."""

    @classmethod
    def of(cls, policy: AppManagementPolicy, created: datetime | None) -> SecretRules:
        """The restrictions of `policy` that apply to an application created at `created`."""
        applying = (
            {r.restriction_type: r for r in policy.password_restrictions if r.applies_to(created)}
            if policy.is_enabled
            else {}
        )
        lifetime = applying.get("passwordLifetime")
        max_lifetime: timedelta | None = None
        if lifetime is not None and lifetime.max_lifetime is not None:
            try:
                max_lifetime = parse_iso_duration(lifetime.max_lifetime)
            except ValueError:
                max_lifetime = None
        return cls(policy, applying.get("passwordAddition"), lifetime, max_lifetime)

    @property
    def limit(self) -> str:
        """The `maxLifetime` as the policy writes it, e.g. `P90D`; empty without one."""
        return (self.lifetime.max_lifetime if self.lifetime else None) or ""

    def cap(self, requested: timedelta) -> timedelta | None:
        """The lifetime to ask for instead of `requested`, or None if `requested` is allowed."""
        if self.max_lifetime is None or self.max_lifetime >= requested:
            return None
        return self.max_lifetime - min(CAP_MARGIN, self.max_lifetime / 10)


def _since(restriction: PasswordRestriction) -> str:
    moment = restriction.applies_from
    return f" for apps created after {moment.date().isoformat()}" if moment else ""


RulesMemo = dict[str, "SecretRules"]
"""The rules a provider read for each application (by object id) in its rotation: the
preflight's reading serves the create that follows it, so that neither asks twice."""


async def secret_rules(
    graph: GraphClient, app: Application, memo: RulesMemo | None = None
) -> SecretRules:
    """The restrictions on client secrets in force for `app`: its assigned app
    management policy, else the tenant default; kept in `memo` when given. Raises
    GraphRequestFailed (403 without Policy.Read.All) when a policy cannot be read."""
    if memo is not None and app.id in memo:
        return memo[app.id]
    assigned = await graph.list_app_management_policies(app.id)
    policy = assigned[0] if assigned else await graph.get_default_app_management_policy()
    rules = SecretRules.of(policy, app.created)
    if memo is not None:
        memo[app.id] = rules
    return rules


async def lifetime_cap(
    graph: GraphClient,
    app: Application,
    requested: timedelta,
    app_id: str,
    memo: RulesMemo | None = None,
) -> tuple[timedelta, SecretRules] | None:
    """The shorter lifetime a `passwordLifetime` restriction in force allows, with the
    rules it comes from; None when `requested` is allowed or no policy can be read (a
    refusal of addPassword then names the rule)."""
    try:
        rules = await secret_rules(graph, app, memo)
    except GraphRequestFailed as exc:
        # Reading the policy is advisory: without Policy.Read.All addPassword still
        # runs, and Entra ID's refusal, if any, is reported by `refusal`.
        log.info(
            "entra.app_policy_unreadable",
            app_id=app_id,
            status=exc.status,
            code=exc.code,
        )
        return None
    cap = rules.cap(requested)
    return (cap, rules) if cap is not None else None


def refusal(exc: GraphRequestFailed, app_id: str) -> PermanentError | None:
    """addPassword's error reworded when an app management policy refused it, else None."""
    rule = POLICY_REFUSALS.get(exc.code) if exc.status == 400 else None
    if rule is None:
        return None
    what = (
        "client secrets on this application"
        if rule == "passwordAddition"
        else "a client secret living this long"
    )
    hint = (
        "use a certificate, or exempt the application with an appManagementPolicy"
        if rule == "passwordAddition"
        else "shorten the credential policy's max_lifetime to the policy's maxLifetime "
        "(keyshift caps it itself when it may read the policy, with Policy.Read.All)"
    )
    return PermanentError(
        f"Entra ID refused addPassword on {app_id}: an app management policy's "
        f"{rule} restriction forbids {what} ({exc.code}: {exc.graph_message}); {hint}"
    )


async def app_preflight(
    graph_of: Callable[[], GraphClient],
    find: Callable[[GraphClient], Awaitable[Application]],
    *,
    tenant: str,
    app_id: str,
    policy: Policy | None,
    window: timedelta,
    now: Callable[[], datetime],
    memo: RulesMemo | None = None,
) -> PreflightResult:
    """What `EntraSecretProvider.preflight` answers (its docstring says when it is blocked
    or needs manual review): `graph_of` signs in, `find` looks up the application,
    `window` is the sign-in log's look-back for a `residual_use` policy, `memo` keeps
    the app management policy's rules it reads. Changes nothing."""
    reads_log = policy is not None and policy.residual_use is not None
    try:
        graph = graph_of()
        roles = token_roles(await graph.token())
        if roles is not None and not any(r in WRITE_ROLES for r in roles):
            granted = ", ".join(roles) or "none"
            return PreflightResult(
                Readiness.BLOCKED,
                f"keyshift's identity in tenant {tenant} lacks {NEEDED_PERMISSION}, "
                f"needed to add and remove client secrets (granted: {granted})",
            )
        if reads_log and roles is not None and AUDIT_LOG_ROLE not in roles:
            return PreflightResult(
                Readiness.BLOCKED,
                f"keyshift's identity in tenant {tenant} lacks the Graph application "
                f"permission {AUDIT_LOG_ROLE}, needed to read the sign-in log for the "
                f"policy's residual_use (granted: {', '.join(roles)})",
            )
        app = await find(graph)
        if reads_log:
            since = now() - window
            # One page of one entry proves the log answers (permission and licence).
            async for _ in graph.list_service_principal_sign_ins(app.app_id, since, page_size=1):
                break
        rules: SecretRules | GraphRequestFailed
        try:
            rules = await secret_rules(graph, app, memo)
        except GraphRequestFailed as exc:
            # Advisory: the policy only explains a refusal addPassword would give anyway.
            rules = exc
    except TransientError as exc:
        return PreflightResult(Readiness.BLOCKED, str(exc), transient=True)
    except KeyshiftError as exc:
        return PreflightResult(Readiness.BLOCKED, str(exc))
    secrets = secrets_preflight(rules, policy, app_id)
    if secrets.readiness == Readiness.BLOCKED:
        return secrets
    found = (
        f"application {app.display_name} ({app.app_id}) holds "
        f"{len(app.password_credentials)} client secret(s)"
    )
    if roles is None:
        return PreflightResult(
            Readiness.MANUAL_REVIEW,
            f"{found}; the token's roles claim is not readable, so the permission to add "
            f"and remove client secrets is unproven; {secrets.reason}",
        )
    held = [r for r in roles if r in WRITE_ROLES]
    owned_only = held == ["Application.ReadWrite.OwnedBy"]
    log_read = (
        f"; residual_use reads the sign-in log ({AUDIT_LOG_ROLE}) over the last "
        f"{format_duration(window)} at each check"
        if reads_log
        else ""
    )
    return PreflightResult(
        secrets.readiness,
        f"signed in to tenant {tenant}; granted {', '.join(held)}; {found}"
        + ("; keyshift must be an owner of the application" if owned_only else "")
        + log_read
        + f"; {secrets.reason}",
    )


def secrets_preflight(
    rules: SecretRules | GraphRequestFailed, policy: Policy | None, app_id: str
) -> PreflightResult:
    """What the app management policy in force means for adding this rotation's secret."""
    if isinstance(rules, GraphRequestFailed):
        why = (
            f"Graph answered 403 {rules.code}; keyshift needs {POLICY_PERMISSION}"
            if rules.status == 403
            else f"Graph answered {rules.status} {rules.code}"
        )
        return PreflightResult(
            Readiness.READY,
            f"the app management policy in force could not be read ({why}), so a "
            "restriction on client secrets would only show at creating",
        )
    label = rules.policy.label
    if rules.addition is not None:
        remedy = (
            "exempt the application with an appManagementPolicy"
            if rules.policy.tenant_default
            else "disable that restriction in the policy"
        )
        text = f"{label} restricts passwordAddition{_since(rules.addition)}"
        if rules.addition.exempts_actors:
            return PreflightResult(
                Readiness.MANUAL_REVIEW,
                f"{text} except for callers with certain custom security attributes; "
                f"keyshift cannot tell whether its identity is exempt, so addPassword on "
                f"{app_id} may be refused",
            )
        return PreflightResult(
            Readiness.BLOCKED,
            f"{text}; keyshift cannot add a client secret to {app_id} (use a certificate, "
            f"or {remedy})",
        )
    if rules.lifetime is None:
        return PreflightResult(Readiness.READY, f"{label} does not restrict its client secrets")
    limit = f"{rules.limit} (passwordLifetime{_since(rules.lifetime)})"
    if rules.max_lifetime is None:
        return PreflightResult(
            Readiness.MANUAL_REVIEW,
            f"{label} limits client secrets to {limit}, which keyshift cannot read as "
            "a duration; addPassword may be refused",
        )
    max_lifetime = policy.max_lifetime if policy is not None else None
    requested = max_lifetime or GRAPH_DEFAULT_LIFETIME
    cap = rules.cap(requested)
    if cap is None:
        return PreflightResult(
            Readiness.READY,
            f"{label} limits client secrets to {limit}; the rotation asks for "
            f"{format_duration(requested)}",
        )
    asked = "the policy's max_lifetime" if max_lifetime else "Graph's default, no max_lifetime"
    text = (
        f"{label} limits client secrets to {limit}, shorter than the "
        f"{format_duration(requested)} the rotation would ask for ({asked}): the "
        f"secret's endDateTime will be capped at {rules.limit} from its creation"
    )
    early = policy.rotate_before_expiry if policy is not None else None
    if early is not None and cap <= early:
        return PreflightResult(
            Readiness.MANUAL_REVIEW,
            f"{text}, which is not longer than rotate_before_expiry "
            f"({format_duration(early)}), so the new secret would be due for rotation "
            "as soon as it is added",
        )
    return PreflightResult(Readiness.READY, text)
