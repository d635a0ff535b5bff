"""The generic residual-use check: a program the operator writes decides whether the old
version is still in use (a log search, a load balancer's connection table, an API).

Its contract: exit 0 means unused, exit 1 means in use. The first line of its output
may start with a count of sessions (`3 clients on payments-api-7f9c`); the rest of that
line is kept as detail. Any other exit, a timeout, or a program that cannot start
counts as in use: revoking on missing evidence is what the gate exists to prevent.
The program never receives the value, only identifiers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from keyshift.errors import PluginError
from keyshift.process import inherited_env, run_program
from keyshift.providers.base import IssuedVersion, UsageReport


@dataclass(frozen=True)
class UsageCommand:
    argv: list[str]
    limit: timedelta


async def command_usage(
    command: UsageCommand,
    *,
    credential: str,
    version_id: str,
    fingerprint: str,
    version: IssuedVersion,
    env: Mapping[str, str] | None = None,
) -> UsageReport:
    """Run the operator's program for the old version and read its verdict."""
    source = os.environ if env is None else env
    program_env = inherited_env(source)
    program_env.update(
        {
            "KEYSHIFT_CREDENTIAL": credential,
            "KEYSHIFT_VERSION_ID": version_id,
            "KEYSHIFT_PROVIDER_REF": version.provider_ref,
            "KEYSHIFT_FINGERPRINT": fingerprint,
            "KEYSHIFT_USERNAME": str(version.attributes.get("username", "")),
        }
    )
    argv0 = command.argv[0]
    try:
        ran = await run_program(
            command.argv,
            env=program_env,
            cwd=None,
            limit=command.limit,
            secrets=[version.value.reveal()],
        )
    except PluginError as exc:
        return UsageReport(sessions=1, detail={"command": argv0, "error": str(exc)})
    first = ran.stdout_head.splitlines()[0] if ran.stdout_head else ""
    count_text, _, rest = first.partition(" ")
    if ran.exit_code == 0:
        return UsageReport(sessions=0, detail={"command": argv0, "said": first[:200]})
    if ran.exit_code == 1:
        sessions = int(count_text) if count_text.isdigit() and int(count_text) > 0 else 1
        said = rest if count_text.isdigit() else first
        return UsageReport(sessions=sessions, detail={"command": argv0, "said": said[:200]})
    return UsageReport(
        sessions=1,
        detail={
            "command": argv0,
            "error": f"{ran.how} (neither 0 = unused nor 1 = in use)",
            "stderr": ran.stderr_tail[-200:],
        },
    )
