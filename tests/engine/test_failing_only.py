"""`rollback: failing_only`: consumers take the new version one after another, and a
failed check puts back only the failing consumer. Those before it keep the new version,
those after it never get it (propagation stops), and the rotation ends needs_attention
with the split listed; the old version stays valid, and is not revoked, until an
operator rolls the rotation back."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keyshift.domain.states import RotationState, VersionStatus
from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.errors import PolicyRefused
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.api.conftest import open_api
from tests.conftest import Cli, run_subprocess
from tests.helpers import audit_details, json_value, rotations_of, steps, value_of, versions
from tests.helpers import save_estate as _save

CONSUMERS = ("web", "api", "batch")


def _check(flag: Path) -> list[str]:
    """A check that fails while `flag` exists."""
    script = f"import os, sys; sys.exit(1 if os.path.exists({str(flag)!r}) else 0)"
    return [sys.executable, "-c", script]


def failing_only_estate(tmp: Path) -> Path:
    """api-key (random, rollback: failing_only) delivered to three consumers, each with
    its own file and check; a consumer's check fails while `tmp/<consumer>.fail` exists."""
    actions: list[dict[str, Any]] = []
    for i, consumer in enumerate(CONSUMERS):
        actions += [
            {
                "type": "file",
                "order": 10 + i,
                "consumer": consumer,
                "config": {
                    "path": str(tmp / f"{consumer}.json"),
                    "key": "Api:Key",
                    "file_format": "json",
                },
            },
            {
                "type": "command_check",
                "order": 50 + i,
                "consumer": consumer,
                "config": {"argv": _check(tmp / f"{consumer}.fail")},
            },
        ]
    estate = {
        "credentials": [
            {
                "name": "api-key",
                "owner": "team-test",
                "environment": "prod",
                "policy": {"grace_period": "1h", "rollback": "failing_only"},
                "provider": {"type": "random", "length": 32},
                "actions": actions,
            }
        ]
    }
    return _save(tmp, estate)


def _rotate(store: Store, clock: FakeClock) -> tuple[str, RotationState]:
    return asyncio.run(rotations.rotate(store, "api-key", actor="test", context=clock.context()))


def _split_rotation(store: Store, tmp: Path, clock: FakeClock) -> tuple[str, str, str]:
    """Rotate once (all healthy), then again with api's check failing. Returns the
    rotation id and the old and new values."""
    apply_estate(store, load_estate(failing_only_estate(tmp)), actor="test")
    assert _rotate(store, clock)[1] == RotationState.COMPLETED
    old = json_value(tmp / "web.json")
    (tmp / "api.fail").touch()
    rotation_id, state = _rotate(store, clock)
    assert state == RotationState.NEEDS_ATTENTION
    [_, new] = versions(store, "api-key")
    return rotation_id, old, value_of(store, new)


