"""Blast radius: everything a rotation of one credential touches, in the order it runs.

`impact(store, name)` reads the credential as the estate declares it now;
`impact_of_plan(plan)` reads a stored plan (the one a rotation runs, or the one an
approval request is bound to). Each row names the issuer or consumer, the phase and
WHERE it acts, from the plugin's own `describe()`: hosts, paths, vault and
secret names, namespaces, regions. Never a value, a token or a URL's path or query.
Rows are plain dataclasses; `to_json` gives them to approval requests and evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from keyshift.domain.location import this_host, url_origin
from keyshift.engine.plan import Plan, stored_plan
from keyshift.engine.plugins import (
    build_integrations,
    provider_class,
    target_class,
    validate_config,
)
from keyshift.errors import KeyshiftError
from keyshift.service import lookups
from keyshift.store.store import Store
from keyshift.targets.agent import AgentIntegration

ISSUER_PHASE = "creating, revoking"
"""The provider row's phase: it issues the new version first and revokes the old one last."""


@dataclass(frozen=True)
class ImpactRow:
    """One issuer or consumer that a rotation touches. `position` is the run order."""

    position: int
    phase: str
    type: str
    order: int | None
    """The action's `order` within its phase; None for the provider."""
    on_failure: str | None
    """`abort` or `continue`; None for the provider (its failure always stops the run)."""
    consumer: str | None
    runs_on: str
    """Where the step executes: the host agent named by `agent_id`, or keyshift's host."""
    where: dict[str, str] = field(default_factory=dict)
    """What the step changes or calls, as its plugin describes it."""

    @property
    def where_text(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in self.where.items())


def impact(store: Store, name: str) -> list[ImpactRow]:
    """The blast radius of rotating `name` as the estate declares it now."""
    with store.transaction() as s:
        plan = stored_plan(lookups.estate_credential(s, name).spec)
    return impact_of_plan(plan)


def impact_of_plan(plan: Plan, *, local_host: str | None = None) -> list[ImpactRow]:
    """The rows of `plan`: its provider, then each action in run order.

    `local_host` names where actions without an agent run; this host by default.
    Evidence passes a fixed label, so the rows recompute the same on any machine.
    """
    host = local_host if local_host is not None else this_host()
    integrations = build_integrations(plan.integrations)
    provider = provider_class(plan.provider_type)
    provider_config = validate_config(provider, plan.provider_config, "provider")
    rows = [
        ImpactRow(
            position=1,
            phase=ISSUER_PHASE,
            type=plan.provider_type,
            order=None,
            on_failure=None,
            consumer=None,
            runs_on=host,
            where=_described(provider, provider_config, integrations),
        )
    ]
    for position, action in enumerate(plan.actions, start=2):
        target = target_class(action.type)
        config = validate_config(target, action.config, f"actions[{action.key}].config")
        rows.append(
            ImpactRow(
                position=position,
                phase=action.phase.value,
                type=action.type,
                order=action.order,
                on_failure=action.on_failure.value,
                consumer=action.consumer,
                runs_on=_runs_on(target, action.agent_id, integrations, host),
                where=_described(target, config),
            )
        )
    return rows


def _runs_on(target: Any, agent_id: str | None, integrations: dict[str, Any], host: str) -> str:
    """`agent NAME (https://host:port)` for an action through an agent; else keyshift's host.

    An agent action without one (a legacy `agent_url`), or naming an agent that no agent
    integration declares, runs nowhere: it is manual review."""
    if agent_id is None:
        if getattr(target, "runs_on_agent", False):
            return "no enrolled agent (manual review)"
        return host
    for name, config in integrations.items():
        if isinstance(config, AgentIntegration) and (name == agent_id or config.names(agent_id)):
            return f"agent {name} ({url_origin(config.url)})"
    return f"agent {agent_id}: not enrolled (manual review)"


def _described(cls: Any, *args: Any) -> dict[str, str]:
    describe = getattr(cls, "describe", None)
    if describe is None:
        # A plugin that cannot say where it acts is shown as such, not silently omitted.
        return {"where": "not described by this plugin"}
    return {str(k): str(v) for k, v in describe(*args).items()}


def to_json(rows: list[ImpactRow]) -> list[dict[str, Any]]:
    """The rows as plain JSON values (for approval requests, the API and evidence)."""
    return [asdict(row) for row in rows]


_VERBS = {
    "publishing": "Write",
    "reloading": "Reload",
    "verifying": "Verify",
    "notifying": "Notify",
}
_LABELS = {
    "agent_secret_sync": "on host agent",
    "aws_secretsmanager": "AWS Secrets Manager",
    "azure_keyvault": "Key Vault",
    "command": "command",
    "command_check": "check command",
    "file": "file",
    "http_check": "HTTP check",
    "iis_recycle": "IIS app pool",
    "kubernetes_rollout_restart": "Kubernetes rollout",
    "kubernetes_secret": "Kubernetes Secret",
    "spring_refresh": "Spring refresh",
    "systemd_reload": "systemd unit",
    "webhook": "webhook",
}
_FIXED = {
    "validated": "Check policy and governance",
    "preflighted": "Preflight every step",
    "creating": "Create the new version at the issuer",
    "proving": "Wait until the issuer accepts the new version",
    "verifying:provider": "Verify the new version signs in",
    "revoking": "Revoke the old version",
}
_SKIP = frozenset({"integration", "format", "keys", "key"})
"""Described fields a title leaves out (the table of consumers shows them)."""


def step_titles(plan: Plan) -> dict[str, str]:
    """A readable title for every step name a rotation of `plan` can journal, e.g.
    `publishing:10:azure_keyvault` -> "Write Key Vault kv-billing-prod.vault.azure.net /
    billing-api-secret", and `rollback:NAME` -> "Roll back: <title of NAME>"."""
    titles = dict(_FIXED)
    try:
        rows = impact_of_plan(plan, local_host="keyshift")[1:]
    except KeyshiftError:
        rows = []  # a plan whose plugins are gone still shows its raw step names
    for action, row in zip(plan.actions, rows, strict=False):
        where = " / ".join(
            v.removeprefix("https://").removeprefix("http://")
            for k, v in row.where.items()
            if k not in _SKIP and v
        )
        verb = _VERBS.get(action.phase.value, action.phase.value.capitalize())
        titles[action.step] = " ".join(
            part for part in (verb, _LABELS.get(action.type, action.type), where) if part
        )
    for name, title in list(titles.items()):
        titles[f"rollback:{name}"] = f"Roll back: {title[0].lower()}{title[1:]}"
    return titles
