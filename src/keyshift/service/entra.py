"""Entra ID discovery: what `keyshift entra sync` imports, and the views built on it.

A sync reads every application registration of each `entra` integration (owners,
client secrets and certificates: ids, names and dates, never a value) and brings the
`discovered_*` tables in line with it in one transaction. Entries that vanished
from Entra ID, or whose integration left the estate, are marked removed (the rows
stay as history); a sync that finds nothing new writes nothing.

Discovered credentials are visible but unmanaged until a credential of the estate
(provider `entra_client_secret`) names their application; the views say which
credential manages each one and its lifecycle state.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import ColumnElement, Select, and_, func, not_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from keyshift.domain.estate import Alerts, Policy
from keyshift.domain.states import FINAL_STATES, Lifecycle, RotationState
from keyshift.errors import Conflict, NotFound
from keyshift.providers import ProviderKind
from keyshift.store.models import (
    CredentialRow,
    DiscoveredApp,
    DiscoveredCredential,
    IntegrationRow,
    RotationRow,
    VersionRow,
)
from keyshift.store.store import Store

# `sync` imports the engine and the Azure integration when it runs: the views here (and
# `service.due`, which `keyshift status` uses) need neither.
if TYPE_CHECKING:
    from keyshift.azure import EntraIntegration
    from keyshift.context import PluginContext
    from keyshift.providers.graph import Application

log = structlog.get_logger("keyshift.service.entra")

CLIENT_SECRET = "client_secret"  # noqa: S105 (a kind of credential, not a secret)
CERTIFICATE = "certificate"
ENTRA = "entra"
_FINAL = {s.value for s in FINAL_STATES}
_GRACE_STATES = {
    RotationState.GRACE.value,
    RotationState.AWAITING_REVOKE_APPROVAL.value,
    RotationState.REVOKING.value,
}


# --- sync ---------------------------------------------------------------------------------


@dataclass
class SyncResult:
    """What one integration's sync found and changed."""

    integration: str
    apps: int = 0
    credentials: int = 0
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    """Entries as `app <appId>` or `<kind> <keyId> of <appId>`: ids, never values."""

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.changed or self.removed)


def entra_integrations(store: Store) -> dict[str, dict[str, Any]]:
    """The estate's `entra` integrations, in their stored form."""
    with store.transaction() as s:
        rows = s.execute(select(IntegrationRow).where(IntegrationRow.type == ENTRA)).scalars()
        return {row.name: dict(row.config) for row in rows}


async def read_tenant(
    config: EntraIntegration, context: PluginContext, *, page_size: int = 100
) -> list[Application]:
    """Every application of the tenant with owners, secrets and certificates."""
    # The Graph client (httpx, azure-core) loads for a sync, not for every status page.
    from keyshift.providers.graph import GraphClient, azure_identity_token_source  # noqa: PLC0415

    async with (
        config.credential(context) as credential,
        GraphClient(
            azure_identity_token_source(credential),
            context,
            base_url=config.graph_url,
            verify=config.ssl_verify(),
            page_size=page_size,
            budget=config.budget(context),
        ) as graph,
    ):
        return [app async for app in graph.list_applications(with_owners=True)]


