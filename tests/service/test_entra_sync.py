"""`keyshift entra sync`, the Entra inventory's lifecycle states, `entra summary` and
`entra report`, against the Graph double through azure-identity and httpx."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from keyshift.context import PluginContext
from keyshift.domain.states import Lifecycle
from keyshift.service import entra, rotations
from keyshift.store.models import AuditEntry, DiscoveredApp, DiscoveredCredential
from keyshift.store.store import Store
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli
from tests.doubles.graph import GraphDouble, StoredOwner
from tests.helpers import save_estate


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    return ks_env


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _estate(
    tmp: Path, graph: GraphDouble, *, credentials: list[dict[str, Any]] | None = None
) -> Path:
    return save_estate(
        tmp,
        {
            "integrations": [{"name": "contoso", "type": "entra", **graph.integration(ADMIN_ENV)}],
            "credentials": credentials or [],
        },
    )


def _apply(cli: Cli, path: Path) -> None:
    result = cli("apply", "-f", str(path))
    assert result.exit_code == 0, result.output


def _sync(store: Store, env: dict[str, str]) -> list[entra.SyncResult]:
    return asyncio.run(entra.sync(store, actor="test", context=PluginContext(env=env)))


def summary_from_inventory(store: Store, *, now: datetime, top: int = 10) -> entra.Summary:
    """The summary counted from the whole inventory, one credential at a time: what
    `entra.summary` must count in SQL."""
    creds = entra.inventory(store, now=now)
    with store.transaction() as s:
        apps = s.scalar(
            select(func.count())
            .select_from(DiscoveredApp)
            .where(DiscoveredApp.removed_at.is_(None))
        )
    live = [c for c in creds if c.end is not None and c.end > now]
    return entra.Summary(
        apps=apps or 0,
        client_secrets=sum(c.kind == entra.CLIENT_SECRET for c in creds),
        certificates=sum(c.kind == entra.CERTIFICATE for c in creds),
        managed=sum(c.managed_by is not None for c in creds),
        expired=sum(c.state == Lifecycle.EXPIRED for c in creds),
        within={
            days: sum(c.end is not None and c.end - now <= timedelta(days=days) for c in live)
            for days in (7, 30, 90)
        },
        rotating=sum(c.state == Lifecycle.ROTATING for c in creds),
        in_grace=sum(c.state == Lifecycle.GRACE_PERIOD for c in creds),
        urgent=[c for c in creds if c.end is not None][:top],
    )


def _tables(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every discovered row, every column: to show that a sync wrote nothing."""
    with store.transaction() as s:
        apps = [
            tuple(getattr(r, c.key) for c in DiscoveredApp.__table__.columns)
            for r in s.execute(select(DiscoveredApp).order_by(DiscoveredApp.id)).scalars()
        ]
        creds = [
            tuple(getattr(r, c.key) for c in DiscoveredCredential.__table__.columns)
            for r in s.execute(
                select(DiscoveredCredential).order_by(DiscoveredCredential.id)
            ).scalars()
        ]
    return apps, creds


def _audit_count(store: Store) -> int:
    with store.transaction() as s:
        return int(s.execute(select(func.count()).select_from(AuditEntry)).scalar_one())


