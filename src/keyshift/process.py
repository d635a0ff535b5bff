"""Running a program for keyshift: argv without a shell, its own process group, a time
limit, and outputs scrubbed of the values it was given."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from keyshift.domain.durations import format_duration
from keyshift.errors import PermanentError, TransientError, scrub

INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The only variables a program inherits from keyshift's environment, which may hold
keyshift's own keys."""

OUTPUT_LIMIT = 500
"""Characters of stdout (head) and stderr (tail) kept for step records."""


def inherited_env(source: Mapping[str, str]) -> dict[str, str]:
    """The part of `source` a program may see: `INHERITED_ENV` only."""
    return {name: source[name] for name in INHERITED_ENV if name in source}


@dataclass(frozen=True)
class ProgramRun:
    """How a program ended. Outputs are scrubbed of the values it was given."""

    exit_code: int
    stdout_head: str
    stderr_tail: str
    duration_ms: int

    @property
    def how(self) -> str:
        return f"signal {-self.exit_code}" if self.exit_code < 0 else f"exit code {self.exit_code}"


async def run_program(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    limit: timedelta,
    stdin_data: bytes | None = None,
    secrets: list[str] | None = None,
) -> ProgramRun:
    """Run argv without a shell in its own process group; kill the group after `limit`.

    Raises PermanentError when it cannot start and TransientError on timeout; any exit
    code is returned for the caller to judge.
    """
    argv0 = argv[0]
    started = time.monotonic()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin_data is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
            # Its own process group, so a timeout kills the children it started too.
            start_new_session=True,
        )
    except OSError as exc:
        raise PermanentError(f"cannot start {argv0}: {exc.strerror or type(exc).__name__}") from exc
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(stdin_data), limit.total_seconds()
        )
    except TimeoutError:
        await _kill(process)
        raise TransientError(
            f"{argv0} did not finish within {format_duration(limit)} "
            "and was killed with its process group"
        ) from None
    except BaseException:
        # Cancelled by the engine: do not leave the program running unsupervised.
        await _kill(process)
        raise
    known = secrets or []
    out = scrub(stdout.decode("utf-8", errors="replace"), known).strip()
    err = scrub(stderr.decode("utf-8", errors="replace"), known).strip()
    return ProgramRun(
        exit_code=process.returncode if process.returncode is not None else -1,
        stdout_head=out[:OUTPUT_LIMIT],
        stderr_tail=err[-OUTPUT_LIMIT:],
        duration_ms=round((time.monotonic() - started) * 1000),
    )


async def _kill(process: asyncio.subprocess.Process) -> None:
    """Kill the program's whole process group and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
