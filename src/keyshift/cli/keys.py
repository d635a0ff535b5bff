"""`keys rotate-master`: the keys that protect secrets at rest."""

from __future__ import annotations

import typer

from keyshift.cli._common import actor, exit_on_error, open_store
from keyshift.cli.output import out

keys_app = typer.Typer(help="Manage the keys that protect secrets at rest.", no_args_is_help=True)


@keys_app.command("rotate-master")
@exit_on_error
def keys_rotate_master() -> None:
    """Re-wrap every data key under a new master key; no value is lost."""
    from keyshift.service import keys as keys_service

    with open_store() as store:
        result = keys_service.rotate_master_key(store, actor=actor())
    out.print(
        f"master key rotated: {result.old_key_id} -> {result.new_key_id}, "
        f"{result.rewrapped} data keys re-wrapped"
    )
    if result.from_env:
        out.print(
            "The store now needs KEYSHIFT_MASTER_KEY set to the value of "
            "KEYSHIFT_NEW_MASTER_KEY; keep the old key in KEYSHIFT_OLD_MASTER_KEYS "
            "until every process has restarted."
        )