def test_sync_imports_a_thousand_apps_across_pages_and_a_second_sync_changes_nothing(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    now = _now()
    owner = StoredOwner("u-1", "Ada Admin", "ada@contoso.example")
    for i in range(1000):
        app = graph.add_application(f"app-{i:04d}", owners=[owner] if i % 2 else [])
        graph.seed_password(app, f"secret {i}", start=now, end=now + timedelta(days=i + 1))
        if i % 10 == 0:
            graph.seed_certificate(app, "signing", start=now, end=now + timedelta(days=365))
    _apply(cli, _estate(tmp_path, graph))

    first = _sync(store, env)

    assert [(r.integration, r.apps, r.credentials) for r in first] == [("contoso", 1000, 1100)]
    assert len(first[0].added) == 2100
    listing = graph.graph_requests("GET")
    assert len(listing) == 10, "100 per page: ten pages, each following @odata.nextLink"
    assert all(r.query.get("$expand") for r in listing), "owners come in the same requests"
    apps, creds = _tables(store)
    assert len(apps) == 1000
    assert len(creds) == 1100
    with store.transaction() as s:
        row = s.execute(
            select(DiscoveredApp).where(DiscoveredApp.display_name == "app-0001")
        ).scalar_one()
        assert row.owners == ["ada@contoso.example"]
        kinds = s.execute(
            select(DiscoveredCredential.kind, func.count()).group_by(DiscoveredCredential.kind)
        ).all()
        assert dict(kinds) == {"client_secret": 1000, "certificate": 100}
    audit_before = _audit_count(store)

    second = _sync(store, env)

    assert second[0].unchanged
    assert (second[0].apps, second[0].credentials) == (1000, 1100)
    assert _tables(store) == (apps, creds), "a second sync writes nothing"
    assert _audit_count(store) == audit_before


def test_a_deleted_app_and_a_removed_secret_leave_the_inventory_with_history_kept(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    now = _now()
    keep = graph.add_application("keep")
    gone = graph.add_application("gone")
    kept = graph.seed_password(keep, "a", start=now, end=now + timedelta(days=90))
    dropped = graph.seed_password(keep, "b", start=now, end=now + timedelta(days=90))
    graph.seed_password(gone, "c", start=now, end=now + timedelta(days=90))
    _apply(cli, _estate(tmp_path, graph))
    _sync(store, env)

    graph.delete_application(gone.id)
    keep.passwords = [p for p in keep.passwords if p.key_id != dropped.key_id]
    result = _sync(store, env)[0]

    assert sorted(result.removed) == sorted(
        [f"client_secret {dropped.key_id} of {keep.app_id}", f"app {gone.app_id}"]
    )
    listed = entra.inventory(store, now=now)
    assert [(c.app_name, c.key_id) for c in listed] == [("keep", kept.key_id)]
    history = entra.inventory(store, now=now, include_removed=True)
    assert {c.state for c in history if c.removed_at is not None} == {Lifecycle.CLEANED_UP}
    assert len(history) == 3
    assert _sync(store, env)[0].unchanged


def test_removing_the_integration_from_the_estate_removes_its_entries(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    now = _now()
    app = graph.add_application("payments-api")
    graph.seed_password(app, "a", start=now, end=now + timedelta(days=90))
    _apply(cli, _estate(tmp_path, graph))
    _sync(store, env)
    assert len(entra.inventory(store, now=now)) == 1

    result = cli("apply", "-f", str(save_estate(tmp_path, {"credentials": []})))

    assert result.exit_code == 0, result.output
    assert "integration contoso" in result.output
    assert entra.inventory(store, now=now) == []
    assert len(entra.inventory(store, now=now, include_removed=True)) == 1


def test_lifecycle_states_summary_and_cli_tables(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    now = _now()
    app = graph.add_application("payments-api")
    for days in (-3, 5, 25, 60, 200):
        graph.seed_password(
            app, f"due-{days}d", start=now - timedelta(days=10), end=now + timedelta(days=days)
        )
    _apply(cli, _estate(tmp_path, graph))

    synced = cli("entra", "sync")

    assert synced.exit_code == 0, synced.output
    assert "contoso" in synced.output
    states = {c.display_name: c.state for c in entra.inventory(store, now=now)}
    assert states == {
        "due--3d": Lifecycle.EXPIRED,
        "due-5d": Lifecycle.EXPIRING_SOON,
        "due-25d": Lifecycle.EXPIRING_SOON,
        "due-60d": Lifecycle.ACTIVE,
        "due-200d": Lifecycle.ACTIVE,
    }
    found = entra.summary(store, now=now, top=3)
    assert found == summary_from_inventory(store, now=now, top=3)
    assert (found.apps, found.client_secrets, found.expired) == (1, 5, 1)
    assert found.within == {7: 1, 30: 2, 90: 3}
    assert [c.display_name for c in found.urgent] == ["due--3d", "due-5d", "due-25d"]

    shown = cli("entra", "summary")
    assert shown.exit_code == 0, shown.output
    assert "expiring within 30 days" in shown.output
    assert "Most urgent" in shown.output
    listed = cli("entra", "list", "--state", "expired")
    assert listed.exit_code == 0, listed.output
    assert "due--3d" in listed.output
    assert "due-60d" not in listed.output


def test_a_managed_app_shows_its_manager_and_reports_secrets_added_outside_keyshift(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    now = _now()
    app = graph.add_application("payments-api")
    graph.seed_password(
        app, "before adoption", start=now - timedelta(days=30), end=now + timedelta(days=60)
    )
    managed = {
        "name": "payments-entra",
        "owner": "team-payments",
        "policy": {"grace_period": "1h", "max_lifetime": "90d", "rotate_before_expiry": "30d"},
        "provider": {"type": "entra_client_secret", "integration": "contoso", "app_id": app.app_id},
    }
    _apply(cli, _estate(tmp_path, graph, credentials=[managed]))
    first = cli("rotate", "payments-entra", "--grace", "0s")
    assert first.exit_code == 0, first.output
    second = cli("rotate", "payments-entra")
    assert second.exit_code == 0, second.output
    # Someone adds a secret in the portal, valid for two years.
    later = datetime.now(UTC) + timedelta(seconds=1)
    portal = graph.seed_password(
        app, "added in portal", start=later, end=later + timedelta(days=730)
    )
    _sync(store, env)

    creds = entra.inventory(store, now=now)
    assert {c.managed_by for c in creds} == {"payments-entra"}
    ours = {c.state for c in creds if c.by_keyshift}
    # The first rotation's secret is the old version in the second one's grace period.
    assert ours == {Lifecycle.GRACE_PERIOD, Lifecycle.ACTIVE}
    assert len([c for c in creds if c.by_keyshift]) == 2
    counted = entra.summary(store, now=now)
    assert counted == summary_from_inventory(store, now=now)
    assert (counted.managed, counted.in_grace) == (4, 1)  # with the one added by hand
    findings = {(f.kind, f.credential.key_id) for f in entra.findings(store, now=now)}
    assert findings == {("outside_keyshift", portal.key_id), ("lifetime", portal.key_id)}

    report = cli("entra", "report")
    assert report.exit_code == 1
    assert portal.key_id in report.output
    assert "outside keyshift" in report.output


def test_sync_of_an_unknown_integration_is_refused(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    _apply(cli, _estate(tmp_path, graph))
    result = cli("entra", "sync", "--integration", "fabrikam")
    assert result.exit_code == 1
    assert "no entra integration named 'fabrikam'" in result.output
    assert rotations.status_rows(store, now=_now()) == []
