"""Audit trail memory: exporting and verifying a trail 10x longer must not need 10x memory.

Writes a trail of N entries and one of 10 x N, then measures the peak Python memory
(tracemalloc) of `keyshift audit export` (every entry read and serialised as JSON Lines,
then dropped, as a SIEM reader consumes them) and of `keyshift audit verify` over each.
Prints `memory ratio = peak(10 x N) / peak(N)` per operation. Target: <= 1.5 (flat: the
trail is read a page at a time, never held whole). Run:
`.venv/bin/python bench/audit_memory.py [--entries N] [--postgres DSN]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from collections.abc import Callable

from scratch import scratch_store  # bench/scratch.py, beside this script

from keyshift import logs
from keyshift.store import audit
from keyshift.store.store import Store

TARGET = 1.5
BATCH = 1000


def _fill(store: Store, entries: int) -> None:
    """Append `entries` audit entries shaped like a rotation step's."""
    for start in range(0, entries, BATCH):
        with store.transaction() as s:
            for i in range(start, min(entries, start + BATCH)):
                store.audit(
                    s,
                    actor="bench",
                    action="rotation.step",
                    subject=f"rotation:bench-{i // 20}",
                    details={"step": f"publishing:{i % 20}:file", "attempt": 1, "detail": {}},
                )


def _export(store: Store) -> None:
    for entry in store.audit_entries():
        json.dumps(entry, sort_keys=True)


def _verify(store: Store) -> None:
    with store.transaction() as s:
        audit.verify(s)


def _peak(run: Callable[[Store], None], store: Store) -> tuple[float, float]:
    """(peak MiB above the baseline, seconds) of one run."""
    tracemalloc.start()
    baseline, _ = tracemalloc.get_traced_memory()
    started = time.perf_counter()
    run(store)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (peak - baseline) / 2**20, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=2000, help="N, the shorter trail")
    parser.add_argument("--postgres", help="run against this PostgreSQL URL (an empty database)")
    args = parser.parse_args()
    logs.configure("WARNING")
    results: dict[str, list[float]] = {"export": [], "verify": []}
    for size in (args.entries, args.entries * 10):
        with scratch_store(args.postgres) as store:
            _fill(store, size)
            for name, run in (("export", _export), ("verify", _verify)):
                run(store)  # warm: compiled statements are not the trail's cost
                mib, seconds = _peak(run, store)
                results[name].append(mib)
                print(f"{name:6} {size:>7} entries: peak {mib:7.2f} MiB in {seconds:6.2f} s")
    ratios = {name: peaks[1] / peaks[0] for name, peaks in results.items()}
    for name, ratio in ratios.items():
        print(f"memory ratio ({name}) = {ratio:.2f} for 10x the entries (target <= {TARGET})")
    within = all(r <= TARGET for r in ratios.values())
    print(json.dumps({"ratios": {k: round(v, 3) for k, v in ratios.items()}, "within": within}))
    sys.exit(0 if within else 1)


if __name__ == "__main__":
    main()