async def sync(
    store: Store,
    *,
    actor: str,
    context: PluginContext | None = None,
    only: Iterable[str] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> list[SyncResult]:
    """Sync each enabled `entra` integration (or those named in `only`: Conflict for a
    disabled one), then mark removed the entries of integrations no longer in the estate."""
    declared = entra_integrations(store)
    # A disabled integration is not called; what it discovered before is kept.
    names = [n for n in declared if declared[n].get("enabled") is not False]
    if only is not None:
        names = list(only)
    for name in names:
        if name not in declared:
            raise NotFound(f"no entra integration named '{name}' in the estate")
        if declared[name].get("enabled") is False:
            raise Conflict(
                f"integration {name} is disabled in the estate (enabled: false); enable it "
                "to sync it"
            )
    from keyshift.azure import EntraIntegration  # noqa: PLC0415 (see the imports)
    from keyshift.engine.engine import Engine  # noqa: PLC0415

    engine = Engine(store, actor=actor, context=context)
    results: list[SyncResult] = []
    for name in names:
        ctx = engine.context_for({name: declared[name]})
        config = ctx.integration(name, EntraIntegration)
        if on_progress is not None:
            on_progress(f"reading tenant {config.tenant_id} through {name}")
        apps = await read_tenant(config, ctx)
        now = ctx.now()
        with store.transaction() as s:
            result = _apply_tenant(s, name, apps, now)
            if not result.unchanged:
                store.audit(
                    s,
                    actor=actor,
                    action="entra.synced",
                    subject=f"integration:{name}",
                    details={
                        "apps": result.apps,
                        "credentials": result.credentials,
                        "added": result.added,
                        "changed": result.changed,
                        "removed": result.removed,
                    },
                )
        log.info(
            "entra.synced",
            integration=name,
            apps=result.apps,
            added=len(result.added),
            changed=len(result.changed),
            removed=len(result.removed),
        )
        results.append(result)
    with store.transaction() as s:
        swept = forget_integrations(s, keep=set(declared), now=engine.context.now())
        if swept:
            store.audit(
                s,
                actor=actor,
                action="entra.forgotten",
                subject="integrations",
                details={"removed": swept},
            )
    return results


def forget_integrations(s: Session, *, keep: set[str], now: datetime) -> list[str]:
    """Mark removed every discovered entry of an integration not in `keep`."""
    removed: list[str] = []
    apps = s.execute(
        select(DiscoveredApp).where(
            DiscoveredApp.removed_at.is_(None), DiscoveredApp.integration.not_in(keep)
        )
    ).scalars()
    for app in apps:
        removed.append(f"app {app.app_id} ({app.integration})")
        _remove_app(s, app, now)
    return removed


def _remove_app(s: Session, app: DiscoveredApp, now: datetime) -> None:
    app.removed_at = now
    app.changed_at = now
    for cred in s.execute(
        select(DiscoveredCredential).where(
            DiscoveredCredential.app_row_id == app.id, DiscoveredCredential.removed_at.is_(None)
        )
    ).scalars():
        cred.removed_at = now


def _seen_credentials(app: Application) -> dict[tuple[str, str], dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for p in app.password_credentials:
        seen[(CLIENT_SECRET, p.key_id)] = {
            "display_name": p.display_name,
            "hint": p.hint,
            "thumbprint": None,
            "start_at": p.start,
            "end_at": p.end,
        }
    for c in app.key_credentials:
        seen[(CERTIFICATE, c.key_id)] = {
            "display_name": c.display_name,
            "hint": None,
            "thumbprint": c.thumbprint,
            "start_at": c.start,
            "end_at": c.end,
        }
    return seen


def _apply_tenant(
    s: Session, integration: str, apps: list[Application], now: datetime
) -> SyncResult:
    result = SyncResult(integration, apps=len(apps))
    rows = {
        row.object_id: row
        for row in s.execute(
            select(DiscoveredApp).where(DiscoveredApp.integration == integration)
        ).scalars()
    }
    creds: dict[str, dict[tuple[str, str], DiscoveredCredential]] = {}
    for found in s.execute(
        select(DiscoveredCredential)
        .join(DiscoveredApp, DiscoveredApp.id == DiscoveredCredential.app_row_id)
        .where(DiscoveredApp.integration == integration)
    ).scalars():
        creds.setdefault(found.app_row_id, {})[(found.kind, found.key_id)] = found
    for app in apps:
        owners = sorted(o.label for o in app.owners or ())
        row = rows.pop(app.id, None)
        if row is None:
            row = DiscoveredApp(
                id=str(uuid.uuid4()),
                integration=integration,
                object_id=app.id,
                app_id=app.app_id,
                display_name=app.display_name,
                owners=owners,
                first_seen=now,
                changed_at=now,
                removed_at=None,
            )
            s.add(row)
            result.added.append(f"app {app.app_id}")
        elif (row.app_id, row.display_name, row.owners, row.removed_at) != (
            app.app_id,
            app.display_name,
            owners,
            None,
        ):
            row.app_id, row.display_name, row.owners = app.app_id, app.display_name, owners
            row.removed_at = None
            row.changed_at = now
            result.changed.append(f"app {app.app_id}")
        known = dict(creds.get(row.id, {}))
        for (kind, key_id), facts in _seen_credentials(app).items():
            result.credentials += 1
            label = f"{kind} {key_id} of {app.app_id}"
            cred = known.get((kind, key_id))
            if cred is None:
                s.add(
                    DiscoveredCredential(
                        id=str(uuid.uuid4()),
                        app_row_id=row.id,
                        kind=kind,
                        key_id=key_id,
                        first_seen=now,
                        removed_at=None,
                        **facts,
                    )
                )
                result.added.append(label)
                continue
            del known[(kind, key_id)]
            if cred.removed_at is not None or any(getattr(cred, k) != v for k, v in facts.items()):
                for k, v in facts.items():
                    setattr(cred, k, v)
                cred.removed_at = None
                result.changed.append(label)
        for cred in known.values():
            if cred.removed_at is None:
                cred.removed_at = now
                result.removed.append(f"{cred.kind} {cred.key_id} of {app.app_id}")
    for row in rows.values():
        if row.removed_at is None:
            _remove_app(s, row, now)
            result.removed.append(f"app {row.app_id}")
    return result


# --- the inventory and its lifecycle states -----------------------------------------------


@dataclass(frozen=True)
class EntraCredential:
    """One discovered client secret or certificate, as operators see it."""

    integration: str
    app_name: str
    app_id: str
    kind: str
    key_id: str
    display_name: str | None
    hint: str | None
    thumbprint: str | None
    start: datetime | None
    end: datetime | None
    days_left: int | None
    state: Lifecycle
    managed_by: str | None
    """The estate credential that rotates this application's credentials of this kind
    (client secrets: `entra_client_secret`; certificates: `entra_certificate`), if any."""
    by_keyshift: bool
    """Whether keyshift added this secret or certificate (it is one of the credential's
    versions)."""
    owners: tuple[str, ...]
    first_seen: datetime
    removed_at: datetime | None


@dataclass(frozen=True)
class _Managed:
    name: str
    policy: Policy
    created_at: datetime
    key_ids: dict[str, str]
    """keyId -> version id of every version keyshift added."""
    rotating: set[str]
    """keyIds being replaced or added by a rotation before its grace period."""
    in_grace: set[str]
    """keyIds of old versions whose rotation is in its grace period."""


_KIND_ROTATED: dict[str, str] = {
    ProviderKind.ENTRA_CLIENT_SECRET.value: CLIENT_SECRET,
    ProviderKind.ENTRA_CERTIFICATE.value: CERTIFICATE,
}
"""Which kind of an application's credentials each Entra provider rotates."""
_MANAGED_ENTRA = (
    CredentialRow.removed_at.is_(None),
    CredentialRow.provider_type.in_(list(_KIND_ROTATED)),
)
"""The estate credentials that rotate an Entra ID application's secrets or certificates."""


def _managed(s: Session, *criteria: ColumnElement[bool]) -> dict[tuple[str, str, str], _Managed]:
    """(integration, appId, kind) -> the estate credential rotating that application's
    client secrets (kind `client_secret`) or certificates (`certificate`), of those
    matching `criteria` on `CredentialRow` when given. Three queries however many
    credentials there are; each distinct policy is read once."""
    out: dict[tuple[str, str, str], _Managed] = {}
    managed = (*_MANAGED_ENTRA, *criteria)
    # Columns, not ORM rows, and of the spec only the two parts read (the JSON text
    # columns `apply` keeps beside it): decoding whole specs costs more than all the rest.
    creds = s.execute(
        select(
            CredentialRow.id,
            CredentialRow.name,
            CredentialRow.created_at,
            CredentialRow.active_rotation_id,
            CredentialRow.provider_type,
            CredentialRow.policy_json.label("policy"),
            CredentialRow.issuer_integration,
            CredentialRow.issuer_app_id,
        ).where(*managed)
    ).all()
    versions_of: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for cred_id, version_id, attributes in s.execute(
        select(VersionRow.credential_id, VersionRow.id, VersionRow.attributes)
        .join(CredentialRow, CredentialRow.id == VersionRow.credential_id)
        .where(*managed)
    ):
        versions_of.setdefault(cred_id, []).append((version_id, attributes or {}))
    running = {
        r.id: r
        for r in s.execute(
            select(
                RotationRow.id,
                RotationRow.state,
                RotationRow.old_version_id,
                RotationRow.new_version_id,
            )
            .join(CredentialRow, CredentialRow.active_rotation_id == RotationRow.id)
            .where(*managed)
        )
    }
    policies: dict[str, Policy] = {}
    for cred in creds:
        versions = versions_of.get(cred.id, [])
        by_id = {vid: attributes.get("key_id", "") for vid, attributes in versions}
        # An adopted version (secrets made by hand, retired by the first rotation) holds
        # several keyIds in `key_ids` and no `key_id`: it is in play, not by keyshift.
        in_play = {vid: _key_ids_of(attributes) for vid, attributes in versions}
        rotating: set[str] = set()
        in_grace: set[str] = set()
        rotation = running.get(cred.active_rotation_id or "")
        if rotation is not None and rotation.state not in _FINAL:
            old = in_play.get(rotation.old_version_id or "", set())
            new = in_play.get(rotation.new_version_id or "", set())
            if rotation.state in _GRACE_STATES:
                in_grace.update(old)
            else:
                rotating.update(old | new)
        if cred.policy not in policies:
            policies[cred.policy] = Policy.model_validate_json(cred.policy)
        where = (cred.issuer_integration or "", cred.issuer_app_id or "")
        out[(*where, _KIND_ROTATED[cred.provider_type])] = _Managed(
            name=cred.name,
            policy=policies[cred.policy],
            created_at=cred.created_at,
            key_ids={key: vid for vid, key in by_id.items() if key},
            rotating=rotating - {""},
            in_grace=in_grace - {""},
        )
    return out


def _key_ids_of(attributes: dict[str, Any]) -> set[str]:
    """The Entra keyIds a version stands for: its own, or those it adopted."""
    found = {str(attributes.get("key_id") or "")}
    found.update(str(attributes.get("key_ids") or "").split(","))
    return found - {""}


def state_of(
    *,
    now: datetime,
    end: datetime | None,
    removed: bool,
    rotating: bool,
    in_grace: bool,
    expiring_soon: timedelta,
) -> Lifecycle:
    """The lifecycle state of one Entra credential (design.md)."""
    if removed:
        return Lifecycle.CLEANED_UP
    if in_grace:
        return Lifecycle.GRACE_PERIOD
    if rotating:
        return Lifecycle.ROTATING
    if end is not None:
        if end <= now:
            return Lifecycle.EXPIRED
        if end - now <= expiring_soon:
            return Lifecycle.EXPIRING_SOON
    return Lifecycle.ACTIVE


def _days_left(now: datetime, end: datetime | None) -> int | None:
    return None if end is None else int((end - now).total_seconds() // 86400)


def _entry(
    cred: DiscoveredCredential,
    app: DiscoveredApp,
    owner: _Managed | None,
    *,
    now: datetime,
    soon: timedelta,
) -> EntraCredential:
    """One discovered credential as operators see it, with its state."""
    return EntraCredential(
        integration=app.integration,
        app_name=app.display_name,
        app_id=app.app_id,
        kind=cred.kind,
        key_id=cred.key_id,
        display_name=cred.display_name,
        hint=cred.hint,
        thumbprint=cred.thumbprint,
        start=cred.start_at,
        end=cred.end_at,
        days_left=_days_left(now, cred.end_at),
        state=state_of(
            now=now,
            end=cred.end_at,
            removed=cred.removed_at is not None,
            rotating=owner is not None and cred.key_id in owner.rotating,
            in_grace=owner is not None and cred.key_id in owner.in_grace,
            expiring_soon=soon,
        ),
        managed_by=owner.name if owner is not None else None,
        by_keyshift=owner is not None and cred.key_id in owner.key_ids,
        owners=tuple(app.owners),
        first_seen=cred.first_seen,
        removed_at=cred.removed_at,
    )


def _discovered(*, include_removed: bool = False) -> Select[DiscoveredCredential, DiscoveredApp]:
    query = select(DiscoveredCredential, DiscoveredApp).join(
        DiscoveredApp, DiscoveredApp.id == DiscoveredCredential.app_row_id
    )
    if not include_removed:
        query = query.where(DiscoveredCredential.removed_at.is_(None))
    return query


def inventory(
    store: Store,
    *,
    now: datetime,
    alerts: Alerts | None = None,
    include_removed: bool = False,
    state: str | None = None,
) -> list[EntraCredential]:
    """Every discovered Entra credential with its state, soonest expiry first; only those
    in lifecycle `state` (any case) when given."""
    soon = (alerts or Alerts()).expiring_soon
    with store.transaction() as s:
        managed = _managed(s)
        out = [
            _entry(cred, app, managed.get(_key(app, cred)), now=now, soon=soon)
            for cred, app in s.execute(_discovered(include_removed=include_removed))
        ]
    if state:
        out = [c for c in out if c.state.value.lower() == state.lower()]
    far = datetime.max.replace(tzinfo=now.tzinfo)
    out.sort(key=lambda c: (c.end or far, c.app_name, c.key_id))
    return out


WITHIN_DAYS = (7, 30, 90)


def _key(app: DiscoveredApp, cred: DiscoveredCredential) -> tuple[str, str, str]:
    """What `_managed` is keyed by, of a discovered credential."""
    return (app.integration, app.app_id, cred.kind)


def _of_managed() -> ColumnElement[bool]:
    """Whether a discovered credential is one an estate credential manages: of the
    application it names (`issuer_integration`, `issuer_app_id`), of the kind it rotates."""
    return or_(
        *(
            and_(
                DiscoveredCredential.kind == kind,
                DiscoveredCredential.app_row_id.in_(
                    select(DiscoveredApp.id)
                    .join(
                        CredentialRow,
                        and_(
                            CredentialRow.issuer_integration == DiscoveredApp.integration,
                            CredentialRow.issuer_app_id == DiscoveredApp.app_id,
                        ),
                    )
                    .where(
                        CredentialRow.removed_at.is_(None),
                        CredentialRow.provider_type == provider_type,
                    )
                ),
            )
            for provider_type, kind in _KIND_ROTATED.items()
        )
    )


def expiry_counts(
    end: InstrumentedAttribute[datetime | None], now: datetime
) -> tuple[ColumnElement[int], ...]:
    """Rows counted by `end`: those whose end has passed (`end <= now`), then for each of
    WITHIN_DAYS those whose end is within it, not passed."""
    return (
        func.count().filter(end <= now),
        *(func.count().filter(end > now, end <= now + timedelta(days=d)) for d in WITHIN_DAYS),
    )


def _counts(now: datetime) -> tuple[ColumnElement[int], ...]:
    """Discovered credentials counted: client secrets, certificates, then by their end
    (`expiry_counts`)."""
    kind = DiscoveredCredential.kind
    return (
        func.count().filter(kind == CLIENT_SECRET),
        func.count().filter(kind == CERTIFICATE),
        *expiry_counts(DiscoveredCredential.end_at, now),
    )


@dataclass
class Tally:
    """Discovered credentials (not removed) counted in SQL, without reading them one by
    one (an estate may have discovered 100,000)."""

    client_secrets: int = 0
    certificates: int = 0
    ended: int = 0
    """Whose end has passed (`end <= now`)."""
    within: dict[int, int] = field(default_factory=lambda: dict.fromkeys(WITHIN_DAYS, 0))
    """Days (7, 30, 90) -> whose end is within them, not passed."""

    @property
    def total(self) -> int:
        return self.client_secrets + self.certificates

    def add(self, row: Sequence[int]) -> None:
        """Add a row of `_counts`."""
        secrets, certificates, ended, *within = row
        self.client_secrets += secrets
        self.certificates += certificates
        self.ended += ended
        for days, count in zip(WITHIN_DAYS, within, strict=True):
            self.within[days] += count


def tally(s: Session, *, now: datetime) -> tuple[Tally, Tally]:
    """The discovered inventory counted: all of it, and the part of applications that
    estate credentials manage (their secrets are those credentials' versions)."""
    every, managed = Tally(), Tally()
    live = DiscoveredCredential.removed_at.is_(None)
    every.add(s.execute(select(*_counts(now)).where(live)).one())
    managed.add(s.execute(select(*_counts(now)).where(live, _of_managed())).one())
    return every, managed


def _held(s: Session, *, now: datetime, soon: timedelta) -> list[EntraCredential]:
    """The discovered credentials of the managed applications whose credential has a
    rotation under way: the only ones whose state a rotation decides."""
    managed = _managed(s, CredentialRow.active_rotation_id.is_not(None))
    return list(_of_apps(s, managed, now=now, soon=soon))


def _of_apps(
    s: Session, managed: dict[tuple[str, str, str], _Managed], *, now: datetime, soon: timedelta
) -> Iterator[EntraCredential]:
    app_ids = sorted({app_id for _integration, app_id, _kind in managed})
    for first in range(0, len(app_ids), 500):  # bound the parameters of one query
        query = _discovered().where(DiscoveredApp.app_id.in_(app_ids[first : first + 500]))
        for cred, app in s.execute(query):
            owner = managed.get(_key(app, cred))
            if owner is not None:
                yield _entry(cred, app, owner, now=now, soon=soon)


def soonest(
    s: Session,
    *,
    now: datetime,
    limit: int,
    alerts: Alerts | None = None,
    unmanaged_only: bool = False,
) -> list[EntraCredential]:
    """The `limit` discovered credentials (not removed) that end soonest, as `inventory`
    orders them; only those of applications no estate credential manages, with
    `unmanaged_only`. Read by the index on the end, not the whole inventory, and only
    their managing credentials' versions and rotations."""
    soon = (alerts or Alerts()).expiring_soon
    query = (
        _discovered()
        .where(DiscoveredCredential.end_at.is_not(None))
        .order_by(
            DiscoveredCredential.end_at, DiscoveredApp.display_name, DiscoveredCredential.key_id
        )
        .limit(limit)
    )
    if unmanaged_only:
        query = query.where(not_(_of_managed()))
    picked = s.execute(query).all()
    apps = sorted({app.app_id for _cred, app in picked})
    managed = _managed(s, CredentialRow.issuer_app_id.in_(apps)) if picked else {}
    return [
        _entry(cred, app, managed.get(_key(app, cred)), now=now, soon=soon) for cred, app in picked
    ]


@dataclass(frozen=True)
class Summary:
    apps: int
    client_secrets: int
    certificates: int
    managed: int
    expired: int
    within: dict[int, int]
    """Days (7, 30, 90) -> credentials expiring within them (not yet expired)."""
    rotating: int
    in_grace: int
    urgent: list[EntraCredential]


def summary(store: Store, *, now: datetime, alerts: Alerts | None = None, top: int = 10) -> Summary:
    """Totals, counts expiring in 7/30/90 days, in grace, and the most urgent credentials,
    from a fixed number of queries however large the inventory is."""
    soon = (alerts or Alerts()).expiring_soon
    with store.transaction() as s:
        every, managed = tally(s, now=now)
        held = _held(s, now=now, soon=soon)
        apps = s.scalar(
            select(func.count())
            .select_from(DiscoveredApp)
            .where(DiscoveredApp.removed_at.is_(None))
        )
        urgent = soonest(s, now=now, limit=top, alerts=alerts)
    states = Counter(c.state for c in held)
    # An ended credential that a rotation holds counts as rotating or in grace instead.
    unexpired = sum(
        c.end is not None and c.end <= now and c.state != Lifecycle.EXPIRED for c in held
    )
    return Summary(
        apps=apps or 0,
        client_secrets=every.client_secrets,
        certificates=every.certificates,
        managed=managed.total,
        expired=every.ended - unexpired,
        within=every.within,
        rotating=states[Lifecycle.ROTATING],
        in_grace=states[Lifecycle.GRACE_PERIOD],
        urgent=urgent,
    )


# --- reports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A discovered secret that breaks a rule: `outside_keyshift` or `lifetime`."""

    kind: str
    credential: EntraCredential
    detail: str


def findings(store: Store, *, now: datetime, default_policy: Policy | None = None) -> list[Finding]:
    """Client secrets (or certificates) added without keyshift to an application whose
    client secrets (or certificates) an estate credential manages, after the estate adopted
    it, and secrets and certificates whose lifetime exceeds the policy's `max_lifetime` (the
    managing credential's policy, else `default_policy`)."""
    out: list[Finding] = []
    with store.transaction() as s:
        managed = _managed(s)
    for cred in inventory(store, now=now):
        owner = managed.get((cred.integration, cred.app_id, cred.kind))
        # The lifetime rule: the policy of whichever credential manages the application.
        governing = owner or managed.get(
            (
                cred.integration,
                cred.app_id,
                CERTIFICATE if cred.kind == CLIENT_SECRET else CLIENT_SECRET,
            )
        )
        if (
            owner is not None
            and not cred.by_keyshift
            and cred.start is not None
            and cred.start > owner.created_at
        ):
            out.append(
                Finding(
                    "outside_keyshift",
                    cred,
                    f"added on {cred.start:%Y-%m-%d} without keyshift to an application "
                    f"{owner.name} manages",
                )
            )
        policy = governing.policy if governing is not None else default_policy
        limit = policy.max_lifetime if policy is not None else None
        if limit is not None and cred.start is not None and cred.end is not None:
            lifetime = cred.end - cred.start
            if lifetime > limit + timedelta(minutes=1):
                out.append(
                    Finding(
                        "lifetime",
                        cred,
                        f"lifetime {lifetime.days}d exceeds the policy maximum {limit.days}d",
                    )
                )
    return out
