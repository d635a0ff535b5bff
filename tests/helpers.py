"""Small builders shared by the tests: estate files and reads of the store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.store.models import AuditEntry, CredentialRow, RotationRow, StepRow, VersionRow
from keyshift.store.store import Store
from tests.conftest import run_subprocess

RELOAD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    with open(sys.argv[1], "a") as log:
        log.write(os.environ["KEYSHIFT_PHASE"] + " " + os.environ["KEYSHIFT_VERSION_ID"] + "\\n")
    """
)


SMOKE_CHECK: dict[str, Any] = {
    "type": "command_check",
    "order": 90,
    "on_failure": "abort",
    "config": {"argv": [sys.executable, "-c", "pass"]},
}
"""A post-cutover check that passes: what a `prod` credential needs (`require_checks`)."""


def write_estate(
    tmp: Path,
    *,
    name: str = "api-key",
    actions: list[dict[str, Any]] | None = None,
    policy: dict[str, Any] | None = None,
    provider: dict[str, Any] | None = None,
    checked: bool = False,
) -> Path:
    """An estate with one credential (`random` unless `provider` says otherwise) delivered
    to a JSON and an env file, then a reload command that logs each run, and with
    `checked` then `SMOKE_CHECK` (for tests that put it in `prod`). Returns the estate
    path."""
    reload_log = tmp / "reload.log"
    script = tmp / "reload.py"
    script.write_text(RELOAD_SCRIPT, encoding="utf-8")
    if actions is None:
        actions = [
            {
                "type": "file",
                "order": 10,
                "on_failure": "abort",
                "agent_id": None,
                "config": {"path": str(tmp / "app.json"), "key": "Api:Key", "file_format": "json"},
            },
            {
                "type": "file",
                "order": 20,
                "on_failure": "abort",
                "config": {"path": str(tmp / "app.env"), "key": "API_KEY", "file_format": "env"},
            },
            {
                "type": "command",
                "order": 30,
                "on_failure": "abort",
                "config": {"argv": [sys.executable, str(script), str(reload_log)]},
            },
        ]
    if checked:
        actions = [*actions, SMOKE_CHECK]
    estate = {
        "credentials": [
            {
                "name": name,
                "owner": "team-test",
                "policy": policy or {"grace_period": "1h", "max_lifetime": "90d"},
                "provider": provider or {"type": "random", "length": 32},
                "actions": actions,
            }
        ]
    }
    return save_estate(tmp, estate)


ENTRA_CREDENTIAL = "payments-entra"


def entra_estate(
    tmp: Path,
    integration: dict[str, Any],
    app_id: str,
    *,
    policy: dict[str, Any] | None = None,
    provider: dict[str, Any] | None = None,
    actions: list[dict[str, Any]] | None = None,
) -> Path:
    """An estate with one `entra_client_secret` credential (`payments-entra`) of `app_id`
    through the integration `contoso` (`integration`: the Graph double's settings), its
    secret delivered to `appsettings.json` at `Entra:ClientSecret`, then `actions`."""
    delivered = {
        "type": "file",
        "order": 10,
        "on_failure": "abort",
        "config": {
            "path": str(tmp / "appsettings.json"),
            "key": "Entra:ClientSecret",
            "file_format": "json",
        },
    }
    estate = {
        "integrations": [{"name": "contoso", "type": "entra", **integration}],
        "credentials": [
            {
                "name": ENTRA_CREDENTIAL,
                "owner": "team-payments",
                "policy": policy or {"grace_period": "1h"},
                "provider": {
                    "type": "entra_client_secret",
                    "integration": "contoso",
                    "app_id": app_id,
                    **(provider or {}),
                },
                "actions": [delivered, *(actions or [])],
            }
        ],
    }
    return save_estate(tmp, estate)


