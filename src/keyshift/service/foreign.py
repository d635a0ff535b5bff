"""Foreign credentials: what the issuers of managed credentials hold that keyshift did not
issue (a Redis password, an Entra client secret or a PostgreSQL role password made by
hand), asked live of each issuer.

A version at the issuer is keyshift's when it carries a rotation's marker (`list_versions`
says so) or is one keyshift stores and has not revoked. A credential with an unfinished
rotation is not judged: during grace keyshift's previous version is still valid, and
some issuers (Redis keeps only the latest marker) cannot tell it from a foreign one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select

from keyshift.context import PluginContext
from keyshift.domain.estate import disabled_integrations
from keyshift.domain.states import VersionStatus
from keyshift.engine.engine import Engine
from keyshift.engine.plan import stored_plan
from keyshift.engine.plugins import build_provider
from keyshift.errors import KeyshiftError, PluginError, scrub
from keyshift.providers.base import ListRequest
from keyshift.store.models import CredentialRow, VersionRow
from keyshift.store.store import Store

log = structlog.get_logger("keyshift.service.foreign")


@dataclass(frozen=True)
class ForeignVersion:
    """A version at a managed credential's issuer that keyshift did not issue."""

    credential: str
    provider: str
    owner: str | None
    ref: str
    """How the issuer names it: a keyId, `user:password-N`, a role."""
    expires_at: datetime | None
    detail: str
    """What becomes of it, in words."""


@dataclass(frozen=True)
class Unchecked:
    credential: str
    reason: str


@dataclass(frozen=True)
class ForeignReport:
    found: list[ForeignVersion]
    checked: int
    """Credentials whose issuer answered."""
    unchecked: list[Unchecked]


def _fate(provider: object) -> str:
    """What becomes of a foreign version, from the provider's `adopt_existing` setting."""
    adopt = getattr(getattr(provider, "config", None), "adopt_existing", None)
    if adopt == "keep":
        return "stays valid (adopt_existing: keep; retire ends those found at the first rotation)"
    if adopt == "retire":
        return "stays valid: added after the first rotation, which adopt_existing: retire ended"
    return "stays valid: keyshift did not issue it and does not revoke it"


async def foreign_report(
    store: Store, *, actor: str, context: PluginContext | None = None
) -> ForeignReport:
    """Ask the issuer of every managed credential for its versions and report those that
    keyshift did not issue. Changes nothing; an issuer that cannot be asked is named
    with the reason (its error scrubbed of any value read for the connection)."""
    engine = Engine(store, actor=actor, context=context)
    with store.transaction() as s:
        creds = list(
            s.execute(
                select(CredentialRow)
                .where(CredentialRow.removed_at.is_(None))
                .order_by(CredentialRow.name)
            ).scalars()
        )
        held = {
            (row.credential_id, row.provider_ref)
            for row in s.execute(
                select(VersionRow).where(VersionRow.status != VersionStatus.REVOKED.value)
            ).scalars()
        }
        specs = [(c.id, c.name, c.owner, c.active_rotation_id, dict(c.spec)) for c in creds]
    found: list[ForeignVersion] = []
    unchecked: list[Unchecked] = []
    checked = 0
    for cred_id, name, owner, active, spec in specs:
        if active is not None:
            unchecked.append(
                Unchecked(name, f"rotation {active} is unfinished; its old version is still valid")
            )
            continue
        disabled = disabled_integrations(spec.get("integrations", {}))
        if disabled:
            unchecked.append(
                Unchecked(name, f"integration {', '.join(disabled)} is disabled in the estate")
            )
            continue
        plan = stored_plan(spec)
        secrets: list[str] = []
        plugin_context = engine.plugin_context(plan, secrets)
        provider: Any = None
        try:
            provider = build_provider(plan.provider_type, plan.provider_config, plugin_context)
            try:
                versions = await provider.list_versions(ListRequest(name))
            finally:
                await provider.aclose()
        except (PluginError, KeyshiftError) as exc:
            unchecked.append(Unchecked(name, scrub(str(exc), secrets)))
            continue
        checked += 1
        for version in versions:
            if version.marker is not None or (cred_id, version.provider_ref) in held:
                continue
            found.append(
                ForeignVersion(
                    credential=name,
                    provider=plan.provider_type,
                    owner=owner,
                    ref=version.provider_ref,
                    expires_at=version.expires_at,
                    detail=_fate(provider),
                )
            )
    log.info("foreign report", checked=checked, found=len(found), unchecked=len(unchecked))
    return ForeignReport(found, checked, unchecked)
