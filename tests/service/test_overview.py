"""The overview (the dashboard's first page, `GET /v1/overview`): managed credentials
and the discovered Entra ID inventory of applications no credential manages, each
counted once, by how soon it expires."""

from __future__ import annotations

import secrets
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from keyshift import __version__
from keyshift.domain.secret import Secret
from keyshift.domain.states import Lifecycle, RotationState, VersionStatus
from keyshift.engine import rows
from keyshift.engine.plan import Plan, stored_plan
from keyshift.service import approvals, entra, overview, rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.models import CredentialRow, RotationRow, VersionRow
from keyshift.store.store import Store
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli
from tests.doubles.graph import GraphDouble
from tests.service.test_entra_sync import _apply, _estate, _now


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    return ks_env


def test_counts_managed_and_discovered_credentials_once_each(
    store: Store,
    env: dict[str, str],
    cli: Cli,
    graph: GraphDouble,
    tmp_path: Path,
) -> None:
    now = _now()
    loose = graph.add_application("payments-api")
    for days in (-3, 5, 25, 60, 200):
        graph.seed_password(
            loose, f"due-{days}d", start=now - timedelta(days=10), end=now + timedelta(days=days)
        )
    managed_app = graph.add_application("billing-api")
    graph.seed_password(
        managed_app, "by hand", start=now - timedelta(days=10), end=now + timedelta(days=3)
    )
    # billing-entra rotates billing-api's client secrets, not its certificates.
    graph.seed_certificate(
        managed_app, "signing", start=now - timedelta(days=10), end=now + timedelta(days=20)
    )
    credentials = [
        {
            "name": "billing-entra",
            "owner": "team-billing",
            "policy": {"grace_period": "0s", "max_lifetime": "80d"},
            "provider": {
                "type": "entra_client_secret",
                "integration": "contoso",
                "app_id": managed_app.app_id,
            },
        },
        {"name": "never-rotated", "provider": {"type": "random", "length": 32}, "actions": []},
    ]
    _apply(cli, _estate(tmp_path, graph, credentials=credentials))
    rotated = cli("rotate", "billing-entra", "--grace", "0s")
    assert rotated.exit_code == 0, rotated.output
    synced = cli("entra", "sync")
    assert synced.exit_code == 0, synced.output

    seen = overview.overview(store, now=now)

    # billing-api's secrets are billing-entra's versions: counted as that credential.
    assert (seen.total, seen.managed, seen.discovered) == (8, 2, 6)
    assert replace(seen, urgent=[]) == overview_from_status(store, now=now)
    assert seen.within == {7: 1, 30: 3, 90: 5}  # 5d; +20d, 25d; +60d and billing-entra's 80d
    assert seen.expired == 1
    assert (seen.in_grace, seen.rotating, seen.needs_attention, seen.awaiting_approval) == (
        0,
        0,
        0,
        0,
    )
    assert [(u.name, u.source) for u in seen.urgent[:3]] == [
        ("payments-api / due--3d", "entra"),
        ("payments-api / due-5d", "entra"),
        ("billing-api / signing", "entra"),
    ]
    assert [u.days_left for u in seen.urgent[:2]] == [-3, 5]
    assert ("billing-entra", "managed") in [(u.name, u.source) for u in seen.urgent]
    assert "never-rotated" not in [u.name for u in seen.urgent]  # no expiry to list

    mine = overview.overview(store, now=now, include_entra=False)
    assert (mine.total, mine.managed, mine.discovered) == (2, 2, 0)
    assert mine.within == {7: 0, 30: 0, 90: 1}
    assert [u.name for u in mine.urgent] == ["billing-entra"]


def overview_from_status(store: Store, *, now: datetime) -> overview.Overview:
    """The overview counted from every credential's status row and the whole inventory,
    one at a time: what `overview.overview` must count in SQL."""
    rows = rotations.status_rows(store, now=now)
    found = [c for c in entra.inventory(store, now=now) if c.managed_by is None]
    ends = [(r.expires_at, r.credential) for r in rows if r.expires_at is not None]
    ends += [(c.end, f"{c.app_name} / {c.display_name or c.key_id[:8]}") for c in found if c.end]
    states = Counter(r.lifecycle for r in rows) + Counter(c.state for c in found)
    return overview.Overview(
        total=len(rows) + len(found),
        managed=len(rows),
        discovered=len(found),
        within={
            days: sum(now < end <= now + timedelta(days=days) for end, _n in ends)
            for days in overview.WITHIN_DAYS
        },
        expired=sum(end <= now for end, _n in ends),
        in_grace=states[Lifecycle.GRACE_PERIOD],
        rotating=states[Lifecycle.ROTATING],
        needs_attention=states[Lifecycle.NEEDS_ATTENTION],
        awaiting_approval=len(approvals.requests(store, pending_only=True)),
        urgent=[],  # compared by name below
    )


