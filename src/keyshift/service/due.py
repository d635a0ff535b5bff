"""When the worker rotates each credential by itself: the one rule (`next_rotation`) that
the worker's scan (`scheduler.due_for_rotation`) and the views (`rotations.status_rows`)
both follow, and the loading of what it is decided from, in a fixed number of queries
however many credentials the estate holds (`standings`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic_core import from_json
from sqlalchemy import ColumnElement, Executable, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from keyshift.domain.freeze import Freeze
from keyshift.domain.states import VersionStatus
from keyshift.providers import ProviderKind
from keyshift.store.models import (
    CredentialRow,
    DiscoveredApp,
    DiscoveredCredential,
    RotationRow,
    VersionRow,
)

# The estate's models are imported when a credential's policy is first read: `keyshift
# status` on an empty home reads none and loads none of them.
if TYPE_CHECKING:
    from keyshift.domain.estate import Policy

DUE = "due"
MANUAL = "manual"
DISABLED = "disabled"
_ENTRA = ProviderKind.ENTRA_CLIENT_SECRET.value
_CLIENT_SECRET = "client_secret"  # noqa: S105 (a kind of discovered credential)
"""`service.entra.CLIENT_SECRET` (a test holds them equal); not imported from there, as
that module loads the estate's models with it."""
FROZEN = "frozen"
ROTATING = "rotating"
NO_EXPIRY = "-"


class CurrentVersion(NamedTuple):
    """A credential's current version. A tuple: one per credential of a status page, and
    the interpreter need not track tuples of plain values for garbage collection."""

    id: str
    fingerprint: str
    expires_at: datetime | None


class Standing(NamedTuple):
    """A credential of the estate with what decides when it is rotated next. A tuple,
    as it is made once per credential of a status page and tuples are made fastest."""

    id: str
    name: str
    owner: str | None
    environment: str | None
    provider_type: str
    provider_json: str
    """The provider as declared (`type` and its config), as JSON text."""
    auto_rotate: bool
    scheduled: bool
    active_rotation_id: str | None
    active_state: str | None
    """The state of the rotation under way, if one is."""
    policy: Policy
    current: CurrentVersion | None
    issuer_expires_at: datetime | None
    """Without a current version, an Entra credential's expiry: the latest end of its
    application's client secrets as last synced (None when it has none)."""
    last_rotation_id: str | None
    """The latest rotation: the one under way, else the latest finished."""
    last_rotation_state: str | None
    last_rotated_at: datetime | None
    """When the latest completed rotation finished."""


class NextRotation(NamedTuple):
    """A tuple: one is decided per credential of a status page, and tuples are made
    fastest."""

    at: datetime | None
    """The first moment at or after `now` the worker starts a rotation by itself; None
    when it will not."""
    word: str
    """For a table: `due` (`at` is now), the UTC date of `at` (`2024-05-01`), `manual`,
    `rotating` or `-` (the current version never expires)."""

    @property
    def due(self) -> bool:
        return self.word == DUE


def next_rotation(
    credential: Standing, *, now: datetime, freezes: Sequence[Freeze] = ()
) -> NextRotation:
    """When the worker starts the next rotation of `credential` by itself.

    A credential with `auto_rotate` that the worker may rotate (`scheduled`) is rotated
    `rotate_before_expiry` before its current version expires, or at once when it has
    none yet (without a version, an Entra credential's expiry is its application's
    latest client secret, and it is rotated at once when the application has none);
    inside the policy's window, at its next opening from then. The worker does not
    rotate it by itself while a rotation is under way (`rotating`), while `enabled: false`
    or through a disabled integration (`disabled`: nothing rotates it), while one of
    `freezes` covers it (`frozen`: nobody rotates it either), without `auto_rotate`
    (`manual`), or when its current version never expires (`-`).
    """
    if credential.active_rotation_id is not None:
        return NextRotation(None, ROTATING)
    if not credential.scheduled:
        # Removed credentials are not read here: an unscheduled one is disabled.
        return NextRotation(None, DISABLED)
    if freezes and any(
        f.covers(credential.name, credential.owner, credential.environment) for f in freezes
    ):
        # Before `manual`: a frozen credential is not rotated by hand either.
        return NextRotation(None, FROZEN)
    if not credential.auto_rotate:
        return NextRotation(None, MANUAL)
    policy = credential.policy
    if credential.current is not None:
        if credential.current.expires_at is None:
            return NextRotation(None, NO_EXPIRY)
        at = max(now, credential.current.expires_at - policy.rotate_before_expiry)
    elif credential.issuer_expires_at is not None:
        at = max(now, credential.issuer_expires_at - policy.rotate_before_expiry)
    else:
        at = now  # never rotated: issue the first version
    if policy.window is not None:
        at = policy.window.next_opening(at)
    return NextRotation(at, DUE if at <= now else at.astimezone(UTC).date().isoformat())


def of_credentials(
    credential_id: InstrumentedAttribute[str],
    criteria: tuple[ColumnElement[bool], ...],
    limit: int | None = None,
) -> tuple[ColumnElement[bool], ...]:
    """Conditions on a table's `credential_id` column that keep the rows of the
    credentials `standings(s, *criteria, limit=limit)` reads. None without criteria or
    limit: the rows of removed credentials are read then, and left unused, which costs
    less than a join."""
    if not criteria and limit is None:
        return ()
    ids = select(CredentialRow.id).where(CredentialRow.removed_at.is_(None), *criteria)
    if limit is not None:
        ids = ids.order_by(CredentialRow.name).limit(limit)
    return (credential_id.in_(ids),)


