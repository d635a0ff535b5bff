"""What keyshift finds out beyond the estate: an integration's sign-in test, the Entra ID
inventory (sync, credentials, summary, report), versions at the issuers that keyshift
did not issue, and the alerts the worker raised."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, ConfigDict

from keyshift.api.auth import StoreDep, caller
from keyshift.api.routes.common import Name, PathName, actor_of, v1_router
from keyshift.domain.clock import utcnow
from keyshift.domain.estate import DEFAULT_POLICY_NAME
from keyshift.domain.rbac import Permission
from keyshift.service import entra as entra_service
from keyshift.service import estate as estate_service
from keyshift.service import foreign as foreign_service
from keyshift.service import integrations as integrations_service
from keyshift.service import scheduler
from keyshift.service.identities import Identity

router = v1_router()


@router.post("/integrations/{name}/test", tags=["integrations"])
async def test_integration(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_WRITE)], name: PathName
) -> list[integrations_service.Check]:
    """Sign in with the integration, read the granted permissions and read from the API.
    Changes nothing; the outcome is audited."""
    return await integrations_service.check_integration(store, name, actor=actor_of(who))


class EntraSync(BaseModel):
    model_config = ConfigDict(extra="forbid")

    integrations: list[Name] | None = None
    """Sync only these integrations (default: every `entra` integration)."""


@router.post("/entra/sync", tags=["entra"])
async def entra_sync(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ENTRA_WRITE)],
    body: EntraSync | None = None,
) -> list[entra_service.SyncResult]:
    """Import every app registration with its owners, client secrets and certificates."""
    only = body.integrations if body and body.integrations else None
    return await entra_service.sync(store, actor=actor_of(who), only=only)


@router.get("/entra/credentials", tags=["entra"])
def entra_credentials(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ENTRA_READ)],
    state: Annotated[str | None, Query(max_length=32)] = None,
    app: Annotated[str | None, Query(max_length=256)] = None,
    removed: bool = False,
) -> list[entra_service.EntraCredential]:
    """Every discovered client secret and certificate with its lifecycle state."""
    alerts = estate_service.current_estate(store, with_credentials=False).alerts
    found = entra_service.inventory(
        store, now=utcnow(), alerts=alerts, include_removed=removed, state=state
    )
    if app is not None:
        found = [c for c in found if app in (c.app_name, c.app_id)]
    return found


@router.get("/entra/summary", tags=["entra"])
def entra_summary(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.ENTRA_READ)],
    top: Annotated[int, Query(ge=0, le=1000)] = 10,
) -> entra_service.Summary:
    """Totals, counts expiring within 7/30/90 days, and the most urgent credentials."""
    alerts = estate_service.current_estate(store, with_credentials=False).alerts
    return entra_service.summary(store, now=utcnow(), alerts=alerts, top=top)


@router.get("/entra/report", tags=["entra"])
def entra_report(
    store: StoreDep, who: Annotated[Identity, caller(Permission.ENTRA_READ)]
) -> list[entra_service.Finding]:
    """Secrets created outside keyshift on managed apps, and lifetimes over the maximum."""
    estate = estate_service.current_estate(store, with_credentials=False)
    default = estate.named_policy(DEFAULT_POLICY_NAME)
    return entra_service.findings(store, now=utcnow(), default_policy=default)


@router.get("/foreign", tags=["credentials"])
async def foreign_versions(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)]
) -> foreign_service.ForeignReport:
    """Versions at the issuers of managed credentials that keyshift did not issue, asked
    live of each issuer. Changes nothing."""
    return await foreign_service.foreign_report(store, actor=actor_of(who))


@router.get("/alerts", tags=["alerts"])
def list_alerts(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[scheduler.Alert]:
    """The newest alerts the worker raised."""
    return scheduler.alerts(store, limit=limit)
