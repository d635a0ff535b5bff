"""Fleet bench: how fast `keyshift worker` gets through a due fleet, and whether it keeps
every rotation exactly once and under the issuer's limit.

Three figures, each from `keyshift worker --once` run as an operator runs it (a separate
process) against a fresh store:

1. Entra at Graph's limit: `--credentials` credentials of which `--due` are due Entra
   client secrets, on the project's Graph double (tests/doubles/graph.py) answering every
   request after `--latency` seconds and writes beyond 20/s with 429 + Retry-After.
   Prints the writes/s achieved (goal >= 0.9 x 20), the share of writes throttled after
   the first second (goal <= 5 %), and the wall time against the ideal, writes / 20/s
   (goal <= 1.15 x ideal).
2. Concurrency: `--random` due `random` credentials whose reload is a 0.2 s command,
   at `--concurrency 1` and 16 (goal: >= 10x faster).
3. Workers: on PostgreSQL (a server this bench starts, as the tests do), the Entra fleet
   of 1. again with two workers, then the random fleet of 2. with one worker against two
   at concurrency 16 (goal: two >= 1.7x one worker's throughput).

Every figure checks exactly-once: each due credential has one rotation, completed. The
bench exits 1 when that fails, or when 429s pass 5 % of writes (a storm); speed ratios
are printed, not enforced. `--small` runs a few dozen credentials for correctness only
(CI runs it: tests/test_bench_fleet.py).

Run: `.venv/bin/python bench/fleet.py [--small] [--skip-postgres]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from tests.doubles.graph import GraphDouble  # noqa: E402
from tests.doubles.tls import make_pki  # noqa: E402
from tests.servers import postgres_server  # noqa: E402

from keyshift import logs  # noqa: E402
from keyshift.service.estate import apply_estate, parse_estate  # noqa: E402
from keyshift.store.models import CredentialRow, RotationRow  # noqa: E402
from keyshift.store.store import Store  # noqa: E402

GRAPH_LIMIT = 20.0
SECRET = "bench-keyshift-client-secret"  # noqa: S105 (the double's own)
SECRET_ENV = "KEYSHIFT_BENCH_GRAPH_SECRET"  # noqa: S105 (a variable name)


@dataclass
class Home:
    env: dict[str, str]
    root: Path


@contextmanager
def fresh_home(postgres: str | None = None) -> Iterator[Home]:
    root = Path(tempfile.mkdtemp(prefix="keyshift-fleet-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSHIFT_")}
    env["KEYSHIFT_HOME"] = str(root / "home")
    env["KEYSHIFT_LOG_LEVEL"] = "error"
    database = None
    if postgres:
        database = f"fleet_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        env["KEYSHIFT_DATABASE_URL"] = postgres.rsplit("/", 1)[0] + f"/{database}"
    try:
        yield Home(env, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if database is not None:
            with psycopg.connect(postgres or "", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def apply(home: Home, estate: dict[str, Any]) -> None:
    store = Store.open(home.env)
    try:
        apply_estate(store, parse_estate(estate), actor="bench")
    finally:
        store.close()


def workers(home: Home, count: int, concurrency: int) -> tuple[float, list[dict[str, Any]]]:
    """Run `count` `worker --once` processes at once; wall seconds and their summaries."""
    argv = [sys.executable, "-m", "keyshift.cli", "worker", "--once", "-o", "json"]
    argv += ["--concurrency", str(concurrency)]
    started = time.monotonic()
    procs = [
        subprocess.Popen(argv, env=home.env, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    outputs = [p.communicate(timeout=3600)[0] for p in procs]
    wall = time.monotonic() - started
    scans = []
    for proc, output in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"worker exited {proc.returncode}")
        scans += [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return wall, scans


def exactly_once(home: Home, due: list[str]) -> list[str]:
    """The due credentials that do not have exactly one rotation, completed."""
    store = Store.open(home.env)
    try:
        with store.transaction() as s:
            found = dict(
                s.execute(
                    select(CredentialRow.name, func.count(RotationRow.id))
                    .join(RotationRow, RotationRow.credential_id == CredentialRow.id)
                    .where(RotationRow.state == "completed")
                    .group_by(CredentialRow.name)
                ).all()
            )
            total = s.execute(select(func.count(RotationRow.id))).scalar_one()
    finally:
        store.close()
    wrong = [name for name in due if found.get(name) != 1]
    if total != len(due):
        wrong.append(f"({total} rotations for {len(due)} due credentials)")
    return wrong


def idle_credentials(count: int) -> list[dict[str, Any]]:
    """Credentials the worker scans but does not rotate (manual)."""
    return [
        {
            "name": f"idle-{i:05d}",
            "owner": "team-bench",
            "provider": {"type": "random"},
            "actions": [],
        }
        for i in range(count)
    ]


# --- 1. Entra at Graph's limit --------------------------------------------------------------


def entra_fleet(
    total: int,
    due: int,
    latency: float,
    concurrency: int,
    *,
    worker_count: int = 1,
    postgres: str | None = None,
) -> dict[str, Any]:
    tls_dir = Path(tempfile.mkdtemp(prefix="keyshift-fleet-tls-"))
    tls = make_pki(tls_dir)
    with GraphDouble(tls, client_secret=SECRET) as graph, fresh_home(postgres) as home:
        home.env[SECRET_ENV] = SECRET
        apps = [graph.add_application(f"bench-{i:05d}") for i in range(due)]
        integration = {
            "name": "contoso",
            "type": "entra",
            "tenant_id": graph.tenant_id,
            "client_id": graph.client_id,
            "auth": {"method": "client_secret", "secret_from": f"env:{SECRET_ENV}"},
            "authority": graph.authority,
            "graph_url": graph.graph_url,
            "ca_bundle": str(tls.ca_path),
            "sync_every": "1000d",
        }
        names = [f"entra-{i:05d}" for i in range(due)]
        credentials = [
            {
                "name": name,
                "owner": "team-bench",
                "auto_rotate": True,
                "policy": {"grace_period": "0s"},
                "provider": {
                    "type": "entra_client_secret",
                    "integration": "contoso",
                    "app_id": app.app_id,
                },
                "actions": [],
            }
            for name, app in zip(names, apps, strict=True)
        ]
        apply(
            home,
            {
                "integrations": [integration],
                "credentials": credentials + idle_credentials(total - due),
            },
        )
        graph.latency = latency
        graph.limit_writes(per_second=GRAPH_LIMIT, burst=int(GRAPH_LIMIT))
        wall, _scans = workers(home, worker_count, concurrency)
        wrong = exactly_once(home, names)
        times = graph.write_times
        first = times[0] if times else 0.0
        accepted = graph.accepted_writes
        span = (times[-1] - first) if len(times) > 1 else 0.0
        later = [t for t in times if t - first > 1.0]
        throttled_later = graph.throttled_writes  # nearly all come after the first second
        attempts_later = len(later) + throttled_later
    shutil.rmtree(tls_dir, ignore_errors=True)
    ideal = accepted / GRAPH_LIMIT
    return {
        "writes": accepted,
        "throttled": graph.throttled_writes,
        "writes_per_s": accepted / span if span else 0.0,
        "throttled_share_after_1s": throttled_later / attempts_later if attempts_later else 0.0,
        "wall_s": wall,
        "ideal_s": ideal,
        "wrong": wrong,
    }


# --- 2. and 3. concurrency and workers -----------------------------------------------------------


def random_fleet(count: int, idle: int) -> tuple[dict[str, Any], list[str]]:
    sleep = shutil.which("sleep") or "/bin/sleep"
    names = [f"rand-{i:04d}" for i in range(count)]
    reload_ = {"type": "command", "order": 10, "on_failure": "abort"}
    reload_["config"] = {"argv": [sleep, "0.2"]}
    credentials = [
        {
            "name": name,
            "owner": "team-bench",
            "auto_rotate": True,
            "policy": {"grace_period": "0s"},
            "provider": {"type": "random"},
            "actions": [reload_],
        }
        for name in names
    ]
    return {"credentials": credentials + idle_credentials(idle)}, names


def timed_random(
    count: int, concurrency: int, worker_count: int = 1, postgres: str | None = None
) -> tuple[float, list[str]]:
    estate, names = random_fleet(count, 0)
    with fresh_home(postgres) as home:
        apply(home, estate)
        wall, _scans = workers(home, worker_count, concurrency)
        return wall, exactly_once(home, names)


def entra_lines(label: str, entra: dict[str, Any]) -> list[str]:
    """Print an Entra fleet's three figures against their goals; its failures."""
    print(f"  {label}")
    line(
        "writes/s achieved / 0.9 x limit",
        f"{entra['writes_per_s']:.1f}/s of {entra['writes']}",
        entra["writes_per_s"] / (0.9 * GRAPH_LIMIT),
        ">= 1",
    )
    line(
        "429s after the first second / 5 %",
        f"{entra['throttled']} ({entra['throttled_share_after_1s']:.1%})",
        entra["throttled_share_after_1s"] / 0.05,
        "<= 1",
    )
    line(
        "wall / (1.15 x ideal writes / 20/s)",
        f"{entra['wall_s']:.1f} s, ideal {entra['ideal_s']:.1f} s",
        entra["wall_s"] / (1.15 * entra["ideal_s"]) if entra["ideal_s"] else None,
        "<= 1",
    )
    failures = []
    if entra["wrong"]:
        failures.append(f"Entra ({label}): not exactly once: {entra['wrong'][:5]}")
    if entra["throttled_share_after_1s"] > 0.05:
        failures.append(f"Entra ({label}): a 429 storm (over 5 % of writes throttled)")
    return failures


