"""The fleet bench's small run, for correctness only (its speed figures are printed, not
checked here): every due credential rotated exactly once, by one or two workers, and no
429 storm at Graph's limit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fleet.py"


@pytest.mark.slow
def test_the_small_fleet_bench_rotates_each_due_credential_exactly_once() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH), "--small"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAILED" not in run.stdout
    for figure in ("writes/s achieved", "concurrency 16 speed-up", "PostgreSQL: 2 workers"):
        assert figure in run.stdout
