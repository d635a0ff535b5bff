"""The rotation state machine end to end on the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from keyshift.domain.states import RotationState, StepStatus, VersionStatus
from keyshift.engine.engine import Engine
from keyshift.engine.run import RETAIN_DISABLED
from keyshift.errors import KeyshiftError
from keyshift.service import rotations, scheduler
from keyshift.service.estate import apply_estate, load_estate, parse_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.helpers import (
    SMOKE_CHECK,
    env_value,
    json_value,
    rotations_of,
    steps,
    value_of,
    versions,
    write_estate,
)


def _apply(store: Store, estate: Path) -> None:
    apply_estate(store, load_estate(estate), actor="test")


def _rotate(
    store: Store, clock: FakeClock, grace: timedelta | None = None, name: str = "api-key"
) -> tuple[str, RotationState]:
    return asyncio.run(
        rotations.rotate(store, name, actor="test", grace=grace, context=clock.context())
    )


def test_first_rotation_issues_one_version_and_delivers_it_to_every_consumer(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    _apply(store, write_estate(tmp_path))
    rotation_id, state = _rotate(store, clock)
    assert state == RotationState.COMPLETED
    [version] = versions(store, "api-key")
    assert version.status == VersionStatus.CURRENT.value
    assert version.rotation_id == rotation_id
    assert version.expires_at == clock.now() + timedelta(days=90)
    value = value_of(store, version)
    assert json_value(tmp_path / "app.json") == value
    assert env_value(tmp_path / "app.env") == value
    assert (tmp_path / "reload.log").read_text().split() == ["publish", version.id]


def test_old_version_stays_valid_through_grace_and_is_revoked_after_it(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    _apply(store, write_estate(tmp_path))
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock)
    assert state == RotationState.GRACE
    old, new = versions(store, "api-key")
    assert (old.status, new.status) == (VersionStatus.PREVIOUS.value, VersionStatus.CURRENT.value)
    assert old.ciphertext is not None, "the old value is kept while it is still valid"

    clock.advance(timedelta(minutes=59))
    assert asyncio.run(rotations.resume(store, actor="test", context=clock.context())) == [
        (rotation_id, "api-key", RotationState.GRACE)
    ]
    clock.advance(timedelta(minutes=1))
    [(_, _, final)] = asyncio.run(rotations.resume(store, actor="test", context=clock.context()))
    assert final == RotationState.COMPLETED
    old, new = versions(store, "api-key")
    assert old.status == VersionStatus.REVOKED.value
    assert old.revoked_at == clock.now()
    assert old.ciphertext is None, "a revoked value is erased on purpose"
    assert json_value(tmp_path / "app.json") == value_of(store, new)


def test_grace_zero_revokes_in_the_same_run(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    _apply(store, write_estate(tmp_path))
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock, grace=timedelta(0))
    assert state == RotationState.COMPLETED
    assert [s.name for s in steps(store, rotation_id)] == [
        "validated",
        "preflighted",
        "creating",
        "publishing:10:file",
        "publishing:20:file",
        "reloading:30:command",
        "verifying:provider",
        "revoking",
    ]
    assert [v.status for v in versions(store, "api-key")] == ["revoked", "current"]


def _failing_reload(tmp_path: Path, on_failure: str) -> list[dict[str, object]]:
    fail = tmp_path / "fail.py"
    fail.write_text("import sys; sys.exit(3)\n")
    return [
        {
            "type": "file",
            "order": 10,
            "on_failure": "abort",
            "config": {"path": str(tmp_path / "app.json"), "key": "Api:Key", "file_format": "json"},
        },
        {
            "type": "file",
            "order": 20,
            "on_failure": "abort",
            "config": {"path": str(tmp_path / "app.env"), "key": "API_KEY", "file_format": "env"},
        },
        {
            "type": "command",
            "order": 30,
            "on_failure": on_failure,
            "config": {"argv": [sys.executable, str(fail)], "rollback": "none"},
        },
    ]


def test_abort_failure_restores_previous_value_in_reverse_order_and_disables_new_version(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    _apply(store, write_estate(tmp_path))
    _rotate(store, clock)
    [first] = versions(store, "api-key")
    previous = value_of(store, first)

    _apply(store, write_estate(tmp_path, actions=_failing_reload(tmp_path, "abort")))
    rotation_id, state = _rotate(store, clock)

    assert state == RotationState.ROLLED_BACK
    journal = steps(store, rotation_id)
    assert [s.name for s in journal if s.name.startswith("rollback:")] == [
        "rollback:publishing:20:file",
        "rollback:publishing:10:file",
    ]
    assert all(
        s.status == StepStatus.SUCCEEDED.value for s in journal if s.name.startswith("rollback:")
    )
    assert json_value(tmp_path / "app.json") == previous
    assert env_value(tmp_path / "app.env") == previous
    old, new = versions(store, "api-key")
    assert old.status == VersionStatus.CURRENT.value
    assert new.status == VersionStatus.DISABLED.value
    assert new.expires_at == clock.now() + RETAIN_DISABLED
    assert new.ciphertext is not None, "the disabled version is kept for analysis"
    [rot] = [r for r in rotations_of(store, "api-key") if r.id == rotation_id]
    assert rot.error is not None
    assert "reloading:30:command" in rot.error


def test_first_issuance_rolled_back_removes_what_it_wrote(store: Store, tmp_path: Path) -> None:
    (tmp_path / "app.json").write_text('{"Other": 1}\n')
    _apply(store, write_estate(tmp_path, actions=_failing_reload(tmp_path, "abort")))
    _rotation_id, state = _rotate(store, FakeClock())
    assert state == RotationState.ROLLED_BACK
    assert json_value(tmp_path / "app.json") is None
    assert "Other" in (tmp_path / "app.json").read_text()


def test_continue_failure_finishes_as_needs_attention_not_completed(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    _apply(store, write_estate(tmp_path, actions=_failing_reload(tmp_path, "continue")))
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock, grace=timedelta(0))
    assert state == RotationState.NEEDS_ATTENTION
    [rot] = [r for r in rotations_of(store, "api-key") if r.id == rotation_id]
    assert rot.attention is not None
    assert "reloading:30:command" in rot.attention
    _old, new = versions(store, "api-key")
    assert json_value(tmp_path / "app.json") == value_of(store, new)
    status = {r.credential: r for r in rotations.status_rows(store, now=clock.now())}
    assert status["api-key"].lifecycle.value == "Needs Attention"


def test_a_second_rotation_of_a_credential_is_refused_while_one_is_unfinished(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    _apply(store, write_estate(tmp_path))
    _rotate(store, clock)
    first, state = _rotate(store, clock)
    assert state == RotationState.GRACE
    engine = Engine(store, actor="test", context=clock.context())
    with pytest.raises(KeyshiftError, match=f"already has rotation {first} in progress"):
        engine.request("api-key", requested_by="test")


def test_blocked_preflight_fails_before_anything_is_created(store: Store, tmp_path: Path) -> None:
    actions = [
        {
            "type": "file",
            "order": 10,
            "on_failure": "abort",
            "config": {
                "path": str(tmp_path / "missing-dir" / "app.json"),
                "key": "k",
                "file_format": "json",
            },
        }
    ]
    _apply(store, write_estate(tmp_path, actions=actions))
    rotation_id, state = _rotate(store, FakeClock())
    assert state == RotationState.FAILED
    assert versions(store, "api-key") == []
    assert [s.name for s in steps(store, rotation_id)] == ["validated", "preflighted"]


def test_status_shows_lifecycle_from_expiry(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    _apply(store, write_estate(tmp_path, policy={"max_lifetime": "40d", "grace_period": "0s"}))
    [row] = rotations.status_rows(store, now=clock.now())
    assert row.lifecycle.value == "Never Rotated"
    _rotate(store, clock)
    [row] = rotations.status_rows(store, now=clock.now())
    assert (row.lifecycle.value, row.days_left) == ("Active", 40)
    [row] = rotations.status_rows(store, now=clock.now() + timedelta(days=15))
    assert row.lifecycle.value == "Expiring Soon"
    [row] = rotations.status_rows(store, now=clock.now() + timedelta(days=41))
    assert row.lifecycle.value == "Expired"


def _auto_rotated(estate: Path) -> Path:
    """The estate at `estate` with `auto_rotate: true` on its credential."""
    estate.write_text(estate.read_text().replace('"owner"', '"auto_rotate": true, "owner"'))
    return estate


def _status(store: Store, now: datetime) -> rotations.StatusRow:
    [row] = rotations.status_rows(store, now=now)
    return row


def test_status_dates_the_last_completed_rotation_and_names_the_latest(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    _apply(store, write_estate(tmp_path, policy={"grace_period": "0s", "max_lifetime": "40d"}))
    row = _status(store, clock.now())
    assert (row.last_rotated_at, row.last_rotation_id, row.last_rotation) == (None, None, None)
    assert (row.provider, row.environment) == ("random", None)

    clock.advance(timedelta(hours=1))
    first, state = _rotate(store, clock)
    assert state == RotationState.COMPLETED
    completed_at = clock.now()
    row = _status(store, clock.now())
    assert (row.last_rotated_at, row.last_rotation_id, row.last_rotation) == (
        completed_at,
        first,
        "completed",
    )

    # The next rotation fails before it creates anything: the last completed one stays.
    blocked = {
        "type": "file",
        "order": 10,
        "on_failure": "abort",
        "config": {
            "path": str(tmp_path / "missing" / "app.json"),
            "key": "k",
            "file_format": "json",
        },
    }
    _apply(store, write_estate(tmp_path, actions=[blocked], policy={"grace_period": "0s"}))
    clock.advance(timedelta(days=1))
    second, state = _rotate(store, clock)
    assert state == RotationState.FAILED
    row = _status(store, clock.now())
    assert (row.last_rotated_at, row.last_rotation_id, row.last_rotation) == (
        completed_at,
        second,
        "failed",
    )
    assert row.lifecycle.value == "Needs Attention"


def test_status_follows_a_rotation_in_grace_and_its_rollback(store: Store, tmp_path: Path) -> None:
    """The credential keeps a record of its rotations for status pages: the one under
    way while it is, and the latest finished one once it rolled back."""
    clock = FakeClock()
    _apply(store, write_estate(tmp_path, policy={"grace_period": "0s", "max_lifetime": "40d"}))
    _rotate(store, clock)
    first_done = clock.now()
    clock.advance(timedelta(days=1))
    second, state = _rotate(store, clock, grace=timedelta(days=7))
    assert state == RotationState.GRACE
    row = _status(store, clock.now())
    assert (row.last_rotation_id, row.last_rotation, row.last_rotated_at) == (
        second,
        "grace",
        first_done,
    )

    clock.advance(timedelta(hours=1))
    _, state = asyncio.run(
        rotations.roll_back(
            store, second, actor="test", reason="bad value", context=clock.context()
        )
    )
    assert state == RotationState.ROLLED_BACK
    row = _status(store, clock.now())
    assert (row.last_rotation_id, row.last_rotation, row.last_rotated_at) == (
        second,
        "rolled_back",
        first_done,
    )
    assert row.lifecycle.value != "Needs Attention"


def test_status_dates_the_next_rotation_from_expiry_and_rotate_before_expiry(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    policy = {"max_lifetime": "40d", "grace_period": "0s", "rotate_before_expiry": "10d"}
    _apply(store, _auto_rotated(write_estate(tmp_path, policy=policy)))
    row = _status(store, clock.now())
    assert (row.next_rotation, row.next_rotation_at) == ("due", clock.now()), "never rotated"

    _rotate(store, clock)
    row = _status(store, clock.now())
    assert row.next_rotation_at == clock.now() + timedelta(days=30)
    assert row.next_rotation == "2024-01-31"
    later = clock.now() + timedelta(days=31)
    row = _status(store, later)
    assert (row.next_rotation, row.next_rotation_at) == ("due", later)


def test_status_moves_the_next_rotation_into_the_window_as_the_scheduler_does(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()  # Monday 1 January 2024, 00:00 UTC
    window = {"days": ["thu"], "hours": "09:00-12:00", "timezone": "UTC"}
    policy = {
        "max_lifetime": "40d",
        "grace_period": "0s",
        "rotate_before_expiry": "10d",
        "window": window,
    }
    _apply(store, _auto_rotated(write_estate(tmp_path, policy=policy)))
    clock.advance(timedelta(days=3, hours=9))  # Thursday 4 January, 09:00: inside
    _rotate(store, clock)
    # Expires Tuesday 13 February; rotate_before_expiry says Saturday 3 February.
    opening = datetime(2024, 2, 8, 9, 0, tzinfo=UTC)
    row = _status(store, clock.now())
    assert (row.next_rotation_at, row.next_rotation) == (opening, "2024-02-08")
    closing = datetime(2024, 2, 8, 12, 0, tzinfo=UTC)
    assert _status(store, closing).next_rotation_at == datetime(2024, 2, 15, 9, 0, tzinfo=UTC)
    for now in (opening - timedelta(minutes=1), opening, closing - timedelta(minutes=1), closing):
        due = "api-key" in scheduler.due_for_rotation(store, now=now)
        assert due == (_status(store, now).next_rotation == "due"), now
        assert due == (opening <= now < closing), now


def test_status_says_manual_when_the_worker_does_not_rotate_it(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    _apply(store, write_estate(tmp_path))
    row = _status(store, clock.now())
    assert (row.next_rotation, row.next_rotation_at) == ("manual", None)
    _rotate(store, clock)
    row = _status(store, clock.now() + timedelta(days=200))
    assert (row.next_rotation, row.next_rotation_at) == ("manual", None)


def test_status_says_rotating_while_a_rotation_runs_and_dash_without_expiry(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    _apply(store, _auto_rotated(write_estate(tmp_path, policy={"grace_period": "1h"})))
    _rotate(store, clock)
    row = _status(store, clock.now())
    assert row.expires_at is None
    assert (row.next_rotation, row.next_rotation_at) == ("-", None)
    _rotation_id, state = _rotate(store, clock)
    assert state == RotationState.GRACE
    row = _status(store, clock.now())
    assert (row.next_rotation, row.next_rotation_at) == ("rotating", None)
    assert scheduler.due_for_rotation(store, now=clock.now()) == []


def test_status_overlap_follows_each_credentials_own_strategy(store: Store, tmp_path: Path) -> None:
    """Overlap is worked out once per provider type and strategy, not once per type."""
    integration = {
        "name": "db-admin",
        "type": "postgres",
        "dsn": "postgresql://keyshift_admin@db.internal:5432/app",
        "password_from": "env:DB_ADMIN_PASSWORD",
    }
    single = {"type": "postgres", "strategy": "single_user", "user": "app"}
    alternating = {"type": "postgres", "users": ["app_a", "app_b"], "group_role": "app"}
    estate = {
        "integrations": [integration],
        "credentials": [
            {"name": name, "owner": "team-test", "provider": provider, "actions": []}
            for name, provider in [("a-single", single), ("b-alternating", alternating)]
            + [(f"c-single-{i}", {**single, "user": f"app{i}"}) for i in range(2)]
        ],
    }
    apply_estate(store, parse_estate(estate), actor="test")
    rows = rotations.status_rows(store, now=FakeClock().now())
    assert [(r.credential, r.overlap, r.provider) for r in rows] == [
        ("a-single", "in place", "postgres"),
        ("b-alternating", "dual", "postgres"),
        ("c-single-0", "in place", "postgres"),
        ("c-single-1", "in place", "postgres"),
    ]


def _many(n: int) -> dict[str, Any]:
    return {
        "credentials": [
            {
                "name": f"cred-{i:02d}",
                "owner": "team-test",
                "environment": "prod",
                "auto_rotate": i % 2 == 0,
                "policy": {"grace_period": "0s", "max_lifetime": "40d"},
                "provider": {"type": "random"},
                "actions": [SMOKE_CHECK],
            }
            for i in range(n)
        ]
    }


@contextmanager
def _statements(store: Store) -> Iterator[list[str]]:
    """The SQL statements issued on the store's engine inside the block."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])  # (connection, cursor, statement, parameters, context, many)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def _queries(store: Store, now: datetime) -> tuple[int, int, int]:
    """How many statements status_rows, credential_detail and due_for_rotation issue."""
    with _statements(store) as status:
        rotations.status_rows(store, now=now)
    with _statements(store) as detail:
        rotations.credential_detail(store, "cred-01", now=now)
    with _statements(store) as due:
        scheduler.due_for_rotation(store, now=now)
    return len(status), len(detail), len(due)


