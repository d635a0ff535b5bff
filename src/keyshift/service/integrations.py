"""`keyshift integrations test NAME`: can keyshift reach the system with this identity,
and does the identity hold the permissions rotations need? Changes nothing.

For an `entra` integration: a token is acquired (a refusal names the AADSTS code),
the token's `roles` claim is read to name a missing application permission
(`Application.ReadWrite.OwnedBy` or `Application.ReadWrite.All` to add and remove
client secrets), and one page of applications is read from Graph. When the estate's
Entra credentials through it have a `residual_use` policy, `AuditLog.Read.All` is checked
too: their residual use is read from the tenant's sign-in log.

For an `agent` integration: the agent is reached over TLS with the integration's CA,
answers with the enrolled agent_id, and accepts a signed request (the shared key and
both clocks agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.engine.engine import Engine
from keyshift.errors import Conflict, KeyshiftError, NotFound
from keyshift.providers import ProviderKind
from keyshift.providers.graph import (
    AUDIT_LOG_ROLE,
    GRAPH_SCOPE,
    SIGN_IN_PERMISSION,
    WRITE_ROLES,
    GraphClient,
    GraphRequestFailed,
    TokenRefused,
    azure_identity_token_source,
    token_roles,
)
from keyshift.service.estate import current_estate
from keyshift.store.models import IntegrationRow
from keyshift.store.store import Store
from keyshift.targets.agent import AgentClient, AgentIntegration


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _reading_sign_ins(store: Store, integration: str) -> list[str]:
    """The Entra credentials through `integration` whose policy asks for residual_use,
    which keyshift reads from the tenant's sign-in log."""
    estate = current_estate(store)
    return [
        cred.name
        for cred in estate.credentials
        if cred.provider.type == ProviderKind.ENTRA_CLIENT_SECRET.value
        and cred.provider.integration == integration
        and estate.policy_for(cred).residual_use is not None
    ]


def _sign_in_log_check(roles: list[str] | None, readers: list[str]) -> Check | None:
    """Whether the token may read the sign-in log that `readers`' residual_use needs."""
    if not readers:
        return None
    who = ", ".join(readers)
    if roles is None:
        return Check("sign-in log", True, "token not readable; skipped")
    if AUDIT_LOG_ROLE in roles:
        return Check("sign-in log", True, f"granted {AUDIT_LOG_ROLE} (residual use of {who})")
    return Check(
        "sign-in log",
        False,
        f"the residual_use of {who} needs {SIGN_IN_PERMISSION}; the token lacks {AUDIT_LOG_ROLE}",
    )


async def _entra_checks(
    config: EntraIntegration, context: PluginContext, *, sign_in_readers: list[str]
) -> list[Check]:
    checks: list[Check] = []
    async with config.credential(context) as credential:
        source = azure_identity_token_source(credential, GRAPH_SCOPE)
        try:
            token = await source()
        except TokenRefused as exc:
            return [Check("token", False, f"Entra ID refused keyshift's sign-in ({exc.code})")]
        except KeyshiftError as exc:
            return [Check("token", False, str(exc))]
        checks.append(Check("token", True, f"signed in to tenant {config.tenant_id}"))
        roles = token_roles(token)
        if roles is None:
            checks.append(Check("permissions", True, "token not readable; skipped"))
        elif any(r in roles for r in WRITE_ROLES):
            held = ", ".join(r for r in roles if r in WRITE_ROLES)
            checks.append(Check("permissions", True, f"granted {held}"))
        else:
            checks.append(
                Check(
                    "permissions",
                    False,
                    "missing Application.ReadWrite.OwnedBy (as an owner of the rotated "
                    "applications) or Application.ReadWrite.All: needed to add and remove "
                    f"client secrets (granted: {', '.join(roles) or 'none'})",
                )
            )
        sign_in_log = _sign_in_log_check(roles, sign_in_readers)
        if sign_in_log is not None:
            checks.append(sign_in_log)
        async with GraphClient(
            source,
            context,
            base_url=config.graph_url,
            verify=config.ssl_verify(),
            page_size=1,
            budget=config.budget(context),
        ) as graph:
            try:
                first = await graph.get("applications", {"$top": 1, "$select": "id,appId"})
            except GraphRequestFailed as exc:
                needed = "Application.Read.All (or Application.ReadWrite.OwnedBy / .All)"
                why = f"missing {needed}" if exc.status == 403 else exc.graph_message
                checks.append(Check("graph read", False, f"{exc.code}: {why}"))
            except KeyshiftError as exc:
                checks.append(Check("graph read", False, str(exc)))
            else:
                seen = len(first.get("value") or [])
                checks.append(Check("graph read", True, f"listed applications ({seen} on page)"))
    return checks


async def _agent_checks(name: str, config: AgentIntegration, context: PluginContext) -> list[Check]:
    """Reach the agent over TLS, check it is the agent enrolled, and that it accepts
    keyshift's signature (a signed health check)."""
    client = AgentClient(name, config, context)
    try:
        answer = await client.health(signed=False)
    except KeyshiftError as exc:
        return [Check("reach", False, str(exc))]
    checks = [Check("reach", True, f"{client.host} answered over TLS")]
    found = answer.get("agent_id")
    if found != config.agent_id:
        checks.append(Check("identity", False, f"answers as agent {found}, not {config.agent_id}"))
        return checks
    checks.append(Check("identity", True, f"agent {found}, keyshift {answer.get('version')}"))
    try:
        await client.health(signed=True)
    except KeyshiftError as exc:
        checks.append(Check("signature", False, str(exc)))
    else:
        checks.append(Check("signature", True, "the agent accepted keyshift's signed request"))
    return checks


async def check_integration(
    store: Store, name: str, *, actor: str, context: PluginContext | None = None
) -> list[Check]:
    """Run the checks of integration `name` and record their outcome in the audit trail."""
    with store.transaction() as s:
        row = s.get(IntegrationRow, name)
        if row is None:
            known = ", ".join(s.execute(select(IntegrationRow.name)).scalars()) or "none"
            raise NotFound(f"no integration named '{name}' in the estate (known: {known})")
        stored: dict[str, Any] = dict(row.config)
        kind = row.type
    if stored.get("enabled") is False:
        raise Conflict(
            f"integration {name} is disabled in the estate (enabled: false); it is not called"
        )
    engine = Engine(store, actor=actor, context=context)
    ctx = engine.context_for({name: stored})
    if kind == "agent":
        checks = await _agent_checks(name, ctx.integration(name, AgentIntegration), ctx)
    elif kind == "entra":
        checks = await _entra_checks(
            ctx.integration(name, EntraIntegration),
            ctx,
            sign_in_readers=_reading_sign_ins(store, name),
        )
    else:
        raise NotFound(f"integration '{name}' is of type {kind}; entra and agent can be tested")
    with store.transaction() as s:
        store.audit(
            s,
            actor=actor,
            action="integration.tested",
            subject=f"integration:{name}",
            details={"checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]},
        )
    return checks
