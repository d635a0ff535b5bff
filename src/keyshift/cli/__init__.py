"""The `keyshift` command line. Every error is one clear line and a non-zero exit
(`_common` gives the exit codes).

One module per group of commands; this module is the map: it registers each command
and group on `app` in the order `keyshift --help` lists them.

| module | commands |
|---|---|
| `estate` | plan, apply, status, reference |
| `imports` | import |
| `rotations` | preflight, rotate, resume, rollback, history, versions, show, worker, impact |
| `freezes` | freeze, unfreeze, freezes |
| `governance` | approvals, approve, reject, alerts, evidence, audit |
| `notifications` | notifications, notifications test |
| `entra` | entra, foreign, integrations |
| `access` | init, users, tokens, roles |
| `keys` | keys |
| `serve` | serve, agent |
| `demo` | demo |

`output` gives every listing command `-o/--output table|json|yaml`.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from keyshift import __version__
from keyshift.cli import (
    access,
    demo,
    entra,
    estate,
    freezes,
    governance,
    imports,
    keys,
    notifications,
    rotations,
    serve,
)
from keyshift.cli._common import SERVER_COMMANDS
from keyshift.cli.output import out

__all__ = ["SERVER_COMMANDS", "app", "main"]

app = typer.Typer(
    name="keyshift",
    help="Rotate non-human credentials without outages, with evidence an auditor accepts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
    log_level: Annotated[str | None, typer.Option(help="Log level (default WARNING).")] = None,
) -> None:
    if version:
        out.print(f"keyshift {__version__}")
        raise typer.Exit(0)
    from keyshift import logs  # structlog loads for the commands that log, not --version

    logs.configure(log_level)


for command in (
    estate.plan,
    estate.apply,
    estate.status,
    rotations.preflight,
    rotations.rotate,
    rotations.resume,
    rotations.rollback,
    freezes.freeze,
    freezes.unfreeze,
    rotations.history,
    rotations.versions,
    rotations.show,
    rotations.worker,
    entra.foreign,
    governance.approve,
    governance.reject,
    governance.alerts,
    estate.reference,
    demo.demo,
    rotations.impact,
    governance.evidence,
    access.init,
    serve.serve,
):
    app.command()(command)
app.command("freezes")(freezes.freezes_list)
app.command("import")(imports.import_)

for name, group in (
    ("audit", governance.audit_app),
    ("keys", keys.keys_app),
    ("entra", entra.entra_app),
    ("approvals", governance.approvals_app),
    ("notifications", notifications.notifications_app),
    ("integrations", entra.integrations_app),
    ("users", access.users_app),
    ("tokens", access.tokens_app),
    ("roles", access.roles_app),
    ("agent", serve.agent_app),
):
    app.add_typer(group, name=name)


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        # Answered before Typer builds the command tree and converts the option's value
        # (which loads pydantic): the line `_main` prints, and exit code 0.
        sys.stdout.write(f"keyshift {__version__}\n")
        return
    app()
