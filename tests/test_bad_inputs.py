"""Every CLI verb that reads a file the operator names, given a missing, empty,
garbage, non-UTF-8, unreadable, oversized or alias-bomb file: one clear `error:` line
naming the file (or line), a non-zero exit, never "internal error" nor a traceback, and
nothing changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyshift.files import MAX_BYTES_ENV
from tests.conftest import Cli

VERBS = {
    "apply": ("apply", "-f"),
    "plan": ("plan", "-f"),
    "evidence verify": ("evidence", "verify"),
    "agent run": ("agent", "run", "--config"),
}

BOMB = "\n".join(
    ["a: &a ['x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x']"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(9)]
    + ["credentials: []"]
)
"""Ten levels of nine aliases: 9**10 strings if expanded."""


def _inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a word the error line must hold)."""
    files = {
        "missing": (tmp / "nope.yaml", "no such file"),
        "directory": (tmp, "directory"),
        "garbage": (tmp / "garbage.yaml", ""),
        "non-utf8": (tmp / "latin1.yaml", "offset 15 (line 2)"),
        "oversized": (tmp / "big.yaml", "limit"),
    }
    (tmp / "garbage.yaml").write_bytes(b"{[}: ::\n\t- ]\x00")
    (tmp / "latin1.yaml").write_bytes(b"credentials:\n  \xe9t\xe9: 1\n")
    (tmp / "big.yaml").write_text("# " + "x" * 4096 + "\ncredentials: []\n")
    if os.geteuid() != 0:  # root reads any file: the case cannot be made as root
        locked = tmp / "locked.yaml"
        locked.write_text("credentials: []\n")
        locked.chmod(0)
        files["unreadable"] = (locked, "cannot read")
    return files


@pytest.mark.parametrize("verb", list(VERBS))
def test_a_bad_input_file_gets_one_clear_error_line(cli: Cli, tmp_path: Path, verb: str) -> None:
    cli.env[MAX_BYTES_ENV] = "4000"
    for name, (path, word) in _inputs(tmp_path).items():
        result = cli(*VERBS[verb], str(path))
        assert result.exit_code in (1, 2), (name, result.output)
        assert "internal error" not in result.output, (name, result.output)
        assert "Traceback" not in result.output, (name, result.output)
        assert result.output.startswith("error:"), (name, result.output)
        assert word in result.output, (name, result.output)
    status = cli("status")
    assert "no credentials" in status.output.lower() or status.exit_code == 0


def test_an_alias_bomb_is_refused_before_it_expands(cli: Cli, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    for verb in ("apply", "plan"):
        result = cli(*VERBS[verb], str(bomb))
        assert result.exit_code == 2, result.output
        assert "YAML aliases expand to more than" in result.output


def test_the_input_limit_must_be_a_number(cli: Cli, tmp_path: Path) -> None:
    estate = tmp_path / "estate.yaml"
    estate.write_text("credentials: []\n")
    cli.env[MAX_BYTES_ENV] = "lots"
    result = cli("plan", "-f", str(estate))
    assert result.exit_code == 2
    assert f"{MAX_BYTES_ENV}: must be a number of bytes" in result.output
