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
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from keyshift import logs
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.models import StepRow
from keyshift.store.store import Store

ACTIONS = 10
SLEEP_S = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="run against this PostgreSQL URL instead of SQLite")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    logs.configure("WARNING")
    sleep = shutil.which("sleep") or "/bin/sleep"
    results = []
    for run in range(args.runs):
        home = Path(tempfile.mkdtemp(prefix="keyshift-bench-"))
        env = {"KEYSHIFT_HOME": str(home)}
        if args.postgres:
            env["KEYSHIFT_DATABASE_URL"] = args.postgres
        store = Store.open(env)
        name = f"bench-{run}"
        estate = {
            "credentials": [
                {
                    "name": name,
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
            ]
        }
        apply_estate(store, parse_estate(estate), actor="bench")
        started = time.perf_counter()
        rotation_id, state = asyncio.run(
            rotations.rotate(store, name, actor="bench", grace=timedelta(0))
        )
        wall = time.perf_counter() - started
        assert state.value == "completed", state
        with store.transaction() as s:
            rows = s.query(StepRow).filter(StepRow.rotation_id == rotation_id).all()
            step_sum = sum(r.detail["duration_ms"] for r in rows if "duration_ms" in r.detail)
        step_sum_s = step_sum / 1000
        store.close()
        shutil.rmtree(home, ignore_errors=True)
        results.append((wall, step_sum_s))
        print(
            f"run {run + 1}: wall {wall * 1000:7.1f} ms  sum(step latency) "
            f"{step_sum_s * 1000:7.1f} ms  ratio {wall / step_sum_s:.3f}  "
            f"overhead {(wall - step_sum_s) * 1000:5.1f} ms"
        )
    wall, step_sum_s = sorted(results)[len(results) // 2]
    ratio = wall / step_sum_s
    budget = 1.05 * step_sum_s + 0.020
    print(
        f"overhead ratio = {ratio:.3f} (median run; wall {wall * 1000:.1f} ms, "
        f"sum {step_sum_s * 1000:.1f} ms)"
    )
    print(
        json.dumps(
            {
                "ratio": round(ratio, 4),
                "wall_ms": round(wall * 1000, 1),
                "sum_ms": round(step_sum_s * 1000, 1),
                "within_target": wall <= budget,
            }
        )
    )
    sys.exit(0 if wall <= budget else 1)


if __name__ == "__main__":
    main()
