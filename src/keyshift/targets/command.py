"""`command` and `command_check`: run a program, optionally handing it the value.

`command` reloads a consumer (reloading phase) and runs again on rollback;
`command_check` tests the cutover (verifying phase), e.g. a script that logs in with
the new version the way the application does, and has nothing to undo. Both run
the program the same way.

The program runs without a shell, from an argv list. The value reaches it only on
stdin or in one named environment variable, never on the command line (any user can
read another process's argv). The program must be safe to run twice: publish and
rollback may both run it, and a resumed rotation may repeat a step.

Environment: the program does not inherit keyshift's environment (which may hold
keyshift's own keys); it gets `INHERITED_ENV` from it, the configured `env`, the
`KEYSHIFT_*` facts about the version and, with `value_via: env`, the value.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Final, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keyshift.domain.durations import Duration
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError
from keyshift.process import inherited_env, run_program
from keyshift.targets import base
from keyshift.targets.base import (
    BaseTarget,
    Delivery,
    PreflightResult,
    Readiness,
    StepResult,
    positive,
)

RESERVED_PREFIX: Final = "KEYSHIFT_"
"""Variables keyshift sets for the program; configuration may not set them."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ProgramConfig(BaseModel):
    """The program to run and how the value reaches it (shared by `command` and
    `command_check`)."""

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
    """Directory the program runs in; keyshift's working directory when unset."""

    @field_validator("argv")
    @classmethod
    def _program_named(cls, argv: list[str]) -> list[str]:
        if not argv[0].strip():
            raise ValueError("argv[0] must name a program")
        return argv

    @field_validator("timeout")
    @classmethod
    def _positive_timeout(cls, timeout: timedelta) -> timedelta:
        return positive(timeout, "timeout")

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
    def _env_name_matches_value_via(self) -> Self:
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


class CommandConfig(ProgramConfig):
    """The program to run and how the value reaches it."""

    rollback: Literal["rerun", "none"] = "rerun"
    """On rollback, run the program again with the previous version, or do nothing."""


class CommandCheckConfig(ProgramConfig):
    """The check program to run and how the value reaches it. It passes when it exits 0."""


_C = TypeVar("_C", bound=ProgramConfig)


class _ProgramStep(BaseTarget[_C]):
    """What `command` and `command_check` share: preflight, publish and running argv."""

    @classmethod
    def describe(cls, config: ProgramConfig) -> dict[str, str]:
        """The program it runs (argv[0] only: later arguments may carry tokens)."""
        return {"program": config.argv[0]}

    async def preflight(self, request: base.PreflightRequest) -> PreflightResult:
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

    async def publish(self, request: base.PublishRequest) -> StepResult:
        """Run the program with the new version. Idempotent as far as the program is."""
        delivery = request.delivery
        return await self._run("publish", delivery, delivery, [delivery])

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
        return {**inherited_env(self.context.env), **self.config.env}

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
        secrets = [d.value.reveal() for d in known if d is not None]
        stdin_data = (
            version.value.reveal().encode("utf-8")
            if self.config.value_via == "stdin" and version is not None
            else None
        )
        ran = await run_program(
            self.config.argv,
            env=self._environment(phase, rotation, version),
            cwd=self.config.cwd,
            limit=self.config.timeout,
            stdin_data=stdin_data,
            secrets=secrets,
        )
        argv0 = self.config.argv[0]
        if ran.exit_code != 0:
            raise PermanentError(
                f"{argv0} failed with {ran.how}"
                + (f": {ran.stderr_tail}" if ran.stderr_tail else "")
            )
        return StepResult(
            {"argv0": argv0, "exit_code": ran.exit_code, "duration_ms": ran.duration_ms}
        )


class CommandTarget(_ProgramStep[CommandConfig]):
    """Runs a program after the value changed, e.g. `systemctl reload app` or a deploy hook."""

    kind: ClassVar[str] = "command"
    phase: ClassVar[Phase] = Phase.RELOAD
    Config: ClassVar[type[BaseModel]] = CommandConfig

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
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


class CommandCheckTarget(_ProgramStep[CommandCheckConfig]):
    """Tests the cutover with a program, e.g. a script that logs in with the new version.

    A non-zero exit fails the step; with `on_failure: abort` the rotation rolls back.
    """

    kind: ClassVar[str] = "command_check"
    phase: ClassVar[Phase] = Phase.VERIFY
    Config: ClassVar[type[BaseModel]] = CommandCheckConfig

    async def rollback(self, request: base.RollbackRequest) -> StepResult:
        """Runs nothing: a check changed nothing, so there is nothing to undo."""
        return StepResult({"skipped": "a check has nothing to undo"})
