"""Every CLI verb, given garbage where it expects input (each required argument and
option filled with junk, an unknown id, a path that does not exist, a bad output
format): a clear `error:` line or usage message and a non-zero exit, never "internal
error" nor a traceback. Runs against an empty store, so nothing can succeed by chance."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer.main

from keyshift.cli import app
from tests.conftest import Cli

LONG_RUNNING = {("serve",), ("worker",), ("demo",), ("agent", "run")}
"""Verbs that run until stopped (or build a demo estate): their inputs are checked in
their own tests (tests/test_bad_inputs.py reads agent.yaml)."""

JUNK = ("no-such-thing", "../../etc/passwd", "ks_0123456789abcdef_" + "A" * 43, "\u00e9\u2603")


def _leaves(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _leaves(sub, (*prefix, name))
    else:
        yield prefix, command


VERBS = [
    (path, command)
    for path, command in _leaves(typer.main.get_command(app))
    if path not in LONG_RUNNING
]


def _argv(path: tuple[str, ...], command: Any, junk: str) -> list[str]:
    argv = list(path)
    for param in command.params:
        is_argument = param.param_type_name == "argument"
        if not (param.required or is_argument):
            continue
        if is_argument:
            argv.append(junk)
        elif not param.is_flag:
            argv += [param.opts[0], junk]
    return argv


@pytest.mark.parametrize(("path", "command"), VERBS, ids=[" ".join(p) for p, _ in VERBS])
def test_no_verb_answers_junk_with_an_internal_error(
    cli: Cli, path: tuple[str, ...], command: Any
) -> None:
    assert len(VERBS) > 30  # the walk found the verbs
    runs = [_argv(path, command, junk) for junk in JUNK]
    if any(p.name == "output" for p in command.params):
        runs.append([*path, "--output", "nonsense"])
    for argv in runs:
        result = cli(*argv)
        text = result.output
        assert "internal error" not in text, (argv, text)
        assert "Traceback" not in text, (argv, text)
        if result.exit_code != 0:
            assert text.strip(), (argv, "a refusal says why")
