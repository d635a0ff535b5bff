"""A worker killed at any step boundary is resumed without minting a second version.

For each boundary, `keyshift rotate` runs in a subprocess that SIGKILLs itself
right after the step's side effect and before its journal write (the
`KEYSHIFT_TEST_CRASH_AT` fault point); `keyshift resume` in a new process must
then reach the same final state as an uninterrupted run.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.store.store import Store
from tests.conftest import Cli, run_subprocess
from tests.helpers import (
    env_value,
    json_value,
    rotations_of,
    steps,
    value_of,
    versions,
    write_estate,
)

HAPPY_BOUNDARIES = [
    "validated",
    "preflighted",
    "creating",
    "publishing:10:file",
    "publishing:20:file",
    "reloading:30:command",
    "verifying:provider",
    "revoking",
]


def _case_id(boundary: str) -> str:
    return "killed after " + boundary


@pytest.mark.slow
@pytest.mark.parametrize("boundary", HAPPY_BOUNDARIES, ids=_case_id)
def test_resume_after_kill_ends_like_an_uninterrupted_run(
    boundary: str, cli: Cli, store: Store, ks_env: dict[str, str], tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0  # type: ignore[attr-defined]
    assert cli("rotate", "api-key").exit_code == 0  # type: ignore[attr-defined]
    [first] = versions(store, "api-key")

    crashed = run_subprocess(["rotate", "api-key", "--grace", "0s"], {**ks_env, CRASH_AT: boundary})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr

    resumed = run_subprocess(["resume"], ks_env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    _, rotation = rotations_of(store, "api-key")
    assert rotation.state == "completed"
    all_versions = versions(store, "api-key")
    assert len(all_versions) == 2, "exactly one new version"
    old, new = all_versions
    assert old.id == first.id
    assert (old.status, new.status) == ("revoked", "current")
    assert new.rotation_id == rotation.id
    value = value_of(store, new)
    assert json_value(tmp_path / "app.json") == value
    assert env_value(tmp_path / "app.env") == value

    journal = steps(store, rotation.id)
    succeeded = [s.name for s in journal if s.status == "succeeded"]
    assert succeeded == HAPPY_BOUNDARIES, "every step succeeded exactly once"
    interrupted = [s for s in journal if s.error and s.error.startswith("interrupted")]
    assert [(s.name, s.attempt) for s in interrupted] == [(boundary, 1)]
    reloads = (tmp_path / "reload.log").read_text().split("\n")
    runs_for_new = [line for line in reloads if line.endswith(new.id)]
    expected_runs = 2 if boundary == "reloading:30:command" else 1
    assert len(runs_for_new) == expected_runs, "only the interrupted reload runs twice"


ROLLBACK_BOUNDARIES = ["rollback:publishing:20:file", "rollback:publishing:10:file"]


@pytest.mark.slow
@pytest.mark.parametrize("boundary", ROLLBACK_BOUNDARIES, ids=_case_id)
def test_resume_after_kill_during_rollback_restores_the_previous_value(
    boundary: str, cli: Cli, store: Store, ks_env: dict[str, str], tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0  # type: ignore[attr-defined]
    assert cli("rotate", "api-key").exit_code == 0  # type: ignore[attr-defined]
    [first] = versions(store, "api-key")
    fail = tmp_path / "fail.py"
    fail.write_text("import sys; sys.exit(4)\n")
    estate = write_estate(tmp_path)
    estate.write_text(estate.read_text().replace(str(tmp_path / "reload.py"), str(fail)))
    assert cli("apply", "-f", str(estate)).exit_code == 0  # type: ignore[attr-defined]

    crashed = run_subprocess(["rotate", "api-key"], {**ks_env, CRASH_AT: boundary})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = run_subprocess(["resume"], ks_env)
    assert resumed.returncode == 1, "a rolled-back rotation is not a healthy end"
    assert "rolled_back" in resumed.stdout

    _, rotation = rotations_of(store, "api-key")
    assert rotation.state == "rolled_back"
    old, new = versions(store, "api-key")
    assert (old.status, new.status) == ("current", "disabled")
    previous = value_of(store, first)
    assert json_value(tmp_path / "app.json") == previous
    assert env_value(tmp_path / "app.env") == previous


@pytest.mark.slow
def test_a_rollback_by_hand_killed_midway_is_finished_by_resume(
    cli: Cli, store: Store, ks_env: dict[str, str], tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0  # type: ignore[attr-defined]
    assert cli("rotate", "api-key").exit_code == 0  # type: ignore[attr-defined]
    assert cli("rotate", "api-key", "--grace", "1h").exit_code == 0  # type: ignore[attr-defined]
    _, rotation = rotations_of(store, "api-key")
    boundary = "rollback:publishing:10:file"

    crashed = run_subprocess(
        ["rollback", rotation.id, "--reason", "bad key"], {**ks_env, CRASH_AT: boundary}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert rotations_of(store, "api-key")[-1].state == "rolling_back"
    resumed = run_subprocess(["resume"], ks_env)
    assert "rolled_back" in resumed.stdout, resumed.stdout + resumed.stderr

    _, rotation = rotations_of(store, "api-key")
    assert rotation.state == "rolled_back"
    old, new = versions(store, "api-key")
    assert (old.status, new.status) == ("current", "disabled")
    assert json_value(tmp_path / "app.json") == value_of(store, old)
    assert env_value(tmp_path / "app.env") == value_of(store, old)
    undone = [s.name for s in steps(store, rotation.id) if s.status == "succeeded"]
    assert [n for n in undone if n.startswith("rollback:")] == [
        "rollback:publishing:20:file",
        boundary,
        "rollback:reloading:30:command",
    ], "each consumer restored once; only the interrupted step ran twice"
