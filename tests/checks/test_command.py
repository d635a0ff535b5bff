"""The residual-use command: its exit code and first output line decide; failures count as use."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from keyshift.checks.command import UsageCommand, command_usage
from keyshift.domain.secret import Secret
from keyshift.providers.base import IssuedVersion

VALUE = "S3CRET-residual-value-0123456789"
OLD = IssuedVersion("random:old", Secret(VALUE), {"username": "app_a"})


def _run(script: str, tmp: Path, limit: float = 10) -> tuple[int, dict[str, object]]:
    program = tmp / "check.py"
    program.write_text(script)
    report = asyncio.run(
        command_usage(
            UsageCommand([sys.executable, str(program)], timedelta(seconds=limit)),
            credential="api-key",
            version_id="v-old",
            fingerprint="hmac-sha256:abc",
            version=OLD,
            env={"PATH": "/usr/bin:/bin"},
        )
    )
    return report.sessions, dict(report.detail)


@pytest.mark.parametrize(
    ("script", "sessions", "said"),
    [
        ("print('nobody'); raise SystemExit(0)", 0, "nobody"),
        ("print('3 clients on api-7f9c'); raise SystemExit(1)", 3, "clients on api-7f9c"),
        ("print('still used by batch'); raise SystemExit(1)", 1, "still used by batch"),
        ("raise SystemExit(1)", 1, ""),
    ],
    ids=["exit 0 is unused", "exit 1 with a count", "exit 1 with text", "exit 1 silent"],
)
def test_exit_code_and_first_line_decide(
    script: str, sessions: int, said: str, tmp_path: Path
) -> None:
    got, detail = _run(script, tmp_path)
    assert got == sessions
    assert detail["said"] == said


def test_any_other_exit_counts_as_in_use(tmp_path: Path) -> None:
    sessions, detail = _run("import sys; sys.stderr.write('db down'); sys.exit(2)", tmp_path)
    assert sessions == 1
    assert "exit code 2" in str(detail["error"])


def test_a_hanging_command_is_killed_and_counts_as_in_use(tmp_path: Path) -> None:
    sessions, detail = _run("import time; time.sleep(30)", tmp_path, limit=0.5)
    assert sessions == 1
    assert "did not finish" in str(detail["error"])


def test_the_command_gets_identifiers_never_the_value(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "seen = ' '.join(f'{k}={v}' for k, v in sorted(os.environ.items()))\n"
        f"assert {VALUE!r} not in seen and {VALUE!r} not in ' '.join(sys.argv)\n"
        "print(os.environ['KEYSHIFT_VERSION_ID'], os.environ['KEYSHIFT_USERNAME'],"
        " os.environ['KEYSHIFT_PROVIDER_REF'])\n"
    )
    sessions, detail = _run(script, tmp_path)
    assert sessions == 0
    assert detail["said"] == "v-old app_a random:old"


def test_output_echoing_the_value_is_scrubbed(tmp_path: Path) -> None:
    # The value is not given to the program; a program that finds it elsewhere and
    # prints it still cannot put it into the evidence.
    sessions, detail = _run(f"print('1 {VALUE}'); raise SystemExit(1)", tmp_path)
    assert sessions == 1
    assert VALUE not in str(detail)