def line(label: str, value: str, ratio: float | None = None, goal: str = "") -> None:
    shown = f"{ratio:6.2f}" if ratio is not None else "     -"
    print(f"{label:<44} {value:>22}   ratio {shown}   {goal}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a few dozen, correctness only")
    parser.add_argument("--credentials", type=int, default=10_000)
    parser.add_argument("--due", type=int, default=1_000)
    parser.add_argument("--latency", type=float, default=0.15)
    parser.add_argument("--concurrency", type=int, default=48)
    parser.add_argument("--random", type=int, default=200)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    if args.small:
        args.credentials, args.due, args.random = 60, 20, 12
    logs.configure(level="error")
    failures: list[str] = []

    print(
        f"Entra: {args.due} due of {args.credentials}, Graph double {args.latency * 1000:.0f} ms "
        f"per call, {GRAPH_LIMIT:.0f} writes/s, worker --concurrency {args.concurrency}"
    )
    entra = entra_fleet(args.credentials, args.due, args.latency, args.concurrency)
    failures += entra_lines("one worker, SQLite", entra)
    print(f"\nrandom: {args.random} due, each reload a 0.2 s command")
    one, wrong_one = timed_random(args.random, 1)
    many, wrong_many = timed_random(args.random, 16)
    line("concurrency 16 speed-up / 10", f"{one:.1f} s -> {many:.1f} s", one / many / 10, ">= 1")
    failures += [f"random: not exactly once: {w[:5]}" for w in (wrong_one, wrong_many) if w]

    if not args.skip_postgres:
        with postgres_server() as dsn:
            print("\nEntra on PostgreSQL, two workers (each at the concurrency above)")
            entra = entra_fleet(
                args.credentials,
                args.due,
                args.latency,
                args.concurrency,
                worker_count=2,
                postgres=dsn,
            )
            failures += entra_lines("two workers, PostgreSQL", entra)
            print()
            single, wrong_single = timed_random(args.random, 16, 1, dsn)
            double, wrong_double = timed_random(args.random, 16, 2, dsn)
        line(
            "PostgreSQL: 2 workers' throughput / 1.7 x one",
            f"{single:.1f} s -> {double:.1f} s",
            single / double / 1.7,
            ">= 1",
        )
        failures += [
            f"PostgreSQL: not exactly once: {w[:5]}" for w in (wrong_single, wrong_double) if w
        ]

    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