# (current version's expiry in days or None for no version, latest finished rotation,
# rotation under way): every branch of `rotations.lifecycle` that the overview counts.
HISTORIES: list[tuple[float | None, RotationState | None, RotationState | None]] = [
    (40, RotationState.COMPLETED, None),
    (-2, RotationState.COMPLETED, None),  # expired
    (-1, RotationState.COMPLETED, RotationState.PUBLISHING),  # expired, rotating
    (3, RotationState.FAILED, None),  # needs attention
    (20, RotationState.NEEDS_ATTENTION, None),
    (80, RotationState.ROLLED_BACK, None),  # rolled back: nothing changed, active
    (5, RotationState.FAILED, RotationState.GRACE),  # in grace beats needs attention
    (6, None, RotationState.AWAITING_APPROVAL),  # rotating
    (None, None, None),  # never rotated
    (None, RotationState.FAILED, None),
    (120, RotationState.COMPLETED, RotationState.REVOKING),
]


def test_the_counts_made_in_sql_are_those_of_every_credential_one_by_one(store: Store) -> None:
    now = datetime.now(UTC)
    names = [f"cred-{i:02d}" for i in range(len(HISTORIES))] + ["removed-one"]
    declared = {
        "credentials": [
            {"name": name, "provider": {"type": "random", "length": 24}, "actions": []}
            for name in names
        ]
    }
    apply_estate(store, parse_estate(declared), actor="test")
    with store.transaction() as s:
        creds = {c.name: c for c in s.execute(select(CredentialRow)).scalars()}
        for i, (days, finished, active) in enumerate([*HISTORIES, (1, None, None)]):
            cred = creds[names[i]]
            plan = stored_plan(cred.spec)
            version = None
            if days is not None:
                version = _version(store, cred, expires_at=now + timedelta(days=days))
                s.add(version)
            if finished is not None:
                s.add(_rotation(cred, plan, finished, now - timedelta(days=1), version))
            if active is not None:
                under_way = _rotation(cred, plan, active, now - timedelta(hours=1), version)
                s.add(under_way)
                s.flush()
                cred.active_rotation_id = under_way.id
        creds["removed-one"].removed_at = now
        rows.note_finished(s, None)

    seen = overview.overview(store, now=now)

    assert replace(seen, urgent=[]) == overview_from_status(store, now=now)
    # Grace is the grace state alone; revoking after it, as awaiting approval, is rotating.
    assert (seen.in_grace, seen.rotating, seen.needs_attention) == (1, 3, 3)
    assert (seen.managed, seen.expired) == (len(HISTORIES), 2)
    by_expiry = sorted((d, names[i]) for i, (d, _f, _a) in enumerate(HISTORIES) if d is not None)
    assert [u.name for u in seen.urgent] == [name for _d, name in by_expiry][: overview.URGENT]
    assert seen.urgent[0].lifecycle == Lifecycle.EXPIRED.value
    assert seen.urgent[1].lifecycle == Lifecycle.ROTATING.value


def _version(store: Store, cred: CredentialRow, *, expires_at: datetime) -> VersionRow:
    value = Secret(secrets.token_urlsafe(24))
    row = VersionRow(
        id=str(uuid.uuid4()),
        credential_id=cred.id,
        serial=1,
        provider_ref="ref",
        attributes={},
        fingerprint=store.fingerprint(value),
        status=VersionStatus.CURRENT.value,
        created_at=expires_at - timedelta(days=90),
        expires_at=expires_at,
    )
    store.seal_into(row, value)
    return row


def _rotation(
    cred: CredentialRow,
    plan: Plan,
    state: RotationState,
    at: datetime,
    version: VersionRow | None,
) -> RotationRow:
    return RotationRow(
        id=str(uuid.uuid4()),
        credential_id=cred.id,
        state=state.value,
        requested_by="test",
        requested_at=at,
        reason="test",
        plan=plan.to_json(),
        plan_hash=plan.hash,
        keyshift_version=__version__,
        new_version_id=version.id if version is not None and state.is_final else None,
        updated_at=at,
        finished_at=at if state.is_final else None,
    )
