"""`notifications`: what keyshift told operators (pending, delivered, dead-lettered) and
`notifications test CHANNEL`."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from keyshift.cli._common import ServerOption, answer, exit_on_error
from keyshift.cli.output import Format, OutputOption, emit, new_table, out, when

if TYPE_CHECKING:
    from keyshift.service import notifications as notifications_service
    from keyshift.store.store import Store

notifications_app = typer.Typer(
    help="Events sent to the estate's notification channels.", no_args_is_help=False
)


class Status(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    NO_CHANNEL = "no channel"


_COLOURS = {"delivered": "green", "pending": "yellow", "dead": "red", "no channel": "dim"}


@notifications_app.callback(invoke_without_command=True)
@exit_on_error
def notifications_list(
    ctx: typer.Context,
    status: Annotated[Status | None, typer.Option(help="Only events in this state.")] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest to show.")] = 100,
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """The newest events and where each stands in each channel: pending (with its next
    attempt), delivered, dead-lettered after its last try (with the error), or sent
    nowhere because no route chose a channel."""
    if ctx.invoked_subcommand is not None:
        return
    only = status.value if status is not None else None
    from keyshift.service import notifications as notifications_service

    rows = answer(
        server,
        lambda client: client.notifications(status=only, limit=limit),
        lambda store: notifications_service.listing(store, status=only, limit=limit),
    )
    emit(output, rows, lambda: _print(rows))


def _print(rows: list[notifications_service.Delivery]) -> None:
    if not rows:
        out.print("No notifications.")
        return
    columns = ("event", "kind", "credential", "channel", "status", "tries", "next / sent", "error")
    table_rows = (
        (
            str(row.event_id),
            row.kind,
            row.credential or "-",
            row.channel or "-",
            f"[{_COLOURS.get(row.status, 'white')}]{row.status}[/]",
            str(row.attempts),
            when(row.delivered_at or row.next_attempt_at),
            row.last_error or "",
        )
        for row in rows
    )
    title = f"Notifications (newest {len(rows)})"
    out.print(new_table(title, columns, table_rows, no_wrap=("event", "kind", "status")))


@notifications_app.command("test")
@exit_on_error
def notifications_test(
    channel: Annotated[str, typer.Argument(help="A channel declared under notifications.")],
    server: ServerOption = None,
) -> None:
    """Send a test message to one channel now; exits non-zero with the channel's answer
    when it is refused."""

    def here(store: Store) -> str:
        import asyncio

        from keyshift.context import PluginContext
        from keyshift.service import estate as estate_service
        from keyshift.service import notifications as notifications_service

        estate = estate_service.current_estate(store)
        context = PluginContext()
        sent = asyncio.run(notifications_service.send_test(estate, channel, context=context))
        return sent.detail

    detail = answer(server, lambda client: client.test_channel(channel), here)
    out.print(f"Test message sent to {channel}: {detail}")
