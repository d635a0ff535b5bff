"""Estate `plan` and `apply` at scale: `keyshift apply -f` of an estate of 10,000
credentials into a new home, then `keyshift plan` and a second `keyshift apply` of the
same file (nothing to change), each as the CLI process a platform engineer runs.

The estate is `bench/dashboard.py`'s (every provider type, three policies, three
actions per credential), written as YAML. Each figure is the wall time of one process
(the median of `--runs`), and the second apply prints as a ratio to the fleet's goal:

    second apply (no change), 10,000 credentials    <= 5 s

Run: `.venv/bin/python bench/apply.py [--credentials N] [--runs N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from dashboard import estate  # bench/dashboard.py, beside this script

KEYSHIFT = [sys.executable, "-m", "keyshift.cli"]
GOAL_S = 5.0
"""A second `apply` of 10,000 credentials that changes nothing (issue 19)."""


def _run(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([*KEYSHIFT, *args], check=False, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"keyshift {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--credentials", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="keyshift-bench-apply-"))
    try:
        path = work / "estate.yaml"
        path.write_text(yaml.safe_dump(estate(args.credentials), sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSHIFT_")}
        env |= {"KEYSHIFT_HOME": str(work / "home"), "KEYSHIFT_ACTOR": "bench"}
        first = _run(["apply", "-f", str(path)], env)
        print(f"first apply ({args.credentials} credentials): {first:6.2f} s")
        timings = {}
        for label, verb in (("plan (no change)", "plan"), ("second apply (no change)", "apply")):
            runs = [_run([verb, "-f", str(path)], env) for _ in range(args.runs)]
            timings[label] = statistics.median(runs)
            print(
                f"{label}: median {timings[label]:6.2f} s over {args.runs} runs"
                f" (min {min(runs):.2f}, max {max(runs):.2f})"
            )
        ratio = timings["second apply (no change)"] / GOAL_S
        print(f"second apply: ratio to the {GOAL_S:.0f} s goal {ratio:.2f}")
        print(
            json.dumps(
                {
                    "credentials": args.credentials,
                    "first_apply_s": round(first, 2),
                    "median_s": {k: round(v, 2) for k, v in timings.items()},
                    "ratio": round(ratio, 3),
                    "load": round(os.getloadavg()[0], 2),
                }
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
