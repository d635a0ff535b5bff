"""`freeze`, `unfreeze` and `freezes`: stop new rotations during an incident, a change
freeze or a migration, and list what holds; on the local store, or at a server with
`--server` (`/v1/freezes`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from keyshift.cli._common import ServerOption, actor, answer, bad_usage, exit_on_error
from keyshift.cli.output import Format, OutputOption, emit, new_table, out, when
from keyshift.domain.clock import utcnow
from keyshift.domain.freeze import FreezeScope


def _until(value: str | None) -> datetime | None:
    """`--until`: a duration from now (`4h`, `2d`) or a UTC date or time (`2026-12-28`,
    `2026-12-28T18:00`)."""
    if value is None:
        return None
    from keyshift.domain.durations import parse_duration

    try:
        return utcnow() + parse_duration(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        bad_usage("--until: give a duration (4h, 2d) or a UTC date or time (2026-12-28T18:00)")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@exit_on_error
def freeze(
    credential: Annotated[
        str | None, typer.Argument(help="The credential to freeze (or use --owner, ...).")
    ] = None,
    owner: Annotated[
        str | None, typer.Option(help="Freeze every credential of this owner.")
    ] = None,
    environment: Annotated[
        str | None, typer.Option(help="Freeze every credential of this environment.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Freeze every credential.")] = False,
    reason: Annotated[str, typer.Option(help="Why (required; audited, shown in refusals).")] = "",
    until: Annotated[
        str | None, typer.Option(help="Lift by itself then: 4h, 2d, or 2026-12-28T18:00 (UTC).")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Stop new rotations of a credential, an owner's, an environment's, or all, until
    `unfreeze` (or --until). A rotation under way stops at its next state and waits."""
    from keyshift.service import freezes

    chosen = [
        (scope, value)
        for scope, value in (
            (FreezeScope.CREDENTIAL, credential),
            (FreezeScope.OWNER, owner),
            (FreezeScope.ENVIRONMENT, environment),
            (FreezeScope.ALL, "" if all_ else None),
        )
        if value is not None
    ]
    if len(chosen) != 1:
        bad_usage("name exactly one of: a credential, --owner, --environment, --all")
    scope, value = chosen[0]
    if not reason.strip():
        bad_usage("--reason: say why rotations are frozen")
    ends = _until(until)
    made = answer(
        server,
        lambda client: client.freeze(
            scope=scope.value, value=value or None, reason=reason, until=ends
        ),
        lambda store: freezes.freeze(
            store, scope=scope, value=value or None, reason=reason, until=ends, actor=actor()
        ),
    )
    lifts = f" until {when(made.until)}" if made.until else "; `keyshift unfreeze` lifts it"
    out.print(f"Froze {made.what} (freeze {made.id}){lifts}", markup=False)


@exit_on_error
def unfreeze(
    freeze_id: Annotated[str, typer.Argument(help="The freeze's id.")],
    server: ServerOption = None,
) -> None:
    """Lift a freeze: rotations of what it covered may start again."""
    from keyshift.service import freezes

    lifted = answer(
        server,
        lambda client: client.unfreeze(freeze_id),
        lambda store: freezes.unfreeze(store, freeze_id, actor=actor()),
    )
    out.print(f"Lifted freeze {lifted.id} ({lifted.what})", markup=False)


@exit_on_error
def freezes_list(server: ServerOption = None, output: OutputOption = Format.TABLE) -> None:
    """The freezes holding now, with where each was declared (cli, api, or the estate
    file's `freeze:`, which `apply` lifts once it is gone from the file)."""
    from keyshift.service import freezes

    found = answer(server, lambda client: client.freezes(), freezes.holding)
    columns = ("freeze", "covers", "reason", "source", "by", "since", "until")
    rows = (
        (f.id, f.what, f.reason, f.source, f.created_by, when(f.created_at), when(f.until))
        for f in found
    )
    title = f"Freezes holding ({len(found)})"
    emit(output, found, lambda: out.print(new_table(title, columns, rows)))