def test_only_the_failing_consumer_goes_back_and_the_ones_after_it_never_switch(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    rotation_id, old, new = _split_rotation(store, tmp_path, clock)

    assert old != new
    assert json_value(tmp_path / "web.json") == new, "web passed its check: it keeps the new one"
    assert json_value(tmp_path / "api.json") == old, "api failed its check: back on the old one"
    assert json_value(tmp_path / "batch.json") == old, "batch never got the new one"
    names = [s.name for s in steps(store, rotation_id)]
    assert names == [
        "validated",
        "preflighted",
        "creating",
        "publishing:10:file@web",
        "verifying:50:command_check@web",
        "publishing:11:file@api",
        "verifying:51:command_check@api",
        "rollback:publishing:11:file@api",
        "rollback:verifying:51:command_check@api",
    ], "one consumer after another; nothing of batch ran, nothing of web was undone"


def test_the_split_is_listed_in_the_attention_text_and_the_residual_evidence(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    rotation_id, _, _ = _split_rotation(store, tmp_path, clock)
    [_, rotation] = rotations_of(store, "api-key")
    old_row, new_row = versions(store, "api-key")

    split = rotation.residual["split"]
    assert split["on_new"] == ["web"]
    assert split["rolled_back"] == ["api"]
    assert split["never_switched"] == ["batch"]
    assert split["not_restored"] == []
    assert split["failed_step"] == "verifying:51:command_check@api"
    assert (split["old_version_id"], split["new_version_id"]) == (old_row.id, new_row.id)
    assert rotation.attention is not None
    assert "web keep(s) the new version" in rotation.attention
    assert "api rolled back to the old version" in rotation.attention
    assert "batch never switched" in rotation.attention
    assert f"keyshift rollback {rotation_id}" in rotation.attention
    [audited] = audit_details(store, "rotation.split")
    assert audited["split"] == split


def test_the_old_version_is_not_revoked_while_consumers_are_on_it(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    rotation_id, _, _ = _split_rotation(store, tmp_path, clock)

    clock.advance(timedelta(days=2))  # far past the grace period
    asyncio.run(rotations.resume(store, actor="worker", context=clock.context()))
    asyncio.run(rotations.retire_disabled(store, actor="worker", context=clock.context()))

    old_row, new_row = versions(store, "api-key")
    assert (old_row.status, old_row.revoked_at) == (VersionStatus.CURRENT.value, None)
    assert old_row.ciphertext is not None, "the old value is kept: consumers use it"
    assert new_row.status == VersionStatus.PENDING.value, "issued, in use, never cut over"
    assert "revoking" not in [s.name for s in steps(store, rotation_id)]
    assert rotations_of(store, "api-key")[-1].state == RotationState.NEEDS_ATTENTION


def test_a_new_rotation_is_refused_until_the_split_is_resolved(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    rotation_id, _, _ = _split_rotation(store, tmp_path, clock)

    with pytest.raises(PolicyRefused) as refused:
        _rotate(store, clock)
    assert f"rotation {rotation_id}" in str(refused.value)
    assert "api, batch" in str(refused.value)
    assert "keyshift rollback" in str(refused.value)
    assert len(rotations_of(store, "api-key")) == 2, "no third rotation was recorded"


def test_rolling_the_split_back_by_hand_puts_every_consumer_on_the_old_version(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    rotation_id, old, _ = _split_rotation(store, tmp_path, clock)

    _, state = asyncio.run(
        rotations.roll_back(
            store, rotation_id, actor="alice", reason="api cannot take it", context=clock.context()
        )
    )

    assert state == RotationState.ROLLED_BACK
    for consumer in CONSUMERS:
        assert json_value(tmp_path / f"{consumer}.json") == old, consumer
    old_row, new_row = versions(store, "api-key")
    assert (old_row.status, new_row.status) == ("current", "disabled")
    undone = [s.name for s in steps(store, rotation_id) if s.name.startswith("rollback:")]
    assert undone.count("rollback:publishing:11:file@api") == 1, "api was restored once"
    assert "rollback:publishing:10:file@web" in undone
    assert not any("batch" in name for name in undone), "batch never had the new version"
    (tmp_path / "api.fail").unlink()
    assert _rotate(store, clock)[1] == RotationState.GRACE, "rotating again is allowed"


def test_the_first_consumer_failing_is_a_plain_rollback(store: Store, tmp_path: Path) -> None:
    """Nobody kept the new version: no split, the rotation ends rolled_back."""
    clock = FakeClock()
    apply_estate(store, load_estate(failing_only_estate(tmp_path)), actor="test")
    _rotate(store, clock)
    old = json_value(tmp_path / "web.json")
    (tmp_path / "web.fail").touch()

    _, state = _rotate(store, clock)

    assert state == RotationState.ROLLED_BACK
    assert [json_value(tmp_path / f"{c}.json") for c in CONSUMERS] == [old, old, old]
    assert "split" not in (rotations_of(store, "api-key")[-1].residual or {})


def test_all_consumers_healthy_completes_like_any_rotation(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    apply_estate(store, load_estate(failing_only_estate(tmp_path)), actor="test")
    _rotate(store, clock)
    rotation_id, state = _rotate(store, clock)

    assert state == RotationState.GRACE
    _, new = versions(store, "api-key")
    assert [json_value(tmp_path / f"{c}.json") for c in CONSUMERS] == [value_of(store, new)] * 3
    assert [s.name for s in steps(store, rotation_id)][3:] == [
        "publishing:10:file@web",
        "verifying:50:command_check@web",
        "publishing:11:file@api",
        "verifying:51:command_check@api",
        "publishing:12:file@batch",
        "verifying:52:command_check@batch",
        "verifying:provider",
    ]


def test_show_the_api_and_the_evidence_list_the_split(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    rotation_id, _, _ = _split_rotation(store, tmp_path, FakeClock())
    old_row, new_row = versions(store, "api-key")

    shown = cli("show", rotation_id)
    assert shown.exit_code == 0, shown.output  # type: ignore[attr-defined]
    text = " ".join(shown.output.split())  # type: ignore[attr-defined]
    assert f"on the new version {new_row.id}: web" in text
    assert f"rolled back to the old version {old_row.id}: api" in text
    assert "never switched (on the old version): batch" in text
    assert f"resolve: keyshift rollback {rotation_id}" in text

    for api in open_api(store):
        detail = api.call("GET", f"/v1/rotations/{rotation_id}", role="viewer").json()
        assert detail["split"]["on_new"] == ["web"]
        assert detail["split"]["rolled_back"] == ["api"]
        assert detail["split"]["never_switched"] == ["batch"]
        assert "split the consumers" in detail["attention"]

    bundle_path = tmp_path / "evidence.json"
    exported = cli("evidence", rotation_id, "--output", str(bundle_path))
    assert exported.exit_code == 0, exported.output  # type: ignore[attr-defined]
    bundle = json.loads(bundle_path.read_text())
    assert bundle["split"] == detail["split"]
    verified = cli("evidence", "verify", str(bundle_path))
    assert verified.exit_code == 0, verified.output  # type: ignore[attr-defined]
    bundle["split"]["on_new"] = ["web", "api"]
    bundle_path.write_text(json.dumps(bundle))
    tampered = cli("evidence", "verify", str(bundle_path))
    assert tampered.exit_code != 0  # type: ignore[attr-defined]
    assert "split: differs from" in tampered.output  # type: ignore[attr-defined]


SPLIT_BOUNDARIES = [
    "publishing:11:file@api",
    "rollback:publishing:11:file@api",
    "rollback:verifying:51:command_check@api",
]


@pytest.mark.slow
@pytest.mark.parametrize("boundary", SPLIT_BOUNDARIES, ids=lambda b: "killed after " + b)
def test_a_failing_only_rollback_killed_midway_is_finished_by_resume(
    boundary: str, store: Store, ks_env: dict[str, str], tmp_path: Path
) -> None:
    estate = failing_only_estate(tmp_path)
    assert run_subprocess(["apply", "-f", str(estate)], ks_env).returncode == 0
    assert run_subprocess(["rotate", "api-key"], ks_env).returncode == 0
    old = json_value(tmp_path / "web.json")
    (tmp_path / "api.fail").touch()

    crashed = run_subprocess(["rotate", "api-key"], {**ks_env, CRASH_AT: boundary})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = run_subprocess(["resume"], ks_env)
    assert "needs_attention" in resumed.stdout, resumed.stdout + resumed.stderr

    _, rotation = rotations_of(store, "api-key")
    assert rotation.state == "needs_attention"
    split = rotation.residual["split"]
    assert (split["on_new"], split["rolled_back"], split["never_switched"]) == (
        ["web"],
        ["api"],
        ["batch"],
    )
    _, new = versions(store, "api-key")
    assert json_value(tmp_path / "web.json") == value_of(store, new)
    assert json_value(tmp_path / "api.json") == old
    assert json_value(tmp_path / "batch.json") == old
    succeeded = [s.name for s in steps(store, rotation.id) if s.status == "succeeded"]
    assert len(succeeded) == len(set(succeeded)), "every step succeeded exactly once"
    assert not any("batch" in name for name in succeeded)
