"""`command`: run a program to reload a consumer, optionally handing it the value.

The program runs without a shell, from an argv list. The value reaches it only on
stdin or in one named environment variable, never on the command line (any user can
read another process's argv). The program must be safe to run twice: publish and
rollback may both run it, and a resumed rotation may repeat a step.

Environment: the program does not inherit keyshift's environment (which may hold
keyshift's own keys); it gets `INHERITED_ENV` from it, the configured `env`, the
`KEYSHIFT_*` facts about the version and, with `value_via: env`, the value.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keyshift.domain.context import PluginContext
from keyshift.domain.durations import Duration, format_duration
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, TransientError, scrub
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PreflightResult,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
)

INHERITED_ENV: Final = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The only variables the program inherits from keyshift's environment."""
RESERVED_PREFIX: Final = "KEYSHIFT_"
"""Variables keyshift sets for the program; configuration may not set them."""
STDERR_TAIL: Final = 500
"""How many trailing characters of stderr an error carries (after scrubbing)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CommandConfig(BaseModel):
    """The program to run and how the value reaches it."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    argv: list[str] = Field(min_length=1)
    """Program and arguments, run without a shell. Never put a secret here."""
    timeout: Duration = timedelta(seconds=30)
    """The program is killed, with its whole process group, after this long."""
    value_via: Literal["none", "stdin", "env"] = "none"
    """How the value reaches the program: not at all, on stdin, or in `env_name`."""
    env_name: str | None = None
    """The variable that carries the value; required with `value_via: env`."""
    env: dict[str, str] = {}
    """Extra, non-secret environment variables."""
    cwd: str | None = None
    rollback: Literal["rerun", "none"] = "rerun"
    """On rollback, run the program again with the previous version, or do nothing."""

    @field_validator("argv")
    @classmethod
    def _program_named(cls, argv: list[str]) -> list[str]:
        if not argv[0].strip():
            raise ValueError("argv[0] must name a program")
        return argv

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, timeout: timedelta) -> timedelta:
        if timeout <= timedelta(0):
            raise ValueError("timeout must be longer than 0s")
        return timeout

    @field_validator("env")
    @classmethod
    def _env_not_reserved(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"'{name}' is not a valid environment variable name")
            if name.upper().startswith(RESERVED_PREFIX):
                raise ValueError(
                    f"'{name}': variables starting with {RESERVED_PREFIX} are set by keyshift"
                )
        return env

    @model_validator(mode="after")
    def _env_name_matches_value_via(self) -> CommandConfig:
        if self.value_via == "env":
            if self.env_name is None:
                raise ValueError("env_name is required when value_via is 'env'")
            if not _ENV_NAME.fullmatch(self.env_name):
                raise ValueError(f"env_name '{self.env_name}' is not a valid variable name")
            if self.env_name.upper().startswith(RESERVED_PREFIX):
                raise ValueError(f"env_name must not start with {RESERVED_PREFIX}")
            if self.env_name in self.env:
                raise ValueError(f"env_name '{self.env_name}' is also set in env")
        elif self.env_name is not None:
            raise ValueError("env_name is only allowed when value_via is 'env'")
        return self