def rows_of(s: Session, statement: Executable) -> Iterator[Any]:
    """The rows of `statement`, plain (not ORM) and fetched a thousand at a time. The ORM
    would build and keep every row of a large estate until the last is read, and that
    many objects alive at once set off the interpreter's full garbage collection (a
    tenth of a second with 10,000 credentials)."""
    return iter(s.connection().execute(statement).yield_per(1000))


def standings(
    s: Session, *criteria: ColumnElement[bool], limit: int | None = None
) -> Iterator[Standing]:
    """The credentials in the estate (not removed) that match `criteria` on
    `CredentialRow`, by name (only the first `limit`, when given, and only their rows
    are read: a page of a large estate): three queries however many there are. Read one
    by one, so consume them inside the transaction of `s`."""
    current = {
        cred_id: CurrentVersion(version_id, fingerprint, expires_at)
        for cred_id, version_id, fingerprint, expires_at in rows_of(
            s,
            select(
                VersionRow.credential_id,
                VersionRow.id,
                VersionRow.fingerprint,
                VersionRow.expires_at,
            ).where(
                VersionRow.status == VersionStatus.CURRENT.value,
                *of_credentials(VersionRow.credential_id, criteria, limit),
            ),
        )
    }
    active = aliased(RotationRow)
    ends: dict[AppKey, datetime] | None = None  # read once, if any row needs it
    rows = rows_of(
        s,
        select(
            CredentialRow.id,
            CredentialRow.name,
            CredentialRow.owner,
            CredentialRow.environment,
            CredentialRow.provider_type,
            CredentialRow.auto_rotate,
            CredentialRow.scheduled,
            CredentialRow.active_rotation_id,
            active.state,
            # Of the spec, only the two parts read, kept as JSON text columns beside it:
            # decoding every action's config of every credential would cost more than
            # all the rest.
            CredentialRow.policy_json,
            CredentialRow.provider_json,
            CredentialRow.last_rotation_id,
            CredentialRow.last_rotation_state,
            CredentialRow.last_rotated_at,
        )
        .outerjoin(active, active.id == CredentialRow.active_rotation_id)
        .where(CredentialRow.removed_at.is_(None), *criteria)
        .order_by(CredentialRow.name)
        .limit(limit),
    )
    if limit is not None:
        # A page: the ends of its own Entra applications only, not of the whole inventory.
        page = list(rows)
        apps = {
            _app_of(r.provider_json)
            for r in page
            if r.id not in current and r.provider_type == _ENTRA
        }
        ends = _secret_ends(s, apps) if apps else {}
        rows = iter(page)
    policies: dict[str, Policy] = {}  # estates have few policies and many credentials
    for (
        cred_id,
        name,
        owner,
        environment,
        provider_type,
        auto_rotate,
        scheduled,
        active_rotation_id,
        active_state,
        policy_json,
        provider_json,
        last_rotation_id,
        last_rotation_state,
        last_rotated_at,
    ) in rows:
        policy = policies.get(policy_json)
        if policy is None:
            from keyshift.domain.estate import Policy  # noqa: PLC0415 (see the imports)

            policy = policies[policy_json] = Policy.model_validate_json(policy_json)
        version = current.get(cred_id)
        issuer_end = None
        if version is None and provider_type == _ENTRA:
            # Only Entra credentials without a version look up their application.
            if ends is None:
                ends = _secret_ends(s)
            issuer_end = ends.get(_app_of(provider_json))
        yield Standing(
            cred_id,
            name,
            owner,
            environment,
            provider_type,
            provider_json,
            auto_rotate,
            scheduled,
            active_rotation_id,
            active_state,
            policy,
            version,
            issuer_end,
            active_rotation_id or last_rotation_id,
            active_state if active_rotation_id else last_rotation_state,
            last_rotated_at,
        )


AppKey = tuple[str | None, str | None]
"""An Entra application by integration and app id (None where a config lacks one)."""


def _app_of(provider_json: str) -> AppKey:
    """The (integration, app id) an Entra credential's provider config names."""
    declared = from_json(provider_json)
    return declared.get("integration"), declared.get("app_id")


def _secret_ends(s: Session, apps: set[AppKey] | None = None) -> dict[AppKey, datetime]:
    """The latest end of each Entra application's client secrets, as last synced, by
    integration and app id: of every application, or of `apps` only."""
    query = (
        select(
            DiscoveredApp.integration,
            DiscoveredApp.app_id,
            func.max(DiscoveredCredential.end_at),
        )
        .join(DiscoveredCredential, DiscoveredCredential.app_row_id == DiscoveredApp.id)
        .where(
            DiscoveredCredential.kind == _CLIENT_SECRET,
            DiscoveredCredential.removed_at.is_(None),
        )
        .group_by(DiscoveredApp.integration, DiscoveredApp.app_id)
    )
    if apps is not None:
        query = query.where(DiscoveredApp.app_id.in_({app for _, app in apps if app}))
    return {
        (integration, app_id): end
        for integration, app_id, end in s.execute(query)
        if end is not None and (apps is None or (integration, app_id) in apps)
    }