def save_estate(tmp: Path, estate: dict[str, Any]) -> Path:
    """Write an estate as `tmp/estate.yaml`. JSON is valid YAML; it keeps tests free of YAML
    quoting questions."""
    path = tmp / "estate.yaml"
    path.write_text(json.dumps(estate, indent=2), encoding="utf-8")
    return path


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the rich table in `output`, one list of cell texts per row; a cell
    wrapped over several lines is joined with spaces. The header row is left out."""
    rows: list[list[str]] = []
    for line in output.splitlines():
        if not line.startswith("│"):
            if line.startswith(("┡", "├")) and rows:
                rows.clear()  # what came before the header rule was the header
            continue
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if rows and not cells[0]:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def audit_details(store: Store, action: str) -> list[dict[str, Any]]:
    """The details of every audit entry of `action`, oldest first."""
    with store.transaction() as s:
        found = s.execute(
            select(AuditEntry.details).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        ).scalars()
        return [json.loads(d) for d in found]


def json_value(path: Path, dotted: str = "Api:Key") -> str | None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for part in dotted.split(":"):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data if isinstance(data, str) else None


def env_value(path: Path, key: str = "API_KEY") -> str | None:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip('"')
    return None


def versions(store: Store, credential: str) -> list[VersionRow]:
    with store.transaction() as s:
        cred = s.execute(select(CredentialRow).where(CredentialRow.name == credential)).scalar_one()
        return list(
            s.execute(
                select(VersionRow)
                .where(VersionRow.credential_id == cred.id)
                .order_by(VersionRow.serial)
            ).scalars()
        )


def rotations_of(store: Store, credential: str) -> list[RotationRow]:
    with store.transaction() as s:
        cred = s.execute(select(CredentialRow).where(CredentialRow.name == credential)).scalar_one()
        return list(
            s.execute(
                select(RotationRow)
                .where(RotationRow.credential_id == cred.id)
                .order_by(RotationRow.requested_at)
            ).scalars()
        )


def steps(store: Store, rotation_id: str) -> list[StepRow]:
    with store.transaction() as s:
        return list(
            s.execute(
                select(StepRow).where(StepRow.rotation_id == rotation_id).order_by(StepRow.seq)
            ).scalars()
        )


def value_of(store: Store, version: VersionRow) -> str:
    return store.reveal(version).reveal()


def rotate_under_load(
    consumer_argv: list[str], stop: Path, out: Path, credential: str, env: dict[str, str]
) -> tuple[dict[str, Any], float]:
    """Run a consumer process (which writes its counts to `out` once `stop` exists) through
    a whole rotation with a 2 s grace: rotate, wait out the grace, resume. Returns the
    consumer's counts and the rotation's wall time, grace included."""
    consumer = subprocess.Popen(consumer_argv)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        rotated = run_subprocess(["rotate", credential, "--grace", "2s"], env)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        time.sleep(2.2)
        resumed = run_subprocess(["resume"], env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        duration = time.monotonic() - started
        time.sleep(0.5)
    finally:
        stop.touch()
        consumer.wait(timeout=30)
    result: dict[str, Any] = json.loads(out.read_text())
    print(
        f"\n{credential} consumer: {result['ok']} connections, {result['failures']} failures, "
        f"pooled failures {result['pooled_failures']}; rotation incl. grace {duration:.1f}s"
    )
    return result, duration


def killed_at_then_resumed(
    store: Store, credential: str, ks_env: dict[str, str], boundary: str, *, tries: int = 20
) -> RotationRow:
    """`rotate credential` with the worker killed just after the step `boundary`
    (`keyshift.engine.faults`); when the rotation rests before it (in a wait, in grace),
    the worker that goes on from there is the one killed. Then `resume` until the rotation
    completes. Asserts the kill and that `boundary` alone was interrupted, once; returns
    the completed rotation."""
    env = {**ks_env, CRASH_AT: boundary}
    crashed = run_subprocess(["rotate", credential], env)
    for _ in range(tries):
        if crashed.returncode != 0:
            break
        time.sleep(0.6)
        crashed = run_subprocess(["resume"], env)
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    for _ in range(tries):
        resumed = run_subprocess(["resume"], ks_env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        if rotations_of(store, credential)[-1].state == "completed":
            break
        time.sleep(0.6)
    rotation = rotations_of(store, credential)[-1]
    assert rotation.state == "completed"
    interrupted = [
        (s.name, s.attempt)
        for s in steps(store, rotation.id)
        if (s.error or "").startswith("interrupted")
    ]
    assert interrupted == [(boundary, 1)]
    return rotation


def assert_killed_rotation_completes_once(
    cli: Any,
    store: Store,
    ks_env: dict[str, str],
    estate: Path,
    credential: str,
    boundary: str,
    journal: list[str],
) -> VersionRow:
    """Apply `estate`, rotate `credential` once, then rotate it again with the worker
    killed after `boundary` and resumed (`killed_at_then_resumed`): the first version is
    revoked, the second is current, and the succeeded steps are `journal`, each once.
    Returns the new version."""
    assert cli("apply", "-f", str(estate)).exit_code == 0
    assert cli("rotate", credential).exit_code == 0
    [first] = versions(store, credential)
    rotation = killed_at_then_resumed(store, credential, ks_env, boundary)
    old, new = versions(store, credential)
    assert old.id == first.id
    assert (old.status, new.status) == ("revoked", "current")
    succeeded = [s.name for s in steps(store, rotation.id) if s.status == "succeeded"]
    assert succeeded == journal, "every step succeeded exactly once"
    return new