class CommandTarget:
    """Runs a program after the value changed, e.g. `systemctl reload app` or a deploy hook."""

    kind: ClassVar[str] = "command"
    phase: ClassVar[Phase] = Phase.RELOAD
    Config: ClassVar[type[BaseModel]] = CommandConfig

    def __init__(self, config: CommandConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    async def preflight(self, request: PreflightRequest) -> PreflightResult:
        """Ready when argv[0] resolves to an executable (and cwd exists). Runs nothing."""
        reason = self._blocked_reason()
        if reason:
            return PreflightResult(Readiness.BLOCKED, reason)
        return PreflightResult(Readiness.READY)

    def _blocked_reason(self) -> str:
        if self.config.cwd is not None and not Path(self.config.cwd).is_dir():
            return f"cwd {self.config.cwd} is not a directory"
        if self._resolve() is None:
            return f"{self.config.argv[0]} is not an executable program here"
        return ""

    async def publish(self, request: PublishRequest) -> StepResult:
        """Run the program with the new version. Idempotent as far as the program is."""
        delivery = request.delivery
        return await self._run("publish", delivery, delivery, [delivery])

    async def rollback(self, request: RollbackRequest) -> StepResult:
        """Run the program again with the restored version, so the consumer reloads it.

        With `rollback: none`, or when there is no previous version whose value the
        program expects, nothing runs. Idempotent as far as the program is.
        """
        if self.config.rollback == "none":
            return StepResult({"argv0": self.config.argv[0], "skipped": "rollback is none"})
        previous = request.previous
        if previous is None and self.config.value_via != "none":
            return StepResult({"argv0": self.config.argv[0], "skipped": "no previous version"})
        return await self._run("rollback", request.failed, previous, [request.failed, previous])

    def _resolve(self) -> str | None:
        """The program argv[0] names, searched on the program's PATH, or None."""
        program = self.config.argv[0]
        if os.sep in program:
            candidate = Path(program)
            if not candidate.is_absolute() and self.config.cwd is not None:
                candidate = Path(self.config.cwd) / candidate
            ok = candidate.is_file() and os.access(candidate, os.X_OK)
            return str(candidate) if ok else None
        return shutil.which(program, path=self._base_env().get("PATH", os.defpath))

    def _base_env(self) -> dict[str, str]:
        inherited = {
            name: self.context.env[name] for name in INHERITED_ENV if name in self.context.env
        }
        return {**inherited, **self.config.env}

    def _environment(
        self, phase: str, rotation: Delivery, version: Delivery | None
    ) -> dict[str, str]:
        env = self._base_env()
        env.update(
            {
                "KEYSHIFT_CREDENTIAL": rotation.credential,
                "KEYSHIFT_ROTATION_ID": rotation.rotation_id,
                "KEYSHIFT_VERSION_ID": version.version_id if version else "",
                "KEYSHIFT_FINGERPRINT": version.fingerprint if version else "",
                "KEYSHIFT_PHASE": phase,
            }
        )
        if self.config.value_via == "env" and self.config.env_name and version is not None:
            env[self.config.env_name] = version.value.reveal()
        return env

    async def _run(
        self,
        phase: str,
        rotation: Delivery,
        version: Delivery | None,
        known: list[Delivery | None],
    ) -> StepResult:
        """Run argv once, handing it `version` (None: no version, only the rotation's ids).

        `known` are the deliveries whose values are scrubbed from the program's stderr.
        """
        argv0 = self.config.argv[0]
        secrets = [d.value.reveal() for d in known if d is not None]
        stdin_data = (
            version.value.reveal().encode("utf-8")
            if self.config.value_via == "stdin" and version is not None
            else None
        )
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.config.argv,
                stdin=asyncio.subprocess.PIPE
                if stdin_data is not None
                else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=self._environment(phase, rotation, version),
                cwd=self.config.cwd,
                # Its own process group, so a timeout kills the children it started too.
                start_new_session=True,
            )
        except OSError as exc:
            raise PermanentError(
                f"cannot start {argv0}: {exc.strerror or type(exc).__name__}"
            ) from exc
        timeout = self.config.timeout.total_seconds()
        try:
            _, stderr = await asyncio.wait_for(process.communicate(stdin_data), timeout)
        except TimeoutError:
            await _kill(process)
            raise TransientError(
                f"{argv0} did not finish within {format_duration(self.config.timeout)} "
                "and was killed with its process group"
            ) from None
        except BaseException:
            # Cancelled by the engine: do not leave the program running unsupervised.
            await _kill(process)
            raise
        duration_ms = round((time.monotonic() - started) * 1000)
        exit_code = process.returncode
        if exit_code != 0:
            text = scrub(stderr.decode("utf-8", errors="replace"), secrets).strip()
            tail = text[-STDERR_TAIL:]
            how = f"exit code {exit_code}"
            if exit_code is not None and exit_code < 0:
                how = f"signal {-exit_code}"
            raise PermanentError(f"{argv0} failed with {how}" + (f": {tail}" if tail else ""))
        return StepResult({"argv0": argv0, "exit_code": exit_code, "duration_ms": duration_ms})


async def _kill(process: asyncio.subprocess.Process) -> None:
    """Kill the program's whole process group and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