def test_status_issues_as_many_queries_for_30_credentials_as_for_3(store: Store) -> None:
    clock = FakeClock()
    apply_estate(store, parse_estate(_many(3)), actor="test")
    for name in ("cred-00", "cred-01", "cred-01"):
        _rotate(store, clock, name=name)
    _rotate(store, clock, grace=timedelta(hours=1), name="cred-01")  # under way
    small = _queries(store, clock.now())

    apply_estate(store, parse_estate(_many(30)), actor="test")
    for name in ("cred-03", "cred-04", "cred-10", "cred-10"):
        _rotate(store, clock, name=name)
    rows = rotations.status_rows(store, now=clock.now())
    assert len(rows) == 30
    assert {r.environment for r in rows} == {"prod"}
    assert _queries(store, clock.now()) == small
    status, detail, due = small
    assert status <= 6, "a handful of bulk queries (one for the freezes), none per credential"
    assert detail <= status + 1, "the status queries and one for the versions"
    assert due <= 5, "the standings, the freezes and when each due one was last rotated"


def test_worker_starts_auto_rotation_when_expiry_is_within_rotate_before_expiry(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    estate = write_estate(
        tmp_path,
        policy={"max_lifetime": "40d", "grace_period": "0s", "rotate_before_expiry": "10d"},
    )
    text = estate.read_text().replace('"owner"', '"auto_rotate": true, "owner"')
    estate.write_text(text)
    _apply(store, estate)
    ctx = clock.context()
    assert asyncio.run(scheduler.worker_pass(store, actor="w", context=ctx)) == {
        "synced": 0,
        "resumed": 0,
        "retired": 0,
        "alerts": 0,
        "notified": 0,
        "started": 1,
        "waiting": 0,
    }
    assert asyncio.run(scheduler.worker_pass(store, actor="w", context=ctx))["started"] == 0
    clock.advance(timedelta(days=30))
    assert asyncio.run(scheduler.worker_pass(store, actor="w", context=ctx))["started"] == 1
    assert [v.status for v in versions(store, "api-key")] == ["revoked", "current"]


def test_rollback_restores_consumers_before_checking_them_again(
    store: Store, tmp_path: Path
) -> None:
    """Verify actions re-check consumers only once the old value is back in place."""
    clock = FakeClock()
    fail = tmp_path / "check.py"
    fail.write_text("import sys; sys.exit(7)\n")
    reload_script = tmp_path / "noop.py"
    reload_script.write_text("pass\n")
    actions = [
        {
            "type": "file",
            "order": 10,
            "on_failure": "abort",
            "config": {"path": str(tmp_path / "app.json"), "key": "Api:Key", "file_format": "json"},
        },
        {
            "type": "command",
            "order": 20,
            "on_failure": "abort",
            "config": {"argv": [sys.executable, str(reload_script)]},
        },
        {
            "type": "command_check",
            "order": 30,
            "on_failure": "abort",
            "config": {"argv": [sys.executable, str(fail)]},
        },
    ]
    _apply(store, write_estate(tmp_path, actions=actions))
    rotation_id, state = _rotate(store, clock)
    assert state == RotationState.ROLLED_BACK
    assert [s.name for s in steps(store, rotation_id) if s.name.startswith("rollback:")] == [
        "rollback:publishing:10:file",
        "rollback:reloading:20:command",
        "rollback:verifying:30:command_check",
    ]


READ_FILE_SCRIPT = """
import hashlib, json, os, sys
value = json.load(open(sys.argv[1]))["Api"]["Key"]
seen = hashlib.sha256(value.encode()).hexdigest()
with open(sys.argv[2], "a") as log:
    log.write(os.environ["KEYSHIFT_PHASE"] + " " + seen + "\\n")
"""
"""A reload that logs (as a digest) the value the JSON file holds when it runs."""


def test_a_reload_runs_again_on_rollback_once_the_stores_hold_the_old_value(
    store: Store, tmp_path: Path
) -> None:
    """A reload reads the stores: on rollback it must run after they are restored, or the
    consumer loads the new (now disabled) value once more."""
    clock = FakeClock()
    app, seen = tmp_path / "app.json", tmp_path / "seen.log"
    reload_script = tmp_path / "read_key.py"  # write_estate writes its own reload.py
    reload_script.write_text(READ_FILE_SCRIPT)
    check = tmp_path / "check.py"
    check.write_text("import sys; sys.exit(7)\n")
    actions = [
        {
            "type": "file",
            "order": 10,
            "on_failure": "abort",
            "config": {"path": str(app), "key": "Api:Key", "file_format": "json"},
        },
        {
            "type": "command",
            "order": 20,
            "on_failure": "abort",
            "config": {"argv": [sys.executable, str(reload_script), str(app), str(seen)]},
        },
        {
            "type": "command_check",
            "order": 30,
            "on_failure": "abort",
            "config": {"argv": [sys.executable, str(check)]},
        },
    ]
    _apply(store, write_estate(tmp_path, actions=actions[:2]))
    _rotate(store, clock)
    _apply(store, write_estate(tmp_path, actions=actions))

    _, state = _rotate(store, clock)

    assert state == RotationState.ROLLED_BACK, rotations_of(store, "api-key")[-1].error
    old, new = (value_of(store, v) for v in versions(store, "api-key"))
    assert json_value(app) == old

    def digest(value: str) -> str:
        return hashlib.sha256(value.encode()).hexdigest()

    assert seen.read_text().split("\n")[1:3] == [
        f"publish {digest(new)}",
        f"rollback {digest(old)}",
    ]


def test_residual_use_command_holds_revocation_until_it_reports_unused(
    store: Store, tmp_path: Path
) -> None:
    """With a residual_use command, grace ends once the command has said 'unused' for
    quiet_for; while it says 'in use' the old version stays valid."""
    clock = FakeClock()
    marker = tmp_path / "in-use"
    marker.write_text("2 clients\n")
    check = tmp_path / "check.py"
    check.write_text(
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(marker)!r})\n"
        "if p.exists():\n    print(p.read_text().strip()); sys.exit(1)\n"
        "print('idle')\n"
    )
    policy = {
        "grace_period": "1h",
        "residual_use": {
            "check_every": "1m",
            "quiet_for": "5m",
            "on_timeout": "fail",
            "command": [sys.executable, str(check)],
        },
    }
    _apply(store, write_estate(tmp_path, policy=policy))
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock)
    assert state == RotationState.GRACE

    def resume() -> RotationState | None:
        [(_, _, reached)] = asyncio.run(
            rotations.resume(store, actor="worker", context=clock.context())
        )
        return reached

    clock.advance(timedelta(minutes=1))
    assert resume() == RotationState.GRACE
    marker.unlink()
    for _ in range(4):  # unused, but not yet for quiet_for (5m)
        clock.advance(timedelta(minutes=1))
        assert resume() == RotationState.GRACE
    clock.advance(timedelta(minutes=2))
    assert resume() == RotationState.COMPLETED
    [revoking] = [s for s in steps(store, rotation_id) if s.name == "revoking"]
    evidence = revoking.detail["residual_use"]
    assert evidence["max_sessions"] == 2
    assert evidence["last_sessions"] == 0
    assert evidence["last_detail"]["command"]["said"] == "idle"
