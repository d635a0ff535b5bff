"""A fleet, not a queue: the worker runs due rotations at once, most urgent first, and
workers sharing a store claim each due credential exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from keyshift.domain.states import RotationState
from keyshift.errors import EstateInvalid, NotClaimed
from keyshift.service import fleet, rotations, scheduler
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.models import CredentialRow
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import Cli, run_subprocess
from tests.helpers import rotations_of, steps

# Waits until `count` rotations have reached it (each leaves a file in the directory),
# then succeeds; fails after a bound. Only rotations that run at once can all pass.
BARRIER = """
import os, pathlib, sys, time
here, count = pathlib.Path(sys.argv[1]), int(sys.argv[2])
(here / os.environ["KEYSHIFT_CREDENTIAL"]).touch()
bound = time.monotonic() + 60
while len(list(here.iterdir())) < count:
    if time.monotonic() > bound:
        sys.exit(3)
    time.sleep(0.02)
"""


def _fleet(n: int, actions: list[dict[str, Any]] | None = None, **policy: str) -> dict[str, Any]:
    return {
        "credentials": [
            {
                "name": f"cred-{i:02d}",
                "owner": "team-fleet",
                "auto_rotate": True,
                "policy": {"grace_period": "0s", "max_lifetime": "40d", **policy},
                "provider": {"type": "random"},
                "actions": actions or [],
            }
            for i in range(n)
        ]
    }


def _barrier(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    script = tmp_path / "barrier.py"
    script.write_text(BARRIER, encoding="utf-8")
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    argv = [sys.executable, str(script), str(arrived), str(count)]
    return [{"type": "command", "order": 10, "on_failure": "abort", "config": {"argv": argv}}]


def test_the_worker_runs_due_rotations_at_once(store: Store, tmp_path: Path) -> None:
    # Eight rotations whose reload command waits for all eight: they pass only if the
    # worker runs them at the same time.
    apply_estate(store, parse_estate(_fleet(8, _barrier(tmp_path, 8))), actor="test")
    tally = fleet.Tally()

    counts = asyncio.run(scheduler.worker_pass(store, actor="worker", concurrency=8, tally=tally))
    ended = tally.outcomes

    assert counts["started"] == 8
    assert (tally.due, tally.done, tally.failed, tally.running) == (8, 8, 0, 0)
    assert sorted(o.credential for o in ended) == [f"cred-{i:02d}" for i in range(8)]
    assert {o.state for o in ended} == {RotationState.COMPLETED}
    for i in range(8):
        [rotation] = rotations_of(store, f"cred-{i:02d}")
        assert rotation.state == RotationState.COMPLETED.value
    assert scheduler.due_for_rotation(store, now=FakeClock().now()) == []


def test_one_rotation_failing_does_not_stop_the_others(store: Store, tmp_path: Path) -> None:
    failing = tmp_path / "fail.py"
    failing.write_text(
        "import os, sys; sys.exit(3 * (os.environ['KEYSHIFT_CREDENTIAL'] == 'cred-02'))\n"
    )
    argv = [sys.executable, str(failing)]
    actions = [{"type": "command", "order": 10, "on_failure": "abort", "config": {"argv": argv}}]
    apply_estate(store, parse_estate(_fleet(5, actions)), actor="test")

    tally = fleet.Tally()
    asyncio.run(scheduler.worker_pass(store, actor="w", concurrency=3, tally=tally))

    assert (tally.done, tally.failed) == (4, 1)
    by_name = {o.credential: o for o in tally.outcomes}
    assert by_name["cred-02"].state == RotationState.ROLLED_BACK
    assert by_name["cred-02"].failed
    assert {o.state for n, o in by_name.items() if n != "cred-02"} == {RotationState.COMPLETED}


def test_the_most_urgent_credential_comes_first(store: Store) -> None:
    clock = FakeClock()
    apply_estate(store, parse_estate(_fleet(4)), actor="test")

    def rotate(name: str) -> None:
        asyncio.run(rotations.rotate(store, name, actor="t", context=clock.context()))

    rotate("cred-02")  # expires at day 40
    clock.advance(timedelta(days=1))
    rotate("cred-01")  # expires at day 41
    clock.advance(timedelta(days=34))
    rotate("cred-03")  # expires at day 75: not yet expired, but due at day 45
    clock.advance(timedelta(days=25))  # day 60; cred-00 was never rotated

    assert scheduler.due_for_rotation(store, now=clock.now()) == [
        "cred-02",  # expired first
        "cred-01",
        "cred-03",  # nearest expiry
        "cred-00",  # no version, so no expiry
    ]


def _scheduled_rotation(store: Store, clock: FakeClock) -> None:
    """cred-00 rotated as the worker rotates a due credential: its claim guarded."""
    asyncio.run(
        rotations.rotate(
            store,
            "cred-00",
            actor="worker",
            context=clock.context(),
            guard=scheduler.still_due(clock.now()),
        )
    )


def test_a_credential_rotated_since_the_scan_chose_it_is_not_rotated_again(
    store: Store,
) -> None:
    clock = FakeClock()
    apply_estate(store, parse_estate(_fleet(1)), actor="test")
    assert scheduler.due_for_rotation(store, now=clock.now()) == ["cred-00"]
    # Another worker rotates it between this worker's choice and its claim.
    asyncio.run(rotations.rotate(store, "cred-00", actor="other", context=clock.context()))

    with pytest.raises(NotClaimed, match="no longer due"):
        _scheduled_rotation(store, clock)
    assert len(rotations_of(store, "cred-00")) == 1


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_worker_passes_over_a_credential_another_worker_is_claiming(store: Store) -> None:
    clock = FakeClock()
    apply_estate(store, parse_estate(_fleet(1)), actor="test")
    claimed = threading.Event()
    release = threading.Event()

    def other_worker() -> None:
        with store.transaction() as s:
            s.execute(
                select(CredentialRow).where(CredentialRow.name == "cred-00").with_for_update()
            ).scalar_one()
            claimed.set()
            release.wait(30)

    holder = threading.Thread(target=other_worker)
    holder.start()
    try:
        assert claimed.wait(30)
        # SKIP LOCKED: the claim does not wait for the other transaction, it moves on.
        with pytest.raises(NotClaimed, match="claimed by another worker"):
            _scheduled_rotation(store, clock)
    finally:
        release.set()
        holder.join()
    assert rotations_of(store, "cred-00") == []


def test_run_all_keeps_to_its_concurrency() -> None:
    running = 0
    highest = 0
    lock = threading.Lock()
    gate = threading.Barrier(3, timeout=30)

    def job(name: str) -> fleet.Job:
        async def call() -> tuple[str, RotationState]:
            nonlocal running, highest
            with lock:
                running += 1
                highest = max(highest, running)
            gate.wait()  # three at once, never a fourth
            with lock:
                running -= 1
            return name, RotationState.COMPLETED

        return fleet.Job(name, call)

    ended = asyncio.run(fleet.run_all([job(f"j{i}") for i in range(9)], concurrency=3))

    assert highest == 3
    assert len(ended) == 9
    assert all(o.state == RotationState.COMPLETED for o in ended)


def test_run_all_refuses_a_concurrency_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(fleet.run_all([], concurrency=0))


# --- the worker command -------------------------------------------------------------------


def test_worker_once_in_json_prints_one_summary_of_the_scan(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    apply_estate(store, parse_estate(_fleet(3)), actor="test")

    result = cli("worker", "--once", "--concurrency", "2", "-o", "json")

    assert result.exit_code == 0, result.output
    [line] = [x for x in result.output.splitlines() if x.startswith("{")]
    scan = json.loads(line)
    assert scan["started"] == 3
    assert scan["done"] == 3
    assert scan["failed"] == 0
    assert sorted(r["credential"] for r in scan["rotations"]) == ["cred-00", "cred-01", "cred-02"]
    assert {r["result"] for r in scan["rotations"]} == {"completed"}
    assert scan["budgets"] == [], "random credentials call no paced issuer"


def test_worker_refuses_a_concurrency_below_one(cli: Cli) -> None:
    result = cli("worker", "--once", "--concurrency", "0")
    assert result.exit_code == 2
    assert "--concurrency" in result.output


def test_estate_sets_the_worker_concurrency_and_refuses_a_bad_one(store: Store) -> None:
    estate = parse_estate({**_fleet(1), "worker": {"concurrency": 4}})
    assert estate.worker.concurrency == 4
    with pytest.raises(EstateInvalid, match=r"worker\.concurrency"):
        parse_estate({**_fleet(1), "worker": {"concurrency": 0}})


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_second_worker_on_one_sqlite_store_is_refused(cli: Cli, store: Store) -> None:
    with store.single_worker():
        result = cli("worker", "--once")
    assert result.exit_code == 1
    assert f"another keyshift worker (pid {os.getpid()})" in result.output
    assert "PostgreSQL" in result.output
    assert cli("worker", "--once").exit_code == 0  # free again once the first one stops


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres"])
def test_two_workers_on_postgres_split_the_fleet_and_take_over_a_killed_one(
    ks_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    """Two `keyshift worker` processes on one PostgreSQL store; one is killed mid-fleet.
    Every credential is rotated exactly once, by one rotation, and the killed worker's
    rotations are taken over."""
    runs = tmp_path / "runs"
    runs.mkdir()
    go = tmp_path / "go"
    script = tmp_path / "slow.py"
    # Each run of the reload step leaves a line naming its credential, then waits for
    # the test to let it go: the test knows which rotations are in their reload.
    script.write_text(
        "import os, sys, time\n"
        "with open(os.path.join(sys.argv[1], os.environ['KEYSHIFT_CREDENTIAL']), 'a') as f:\n"
        "    f.write('run\\n')\n"
        "bound = time.monotonic() + 120\n"
        "while not os.path.exists(sys.argv[2]) and time.monotonic() < bound:\n"
        "    time.sleep(0.02)\n",
        encoding="utf-8",
    )
    argv = [sys.executable, str(script), str(runs), str(go)]
    actions = [{"type": "command", "order": 10, "on_failure": "abort", "config": {"argv": argv}}]
    names = [f"cred-{i:02d}" for i in range(24)]
    apply_estate(store, parse_estate(_fleet(24, actions)), actor="test")

    def in_reload(count: int) -> None:
        bound = time.monotonic() + 120
        while len(list(runs.iterdir())) < count:
            assert time.monotonic() < bound, "the workers did not reach their reloads"
            time.sleep(0.02)

    env = {**os.environ, **ks_env}
    command = [sys.executable, "-m", "keyshift.cli", "worker", "--once", "--concurrency", "4"]
    doomed = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    other: subprocess.Popen[str] | None = None
    try:
        in_reload(4)  # the first worker holds four rotations in their reload
        other = subprocess.Popen(
            [*command, "-o", "json"], env=env, stdout=subprocess.PIPE, text=True
        )
        in_reload(8)  # the second passed over those four and holds four more
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(30)
        go.touch()
        stdout, _ = other.communicate(timeout=300)
    finally:
        go.touch()
        for process in (doomed, other):
            if process is not None and process.poll() is None:
                process.kill()
    assert other.returncode == 0
    [scan] = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    assert scan["started"] == 20, "the second worker started all but the first one's four"

    # A third scan takes over what the killed worker left (its process is gone).
    finish = run_subprocess(["worker", "--once", "--concurrency", "4"], env)
    assert finish.returncode == 0, finish.stderr

    for name in names:
        [rotation] = rotations_of(store, name)
        assert rotation.state == RotationState.COMPLETED.value, name
        journal = steps(store, rotation.id)
        for step in {s.name for s in journal}:
            succeeded = [s for s in journal if s.name == step and s.status == "succeeded"]
            assert len(succeeded) == 1, (name, step)
        # The reload ran once per journaled attempt: once, or twice when the kill
        # interrupted it (the interrupted attempt is closed failed and run again).
        attempts = [s for s in journal if s.name == "reloading:10:command"]
        assert (runs / name).read_text().count("run") == len(attempts) <= 2, name
