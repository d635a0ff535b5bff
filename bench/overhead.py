"""Engine overhead: one rotation with 10 `command` actions that each sleep 50 ms.

Prints `overhead ratio = wall / sum(step latency)`, where step latency is each
command's own run time as the command target measured it, and wall is the whole
rotation (request, journal, audit, encryption, every step). Target: wall <=
1.05 * sum + 20 ms. Run: `.venv/bin/python bench/overhead.py [--postgres DSN]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from datetime import timedelta

from scratch import scratch_store  # bench/scratch.py, beside this script

from keyshift import logs
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.models import StepRow
from keyshift.store.store import Store

ACTIONS = 10
SLEEP_S = 0.05


def _estate(names: list[str], sleep: str) -> dict[str, object]:
    return {
        "credentials": [
            {
                "name": name,
                "owner": "team-bench",
                "provider": {"type": "random"},
                "actions": [
                    {
                        "type": "command",
                        "order": i,
                        "on_failure": "abort",
                        "config": {"argv": [sleep, str(SLEEP_S)], "rollback": "none"},
                    }
                    for i in range(ACTIONS)
                ],
            }
            for name in names
        ]
    }


def _rotate(store: Store, name: str) -> tuple[float, float]:
    """(wall seconds, sum of the commands' own run times) of one rotation."""
    started = time.perf_counter()
    rotation_id, state = asyncio.run(
        rotations.rotate(store, name, actor="bench", grace=timedelta(0))
    )
    wall = time.perf_counter() - started
    if state.value != "completed":
        raise SystemExit(f"rotation {rotation_id} ended {state.value}")
    with store.transaction() as s:
        rows = s.query(StepRow).filter(StepRow.rotation_id == rotation_id).all()
        step_ms = sum(r.detail["duration_ms"] for r in rows if "duration_ms" in r.detail)
    return wall, step_ms / 1000


def _line(label: str, wall: float, step_sum: float) -> str:
    return (
        f"{label}: wall {wall * 1000:7.1f} ms  sum(step latency) {step_sum * 1000:7.1f} ms  "
        f"ratio {wall / step_sum:.3f}  overhead {(wall - step_sum) * 1000:5.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="run against this PostgreSQL URL instead of SQLite")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    logs.configure("WARNING")
    sleep = shutil.which("sleep") or "/bin/sleep"
    names = [f"bench-{i}" for i in range(args.runs + 1)]
    results = []
    with scratch_store(args.postgres) as store:
        apply_estate(store, parse_estate(_estate(names, sleep)), actor="bench")
        # The first rotation of a process also pays for compiling SQL statements and
        # importing plugins (what a one-off `keyshift rotate` pays); a worker pays it once.
        print(_line("cold (first rotation in this process)", *_rotate(store, names[0])))
        for i, name in enumerate(names[1:], start=1):
            wall, step_sum = _rotate(store, name)
            results.append((wall, step_sum))
            print(_line(f"run {i}", wall, step_sum))
    wall, step_sum = sorted(results, key=lambda r: r[0] - r[1])[len(results) // 2]
    ratio = wall / step_sum
    budget = 1.05 * step_sum + 0.020
    print(
        f"overhead ratio = {ratio:.3f} (median warm run; wall {wall * 1000:.1f} ms, "
        f"sum {step_sum * 1000:.1f} ms; target <= 1.05 x sum + 20 ms = {budget * 1000:.1f} ms)"
    )
    print(
        json.dumps(
            {
                "ratio": round(ratio, 4),
                "wall_ms": round(wall * 1000, 1),
                "sum_ms": round(step_sum * 1000, 1),
                "within_target": wall <= budget,
            }
        )
    )
    sys.exit(0 if wall <= budget else 1)


if __name__ == "__main__":
    main()
