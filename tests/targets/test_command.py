"""The `command` and `command_check` targets run a program without a shell; the value never
reaches its argv."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, TransientError
from keyshift.targets import TARGETS, TargetKind
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
)
from keyshift.targets.command import (
    CommandCheckConfig,
    CommandCheckTarget,
    CommandConfig,
    CommandTarget,
)

# The child writes what it saw (argv, stdin, environment) as JSON to the file in $OUT.
REPORT = """
import json, os, sys
seen = {"argv": sys.argv, "stdin": sys.stdin.read() if os.environ.get("READ_STDIN") else None,
        "env": dict(os.environ)}
with open(os.environ["OUT"], "w") as f:
    json.dump(seen, f)
"""


def new_secret() -> str:
    return "S3CRET-" + secrets.token_hex(8)


def delivery(value: str, version_id: str = "v2") -> Delivery:
    return Delivery(
        credential="payments-api",
        rotation_id="rot-7",
        version_id=version_id,
        fingerprint=f"fp-{version_id}",
        value=Secret(value),
    )


def target(context_env: dict[str, str] | None = None, **config: Any) -> CommandTarget:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(context_env or {})}
    return CommandTarget(CommandConfig.model_validate(config), PluginContext(env=env))


def reporting_target(out: Path, **config: Any) -> CommandTarget:
    extra_env = {"OUT": str(out)}
    if config.get("value_via") == "stdin":
        extra_env["READ_STDIN"] = "1"
    return target(argv=[sys.executable, "-c", REPORT, "--flag"], env=extra_env, **config)


def publish(t: CommandTarget, value: str) -> StepResult:
    return asyncio.run(t.publish(PublishRequest(delivery(value), None)))


def seen(out: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_stdin_delivery_hands_the_exact_value_to_the_program(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    value = new_secret()

    result = publish(reporting_target(out, value_via="stdin"), value)

    report = seen(out)
    assert report["stdin"] == value
    assert value not in json.dumps(report["argv"])
    assert value not in json.dumps(report["env"])
    assert result.detail["exit_code"] == 0
    assert result.detail["argv0"] == sys.executable
    assert isinstance(result.detail["duration_ms"], int)
    assert value not in repr(result.detail)


def test_env_delivery_sets_only_the_named_variable_and_the_keyshift_facts(
    tmp_path: Path,
) -> None:
    out = tmp_path / "seen.json"
    value = new_secret()
    t = target(
        context_env={"KEYSHIFT_MASTER_KEY": "server-only", "HOME": "/home/ks"},
        argv=[sys.executable, "-c", REPORT],
        value_via="env",
        env_name="DB_PASSWORD",
        env={"OUT": str(out), "MODE": "reload"},
    )

    asyncio.run(t.publish(PublishRequest(delivery(value), delivery(new_secret(), "v1"))))

    env = seen(out)["env"]
    assert env["DB_PASSWORD"] == value
    assert env["MODE"] == "reload"
    assert env["HOME"] == "/home/ks"  # inherited from the allow-list
    assert "KEYSHIFT_MASTER_KEY" not in env  # keyshift's own environment stays with keyshift
    assert {k: v for k, v in env.items() if k.startswith("KEYSHIFT_")} == {
        "KEYSHIFT_CREDENTIAL": "payments-api",
        "KEYSHIFT_ROTATION_ID": "rot-7",
        "KEYSHIFT_VERSION_ID": "v2",
        "KEYSHIFT_FINGERPRINT": "fp-v2",
        "KEYSHIFT_PHASE": "publish",
    }


@pytest.mark.parametrize("value_via", ["none", "stdin", "env"])
def test_value_never_appears_on_the_program_argv(tmp_path: Path, value_via: str) -> None:
    out = tmp_path / "seen.json"
    value = new_secret()
    extra = {"env_name": "TOKEN"} if value_via == "env" else {}

    publish(reporting_target(out, value_via=value_via, **extra), value)

    report = seen(out)
    assert report["argv"] == ["-c", "--flag"]
    assert value not in json.dumps(report["argv"])
    if value_via == "none":
        assert value not in out.read_text()


def test_timeout_kills_the_program_and_its_children_and_is_transient(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    t = target(argv=[sys.executable, "-c", script], timeout="1500ms")
    started = time.monotonic()

    with pytest.raises(TransientError, match="did not finish within 1500ms") as caught:
        publish(t, new_secret())

    assert time.monotonic() - started < 10
    assert "killed" in str(caught.value)
    grandchild = int(pid_file.read_text())
    assert wait_until_dead(grandchild), "the program's child outlived the timeout"


def wait_until_dead(pid: int, within: float = 5.0) -> bool:
    """True once `pid` is gone or a zombie (PID 1 in a container may never reap it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_nonzero_exit_is_permanent_and_stderr_echoing_the_value_is_scrubbed() -> None:
    value = new_secret()
    script = (
        "import sys\n"
        "secret = sys.stdin.read()\n"
        "sys.stderr.write('connecting with password ' + secret + ' failed\\n')\n"
        "sys.exit(3)\n"
    )
    t = target(argv=[sys.executable, "-c", script], value_via="stdin")

    with pytest.raises(PermanentError) as caught:
        publish(t, value)

    message = str(caught.value)
    assert "exit code 3" in message
    assert "connecting with password [REDACTED] failed" in message
    assert value not in message


def test_stderr_in_the_error_is_cut_to_its_last_500_characters() -> None:
    script = "import sys; sys.stderr.write('x' * 2000 + 'THE-END'); sys.exit(1)"
    t = target(argv=[sys.executable, "-c", script])

    with pytest.raises(PermanentError) as caught:
        publish(t, new_secret())

    message = str(caught.value)
    assert message.endswith("THE-END")
    assert message.count("x") <= 500


def test_program_that_cannot_start_is_a_permanent_error(tmp_path: Path) -> None:
    t = target(argv=[str(tmp_path / "no-such-program")])

    with pytest.raises(PermanentError, match="cannot start"):
        publish(t, new_secret())


def test_rollback_reruns_the_program_with_the_previous_value(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    t = reporting_target(out, value_via="stdin")
    old, new = new_secret(), new_secret()

    result = asyncio.run(t.rollback(RollbackRequest(delivery(new), delivery(old, "v1"))))

    report = seen(out)
    assert report["stdin"] == old
    assert report["env"]["KEYSHIFT_PHASE"] == "rollback"
    assert report["env"]["KEYSHIFT_VERSION_ID"] == "v1"
    assert report["env"]["KEYSHIFT_FINGERPRINT"] == "fp-v1"
    assert result.detail["exit_code"] == 0


def test_rollback_none_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    t = reporting_target(out, rollback="none")

    result = asyncio.run(
        t.rollback(RollbackRequest(delivery(new_secret()), delivery(new_secret(), "v1")))
    )

    assert not out.exists()
    assert result.detail["skipped"] == "rollback is none"


def test_rollback_without_previous_value_skips_a_program_that_takes_the_value(
    tmp_path: Path,
) -> None:
    out = tmp_path / "seen.json"
    t = reporting_target(out, value_via="env", env_name="TOKEN")

    result = asyncio.run(t.rollback(RollbackRequest(delivery(new_secret()), None)))

    assert not out.exists()
    assert result.detail["skipped"] == "no previous version"


def test_rollback_without_previous_still_reloads_a_program_that_takes_no_value(
    tmp_path: Path,
) -> None:
    out = tmp_path / "seen.json"
    t = reporting_target(out)

    asyncio.run(t.rollback(RollbackRequest(delivery(new_secret()), None)))

    env = seen(out)["env"]
    assert env["KEYSHIFT_PHASE"] == "rollback"
    assert env["KEYSHIFT_VERSION_ID"] == ""
    assert env["KEYSHIFT_ROTATION_ID"] == "rot-7"


def test_failed_rollback_scrubs_both_the_failed_and_the_previous_value() -> None:
    old, new = new_secret(), new_secret()
    script = f"import sys; sys.stderr.write(sys.stdin.read() + ' and ' + {new!r}); sys.exit(2)"
    t = target(argv=[sys.executable, "-c", script], value_via="stdin")

    with pytest.raises(PermanentError) as caught:
        asyncio.run(t.rollback(RollbackRequest(delivery(new), delivery(old, "v1"))))

    assert old not in str(caught.value)
    assert new not in str(caught.value)
    assert "[REDACTED] and [REDACTED]" in str(caught.value)


def test_cwd_is_where_the_program_runs(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    script = f"import os; open({str(out)!r}, 'w').write(os.getcwd())"

    publish(target(argv=[sys.executable, "-c", script], cwd=str(tmp_path)), new_secret())

    assert Path(out.read_text()).resolve() == tmp_path.resolve()


# --- config and preflight ---------------------------------------------------------------------


def test_value_via_env_requires_env_name() -> None:
    with pytest.raises(ValidationError, match="env_name is required when value_via is 'env'"):
        CommandConfig.model_validate({"argv": ["true"], "value_via": "env"})


def test_env_name_is_refused_unless_value_via_is_env() -> None:
    with pytest.raises(ValidationError, match="env_name is only allowed when value_via is 'env'"):
        CommandConfig.model_validate({"argv": ["true"], "value_via": "stdin", "env_name": "X"})


def test_keyshift_variables_cannot_be_set_by_config() -> None:
    with pytest.raises(ValidationError, match="set by keyshift"):
        CommandConfig.model_validate({"argv": ["true"], "env": {"KEYSHIFT_PHASE": "x"}})
    with pytest.raises(ValidationError, match="must not start with KEYSHIFT_"):
        CommandConfig.model_validate(
            {"argv": ["true"], "value_via": "env", "env_name": "KEYSHIFT_VALUE"}
        )


def test_argv_needs_a_program_and_timeout_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        CommandConfig.model_validate({"argv": []})
    with pytest.raises(ValidationError, match="longer than 0s"):
        CommandConfig.model_validate({"argv": ["true"], "timeout": "0s"})


def test_defaults_are_thirty_seconds_no_value_and_rerun_on_rollback() -> None:
    config = CommandConfig.model_validate({"argv": ["systemctl", "reload", "app"]})

    assert config.timeout.total_seconds() == 30
    assert (config.value_via, config.env_name, config.rollback) == ("none", None, "rerun")
    assert (CommandTarget.kind, CommandTarget.phase, CommandTarget.Config) == (
        "command",
        Phase.RELOAD,
        CommandConfig,
    )


def test_preflight_is_ready_when_the_program_resolves_and_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"

    by_path = asyncio.run(reporting_target(out).preflight(PreflightRequest("payments-api")))
    by_name = asyncio.run(
        target(
            argv=[Path(sys.executable).name, "-V"],
            context_env={"PATH": str(Path(sys.executable).parent)},
        ).preflight(PreflightRequest("payments-api"))
    )

    assert by_path.readiness is Readiness.READY
    assert by_name.readiness is Readiness.READY
    assert not out.exists()


def test_preflight_is_blocked_when_the_program_does_not_resolve(tmp_path: Path) -> None:
    missing = asyncio.run(
        target(argv=["keyshift-no-such-program-xyz"]).preflight(PreflightRequest("c"))
    )
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\n")
    plain_file = asyncio.run(target(argv=[str(not_executable)]).preflight(PreflightRequest("c")))

    assert missing.readiness is Readiness.BLOCKED
    assert "keyshift-no-such-program-xyz" in missing.reason
    assert plain_file.readiness is Readiness.BLOCKED


# --- command_check ----------------------------------------------------------------------------

# Logs in the way the application would: reads the value on stdin and compares it with
# what the "issuer" (a file here) accepts; exits 1 with a message when it is refused.
LOGIN_CHECK = """
import os, sys
given = sys.stdin.read()
with open(os.environ["ACCEPTED"]) as f:
    accepted = f.read()
with open(os.environ["OUT"], "a") as log:
    log.write(os.environ["KEYSHIFT_VERSION_ID"] + "\\n")
if given != accepted:
    sys.stderr.write("login refused for " + given)
    sys.exit(1)
"""


def check_target(out: Path, accepted: Path, **config: Any) -> CommandCheckTarget:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    settings = {
        "argv": [sys.executable, "-c", LOGIN_CHECK],
        "value_via": "stdin",
        "env": {"OUT": str(out), "ACCEPTED": str(accepted)},
        **config,
    }
    return CommandCheckTarget(CommandCheckConfig.model_validate(settings), PluginContext(env=env))


def test_command_check_runs_in_the_verifying_phase_and_is_registered() -> None:
    assert (CommandCheckTarget.kind, CommandCheckTarget.phase, CommandCheckTarget.Config) == (
        "command_check",
        Phase.VERIFY,
        CommandCheckConfig,
    )
    assert TARGETS[TargetKind.COMMAND_CHECK] is CommandCheckTarget


def test_command_check_passes_when_the_program_accepts_the_new_value(tmp_path: Path) -> None:
    value = new_secret()
    accepted = tmp_path / "accepted"
    accepted.write_text(value)
    out = tmp_path / "runs.log"

    result = asyncio.run(check_target(out, accepted).publish(PublishRequest(delivery(value), None)))

    assert out.read_text() == "v2\n"
    assert result.detail["exit_code"] == 0
    assert result.detail["argv0"] == sys.executable
    assert value not in repr(result.detail)


def test_command_check_fails_permanently_without_showing_the_value(tmp_path: Path) -> None:
    value = new_secret()
    accepted = tmp_path / "accepted"
    accepted.write_text("something else")
    out = tmp_path / "runs.log"

    with pytest.raises(PermanentError) as caught:
        asyncio.run(check_target(out, accepted).publish(PublishRequest(delivery(value), None)))

    assert "exit code 1: login refused for [REDACTED]" in str(caught.value)
    assert value not in str(caught.value)


def test_command_check_hands_the_value_only_through_env_like_command(tmp_path: Path) -> None:
    out = tmp_path / "seen.json"
    value = new_secret()
    check = CommandCheckTarget(
        CommandCheckConfig.model_validate(
            {
                "argv": [sys.executable, "-c", REPORT],
                "value_via": "env",
                "env_name": "APP_TOKEN",
                "env": {"OUT": str(out)},
            }
        ),
        PluginContext(env={"PATH": os.environ.get("PATH", ""), "KEYSHIFT_MASTER_KEY": "x"}),
    )

    asyncio.run(check.publish(PublishRequest(delivery(value), None)))

    report = seen(out)
    assert report["env"]["APP_TOKEN"] == value
    assert value not in json.dumps(report["argv"])
    assert "KEYSHIFT_MASTER_KEY" not in report["env"]
    assert report["env"]["KEYSHIFT_VERSION_ID"] == "v2"


def test_command_check_rollback_runs_nothing(tmp_path: Path) -> None:
    accepted = tmp_path / "accepted"
    accepted.write_text("x")
    out = tmp_path / "runs.log"
    check = check_target(out, accepted)

    result = asyncio.run(
        check.rollback(RollbackRequest(delivery(new_secret()), delivery(new_secret(), "v1")))
    )

    assert not out.exists()
    assert dict(result.detail) == {"skipped": "a check has nothing to undo"}


def test_command_check_preflight_is_blocked_when_the_program_does_not_resolve() -> None:
    check = CommandCheckTarget(
        CommandCheckConfig.model_validate({"argv": ["keyshift-no-such-check-xyz"]}),
        PluginContext(env={"PATH": "/usr/bin:/bin"}),
    )

    result = asyncio.run(check.preflight(PreflightRequest("payments-api")))

    assert result.readiness is Readiness.BLOCKED
    assert "keyshift-no-such-check-xyz" in result.reason


def test_command_check_config_has_no_rollback_setting() -> None:
    with pytest.raises(ValidationError, match="rollback"):
        CommandCheckConfig.model_validate({"argv": ["true"], "rollback": "none"})
    with pytest.raises(ValidationError, match="env_name is required when value_via is 'env'"):
        CommandCheckConfig.model_validate({"argv": ["true"], "value_via": "env"})
