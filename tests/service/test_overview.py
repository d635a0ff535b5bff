"""The overview (the dashboard's first page, `GET /v1/overview`): managed credentials
and the discovered Entra ID inventory of applications no credential manages, each
counted once, by how soon it expires."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from keyshift.service import overview
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
    assert (seen.total, seen.managed, seen.discovered) == (7, 2, 5)
    assert seen.within == {7: 1, 30: 2, 90: 4}  # 5d; +25d; +60d and billing-entra's 80d
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
        ("payments-api / due-25d", "entra"),
    ]
    assert [u.days_left for u in seen.urgent[:2]] == [-3, 5]
    assert ("billing-entra", "managed") in [(u.name, u.source) for u in seen.urgent]
    assert "never-rotated" not in [u.name for u in seen.urgent]  # no expiry to list

    mine = overview.overview(store, now=now, include_entra=False)
    assert (mine.total, mine.managed, mine.discovered) == (2, 2, 0)
    assert mine.within == {7: 0, 30: 0, 90: 1}
    assert [u.name for u in mine.urgent] == ["billing-entra"]
