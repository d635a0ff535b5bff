"""The CLI's promises: one line per error, never a traceback, exit codes with a meaning."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from keyshift.cli import SERVER_COMMANDS, app
from keyshift.cli.output import plain
from keyshift.domain.secret import Secret
from keyshift.service import approvals as approvals_service
from keyshift.store.models import AuditEntry, EstateRevision
from keyshift.store.store import Store
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli, run_subprocess
from tests.doubles.graph import GraphDouble
from tests.engine.test_governance import TWO_OF_THREE
from tests.engine.test_governance import _estate as governed_estate
from tests.helpers import rotations_of, save_estate, table_rows, write_estate


def _count(store: Store, model: type) -> int:
    with store.transaction() as s:
        return s.query(model).count()


def test_unknown_credential_is_one_line_and_exit_1(cli: Cli) -> None:
    result = cli("rotate", "nope")
    assert result.exit_code == 1
    assert result.output.strip() == "error: no credential named nope in the estate"


def test_unknown_rotation_id_is_one_line_and_exit_1(cli: Cli) -> None:
    result = cli("show", "0000")
    assert result.exit_code == 1
    assert result.output.strip() == "error: no rotation 0000"


def test_bad_grace_option_is_exit_2_naming_the_option(cli: Cli, tmp_path: Path) -> None:
    cli("apply", "-f", str(write_estate(tmp_path)))
    result = cli("rotate", "api-key", "--grace", "soon")
    assert result.exit_code == 2
    assert result.output.startswith("error: --grace: ")


def test_empty_estate_file_is_refused_instead_of_removing_everything(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    cli("apply", "-f", str(write_estate(tmp_path)))
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    result = cli("apply", "-f", str(empty))
    assert result.exit_code == 2
    assert "is empty" in result.output
    assert "api-key" in cli("status").output


def test_status_table_dates_the_last_and_the_next_rotation(cli: Cli, tmp_path: Path) -> None:
    estate = write_estate(tmp_path, policy={"grace_period": "0s", "max_lifetime": "40d"})
    estate.write_text(estate.read_text().replace('"owner"', '"auto_rotate": true, "owner"'))
    assert cli("apply", "-f", str(estate)).exit_code == 0
    [before] = table_rows(cli("status").output)
    assert cli("rotate", "api-key").exit_code == 0
    [after] = table_rows(cli("status").output)
    header = cli("status").output
    assert "last rotated" in header
    assert "next rotation" in header
    today = datetime.now(UTC).date()
    # expires, last rotated, last rotation, next rotation: dates, the outcome, `due`.
    assert before[5:9] == ["-", "-", "-", "due"]
    assert after[5:9] == [
        f"{(today + timedelta(days=40)).isoformat()} (39d)",
        today.isoformat(),
        "completed",
        (today + timedelta(days=10)).isoformat(),
    ]


def test_applying_an_unchanged_estate_writes_nothing(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    estate = str(write_estate(tmp_path))
    assert cli("apply", "-f", estate).exit_code == 0
    revisions, entries = _count(store, EstateRevision), _count(store, AuditEntry)
    again = cli("apply", "-f", estate)
    assert again.exit_code == 0
    assert "No changes" in again.output
    assert (_count(store, EstateRevision), _count(store, AuditEntry)) == (revisions, entries)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_unreachable_database_is_one_line_without_traceback(
    ks_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**ks_env, "KEYSHIFT_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    result = run_subprocess(["status"], env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot migrate the store")
    assert "Traceback" not in result.stderr + result.stdout


def test_a_rotation_that_rolls_back_exits_1_and_says_why(cli: Cli, tmp_path: Path) -> None:
    fail = tmp_path / "fail.py"
    fail.write_text("import sys; sys.exit(5)\n")
    estate = write_estate(tmp_path)
    estate.write_text(estate.read_text().replace(str(tmp_path / "reload.py"), str(fail)))
    cli("apply", "-f", str(estate))
    result = cli("rotate", "api-key")
    assert result.exit_code == 1
    assert "rolled_back" in result.output
    assert "reloading:30:command" in result.output


def _leaf_commands() -> dict[str, Any]:
    """Every command the CLI has, by its full name ("audit verify")."""
    found: dict[str, Any] = {}

    def walk(prefix: str, command: Any) -> None:
        if getattr(command, "commands", None):
            if prefix and any(p.name == "server" for p in command.params):
                found[prefix] = command  # a group that lists things itself (`approvals`)
            for name, sub in command.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            found[prefix] = command

    walk("", typer.main.get_command(app))
    return found


def test_server_commands_are_exactly_the_commands_with_a_server_option() -> None:
    """The refusal under KEYSHIFT_SERVER lists them, so the list must be the real one."""
    commands = _leaf_commands()
    with_server = {n for n, c in commands.items() if any(p.name == "server" for p in c.params)}
    assert set(SERVER_COMMANDS) == with_server
    assert list(SERVER_COMMANDS) == sorted(SERVER_COMMANDS)
    # Every other command refuses while KEYSHIFT_SERVER is set (tests/test_client.py),
    # except `reference` and `agent run` (the host agent), which read no store.
    embedded_only = {
        "worker",
        "keys rotate-master",
        "init",
        "demo",
        "serve",
        "reference",
        "agent run",
    }
    assert set(commands) - with_server == embedded_only


# --- -o/--output table|json|yaml ----------------------------------------------------------

LISTINGS: dict[str, tuple[tuple[str, ...], set[str]]] = {
    # command: (arguments, fields every item carries; the first of a list, or the object)
    "status": (
        ("status",),
        {"credential", "lifecycle", "version_id", "fingerprint", "expires_at"}
        | {"last_rotated_at", "last_rotation_id", "next_rotation_at", "next_rotation"}
        | {"environment", "provider"},
    ),
    "history": (("history", "api-key"), {"id", "state", "requested_at", "new_version_id"}),
    "show": (("show", "{rotation}"), {"id", "credential", "state", "plan_hash", "steps"}),
    "alerts": (("alerts",), {"raised_at", "kind", "threshold", "subject", "detail", "delivered"}),
    "entra list": (("entra", "list"), {"app_name", "app_id", "key_id", "end", "state"}),
    "entra summary": (("entra", "summary"), {"apps", "client_secrets", "within", "urgent"}),
    "approvals": (("approvals",), {"id", "rotation_id", "credential", "needed", "approvers"}),
    "approvals show": (("approvals", "show", "{request}"), {"id", "kind", "summary"}),
    "impact": (("impact", "api-key"), {"position", "phase", "type", "on_failure", "where"}),
    "foreign": (("foreign",), {"found", "checked", "unchecked"}),
    "users list": (("users", "list"), {"name", "kind", "roles", "created_at"}),
    "tokens list": (("tokens", "list"), {"id", "prefix", "principal", "state", "expires_at"}),
    "roles list": (("roles", "list"), {"role", "description", "permissions"}),
    "preflight": (("preflight", "api-key"), {"credential", "plan_hash", "ready", "steps"}),
    "notifications": (
        ("notifications",),
        {"event_id", "kind", "credential", "rotation_id", "dedup_key", "channel", "status"},
    ),
}


@pytest.fixture
def listed(
    cli: Cli, ks_env: dict[str, str], graph: GraphDouble, store: Store, tmp_path: Path
) -> dict[str, str]:
    """An estate with something for every listing: a rotation of api-key, a second one
    waiting for two approvals, an Entra app with secrets due in 5 and 60 days (synced, an
    alert raised), an admin with a token. Returns the ids to fill the arguments in."""
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    now = datetime.now(UTC).replace(microsecond=0)
    app_ = graph.add_application("payments-api")
    for days in (5, 60):
        graph.seed_password(
            app_, f"due-{days}d", start=now - timedelta(days=1), end=now + timedelta(days=days)
        )

    def governed_with_entra() -> Path:
        governed = json.loads(governed_estate(tmp_path, policy=TWO_OF_THREE).read_text())
        integration = {"name": "contoso", "type": "entra", **graph.integration(ADMIN_ENV)}
        return save_estate(tmp_path, {**governed, "integrations": [integration]})

    steps = (  # each estate file is written just before it is applied
        lambda: ("apply", "-f", str(write_estate(tmp_path))),
        lambda: ("rotate", "api-key", "--grace", "0s"),
        lambda: ("apply", "-f", str(governed_with_entra())),
        lambda: ("worker", "--once"),  # syncs the Entra app and raises its expiry alert
        lambda: ("init", "--name", "admin"),
    )
    for step in steps:
        args = step()
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
    assert cli("rotate", "api-key").exit_code == 0  # waits for approval
    return {
        "rotation": rotations_of(store, "api-key")[0].id,
        "request": approvals_service.requests(store)[0].id,
    }


def _first(document: Any) -> Any:
    """The first item of a listing, or the object a command prints."""
    if isinstance(document, list):
        assert document, "the listing is empty: the test estate lacks what it lists"
        return document[0]
    return document


def test_every_listing_prints_its_data_as_json_and_yaml_with_its_fields(
    cli: Cli, listed: dict[str, str]
) -> None:
    for command, (template, fields) in LISTINGS.items():
        args = tuple(a.format(**listed) for a in template)
        table = cli(*args)
        as_json = cli(*args, "-o", "json")
        as_yaml = cli(*args, "--output", "yaml")

        assert as_json.exit_code == as_yaml.exit_code == table.exit_code, command
        document = json.loads(as_json.stdout)
        assert yaml.safe_load(as_yaml.stdout) == document, command
        assert fields <= set(_first(document)), (command, sorted(_first(document)))
        assert all(
            line.startswith(("[", "{", " ", "]", "}")) for line in as_json.stdout.splitlines()
        )

    rows = json.loads(cli("status", "-o", "json").stdout)
    assert rows[0]["credential"] == "api-key"
    assert rows[0]["expires_at"].endswith("Z")
    assert rows[0]["lifecycle"] in {"Active", "Rotating", "Expiring Soon"}
    assert rows[0]["last_rotated_at"].endswith("Z")
    assert rows[0]["next_rotation"] in {"manual", "rotating"}
    assert rows[0]["provider"] == "random"
    shown = json.loads(cli("show", listed["rotation"], "-o", "json").stdout)
    assert shown["state"] == "completed"
    assert all(isinstance(s["duration_seconds"], float) for s in shown["steps"])
    assert datetime.fromisoformat(shown["requested_at"]).tzinfo is not None
    summary = json.loads(cli("entra", "summary", "-o", "json").stdout)
    assert (summary["apps"], summary["client_secrets"], summary["within"]["7"]) == (1, 2, 1)
    alert = _first(json.loads(cli("alerts", "-o", "json").stdout))
    assert alert["kind"] == "expiry"
    assert json.loads(cli("approvals", "-o", "json").stdout)[0]["id"] == listed["request"]
    tokens = json.loads(cli("tokens", "list", "-o", "json").stdout)
    assert [t["principal"] for t in tokens] == ["admin"]


def test_impact_json_is_an_alias_of_output_json(cli: Cli, listed: dict[str, str]) -> None:
    alias = cli("impact", "api-key", "--json")
    assert alias.exit_code == 0
    assert alias.stdout == cli("impact", "api-key", "-o", "json").stdout
    assert json.loads(alias.stdout)[0]["type"] == "random"


@pytest.mark.parametrize("command", list(LISTINGS))
def test_an_unknown_output_format_is_exit_2_naming_the_option(cli: Cli, command: str) -> None:
    args = tuple(a.format(rotation="0000", request="0000") for a in LISTINGS[command][0])
    result = cli(*args, "-o", "bogus")
    words = " ".join(result.output.replace("│", " ").split())  # the error box wraps lines
    assert result.exit_code == 2
    assert "Invalid value for '-o' / '--output'" in words
    assert "'bogus' is not one of 'table', 'json', 'yaml'" in words


def test_the_table_stays_the_default_output(cli: Cli, listed: dict[str, str]) -> None:
    for command, (template, _fields) in LISTINGS.items():
        args = tuple(a.format(**listed) for a in template)
        default = cli(*args)
        assert default.output == cli(*args, "-o", "table").output, command
        assert default.output.lstrip()[:1] not in ("[", "{"), (command, default.output)
    assert table_rows(cli("users", "list").output)[0][:3] == ["admin", "user", "admin"]


def test_plain_output_refuses_a_secret_value() -> None:
    with pytest.raises(TypeError, match="never part of the CLI's output"):
        plain({"token": Secret("do-not-print-me")})
