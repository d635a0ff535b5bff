"""The worker's scan: Entra sync on its interval, expiry alerts once per threshold by
webhook, reports of secrets added outside keyshift, automatic rotations inside their
rotation window. Graph is the TLS double; time is a FakeClock."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyshift.service import notifications, rotations, scheduler
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli
from tests.doubles.graph import GraphDouble
from tests.doubles.receiver import Answer, Receiver
from tests.helpers import rotations_of, save_estate

HOOK_KEY = "alert-hook-signing-key"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    ks_env["HOOK_KEY"] = HOOK_KEY
    return ks_env


def _estate(
    tmp: Path,
    graph: GraphDouble,
    receiver: Receiver | None = None,
    credentials: list[dict[str, Any]] | None = None,
) -> Path:
    alerts: dict[str, Any] = {}
    if receiver is not None:
        alerts["webhooks"] = [
            {"url": receiver.url, "signing_secret_from": "env:HOOK_KEY", "retries": 0}
        ]
    return save_estate(
        tmp,
        {
            "integrations": [
                {
                    "name": "contoso",
                    "type": "entra",
                    "sync_every": "1h",
                    **graph.integration(ADMIN_ENV),
                }
            ],
            "alerts": alerts,
            "credentials": credentials or [],
        },
    )


def _apply(cli: Cli, path: Path) -> None:
    result = cli("apply", "-f", str(path))
    assert result.exit_code == 0, result.output


def _scan(store: Store, clock: FakeClock, env: dict[str, str]) -> dict[str, int]:
    return asyncio.run(scheduler.worker_pass(store, actor="worker", context=clock.context(env)))


def _events(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in receiver.requests]


def test_expiry_alerts_fire_once_at_30_and_once_at_7_days(
    store: Store,
    env: dict[str, str],
    cli: Cli,
    graph: GraphDouble,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    clock = FakeClock(start)
    app = graph.add_application("payments-api")
    secret = graph.seed_password(app, "portal", start=start, end=start + timedelta(days=40))
    receiver.signing_key = HOOK_KEY
    _apply(cli, _estate(tmp_path, graph, receiver))

    assert _scan(store, clock, env)["alerts"] == 0
    clock.advance(timedelta(days=9, hours=23))  # 30 days and 1 hour left
    assert _scan(store, clock, env)["alerts"] == 0
    clock.advance(timedelta(hours=2))  # 29 days 23 hours left
    assert _scan(store, clock, env)["alerts"] == 1
    assert _scan(store, clock, env)["alerts"] == 0
    clock.advance(timedelta(days=10))
    assert _scan(store, clock, env)["alerts"] == 0
    clock.advance(timedelta(days=13))  # 6 days 23 hours left
    assert _scan(store, clock, env)["alerts"] == 1
    clock.advance(timedelta(days=1))
    assert _scan(store, clock, env)["alerts"] == 0

    events = _events(receiver)
    assert [(e["event"], e["threshold"], e["key_id"]) for e in events] == [
        ("credential.expiring", "30d", secret.key_id),
        ("credential.expiring", "7d", secret.key_id),
    ]
    assert [e["days_left"] for e in events] == [29, 6]
    assert all(r.signature_valid for r in receiver.requests)
    assert len({r.headers["X-Keyshift-Delivery"] for r in receiver.requests}) == 2
    assert {e["app"] for e in events} == {"payments-api"}


def test_a_secret_first_seen_inside_7_days_alerts_only_at_7(
    store: Store,
    env: dict[str, str],
    cli: Cli,
    graph: GraphDouble,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    app = graph.add_application("batch-job")
    graph.seed_password(app, "x", start=clock.now(), end=clock.now() + timedelta(days=3))
    _apply(cli, _estate(tmp_path, graph, receiver))

    assert _scan(store, clock, env)["alerts"] == 1
    clock.advance(timedelta(hours=2))
    assert _scan(store, clock, env)["alerts"] == 0
    assert [e["threshold"] for e in _events(receiver)] == ["7d"]


def test_an_undelivered_alert_is_sent_again_at_the_next_scan(
    store: Store,
    env: dict[str, str],
    cli: Cli,
    graph: GraphDouble,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    app = graph.add_application("batch-job")
    graph.seed_password(app, "x", start=clock.now(), end=clock.now() + timedelta(days=20))
    _apply(cli, _estate(tmp_path, graph, receiver))
    receiver.script = [Answer(503)]

    assert _scan(store, clock, env)["alerts"] == 1
    assert _scan(store, clock, env)["alerts"] == 0

    deliveries = [r.headers["X-Keyshift-Delivery"] for r in receiver.requests]
    assert len(deliveries) == 2
    assert deliveries[0] == deliveries[1], "the receiver can drop the repeat"
    [row] = scheduler.alert_rows(store)
    assert row.delivered


def test_sync_runs_on_its_interval(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    graph.add_application("payments-api")
    _apply(cli, _estate(tmp_path, graph))

    assert _scan(store, clock, env)["synced"] == 1
    clock.advance(timedelta(minutes=59))
    assert _scan(store, clock, env)["synced"] == 0
    clock.advance(timedelta(minutes=1))
    assert _scan(store, clock, env)["synced"] == 1


def _managed(name: str, app_id: str, **policy: Any) -> dict[str, Any]:
    return {
        "name": name,
        "owner": "team-payments",
        "auto_rotate": True,
        "policy": {"grace_period": "1h", "max_lifetime": "180d", **policy},
        "provider": {"type": "entra_client_secret", "integration": "contoso", "app_id": app_id},
        "actions": [],
    }


def test_auto_rotation_fires_29_days_from_expiry_and_not_31(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    soon = graph.add_application("soon")
    later = graph.add_application("later")
    start = clock.now() - timedelta(days=300)
    graph.seed_password(soon, "old", start=start, end=clock.now() + timedelta(days=29))
    graph.seed_password(later, "old", start=start, end=clock.now() + timedelta(days=31))
    credentials = [_managed("soon-entra", soon.app_id), _managed("later-entra", later.app_id)]
    _apply(cli, _estate(tmp_path, graph, credentials=credentials))

    counts = _scan(store, clock, env)

    assert counts["started"] == 1
    assert [(r.reason, r.trigger) for r in rotations_of(store, "soon-entra")] == [
        ("scheduled", "schedule")
    ]
    assert rotations_of(store, "later-entra") == []
    assert len(soon.passwords) == 2, "the new secret is added while the old stays valid"
    assert len(later.passwords) == 1
    # Without a keyshift version, status reads the application's secrets as the scan does.
    status = {r.credential: r for r in rotations.status_rows(store, now=clock.now())}
    assert status["later-entra"].version_id is None
    assert status["later-entra"].next_rotation_at == clock.now() + timedelta(days=1)
    assert status["later-entra"].provider == "entra_client_secret"
    tomorrow = clock.now() + timedelta(days=1)
    assert scheduler.due_for_rotation(store, now=tomorrow - timedelta(seconds=1)) == []
    assert scheduler.due_for_rotation(store, now=tomorrow) == ["later-entra"]
    assert rotations.status_rows(store, now=tomorrow)[0].next_rotation == "due"


def test_an_entra_application_without_secrets_is_due_at_once(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    bare = graph.add_application("bare")
    _apply(cli, _estate(tmp_path, graph, credentials=[_managed("bare-entra", bare.app_id)]))
    asyncio.run(scheduler.sync_due(store, actor="worker", context=clock.context(env)))

    [row] = rotations.status_rows(store, now=clock.now())
    assert (row.next_rotation, row.next_rotation_at) == ("due", clock.now())
    assert scheduler.due_for_rotation(store, now=clock.now()) == ["bare-entra"]


def test_auto_rotation_waits_for_its_rotation_window(
    store: Store, env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    # A Tuesday, 10:30 in Berlin (09:30 UTC in winter).
    clock = FakeClock(datetime(2026, 11, 24, 9, 30, tzinfo=UTC))
    app = graph.add_application("payments-api")
    graph.seed_password(
        app, "old", start=clock.now() - timedelta(days=300), end=clock.now() + timedelta(days=5)
    )
    window = {"days": ["wed"], "hours": "09:00-12:00", "timezone": "Europe/Berlin"}
    credentials = [_managed("payments-entra", app.app_id, window=window)]
    _apply(cli, _estate(tmp_path, graph, credentials=credentials))

    assert _scan(store, clock, env)["started"] == 0
    [row] = rotations.status_rows(store, now=clock.now())
    wednesday_nine_in_berlin = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert (row.next_rotation_at, row.next_rotation) == (wednesday_nine_in_berlin, "2026-11-25")
    clock.advance(timedelta(hours=22))  # Wednesday 08:30 in Berlin: not yet
    assert _scan(store, clock, env)["started"] == 0
    clock.advance(timedelta(hours=1))  # Wednesday 09:30
    assert _scan(store, clock, env)["started"] == 1
    assert len(rotations_of(store, "payments-entra")) == 1


def test_a_secret_added_outside_keyshift_is_reported_once(
    store: Store,
    env: dict[str, str],
    cli: Cli,
    graph: GraphDouble,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    app = graph.add_application("payments-api")
    credentials = [_managed("payments-entra", app.app_id)]
    credentials[0]["auto_rotate"] = False
    _apply(cli, _estate(tmp_path, graph, receiver, credentials=credentials))
    later = clock.now() + timedelta(minutes=5)
    portal = graph.seed_password(app, "portal", start=later, end=later + timedelta(days=365))
    clock.advance(timedelta(hours=1))

    assert _scan(store, clock, env)["alerts"] == 2
    clock.advance(timedelta(hours=1))
    assert _scan(store, clock, env)["alerts"] == 0

    kinds = sorted(e["event"] for e in _events(receiver))
    assert kinds == ["entra.lifetime_exceeded", "entra.secret_outside_keyshift"]
    assert {e["key_id"] for e in _events(receiver)} == {portal.key_id}
    # Notification channels are told it as any change made outside keyshift.
    told = sorted(n.kind for n in notifications.listing(store))
    assert told == ["credential.changed_outside_keyshift", "entra.lifetime_exceeded"]


def test_worker_once_prints_what_the_scan_did(
    env: dict[str, str], cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    graph.add_application("payments-api")
    _apply(cli, _estate(tmp_path, graph))
    result = cli("worker", "--once")
    assert result.exit_code == 0, result.output
    assert "1 synced" in result.output
    alerts = cli("alerts")
    assert alerts.exit_code == 0, alerts.output
