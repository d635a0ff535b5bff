"""The CLI's promises: one line per error, never a traceback, exit codes with a meaning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from keyshift.cli import SERVER_COMMANDS, app
from keyshift.store.models import AuditEntry, EstateRevision
from keyshift.store.store import Store
from tests.conftest import Cli, run_subprocess
from tests.helpers import write_estate


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
