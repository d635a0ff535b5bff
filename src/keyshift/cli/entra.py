"""Entra ID inventory (`entra sync|list|summary|report`), versions at the issuers that
keyshift did not issue (`foreign`) and `integrations test`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from keyshift.cli._common import (
    ServerOption,
    actor,
    answer,
    client_of,
    err,
    exit_on_error,
    open_store,
    out,
    when,
)
from keyshift.domain.clock import utcnow
from keyshift.domain.estate import DEFAULT_POLICY_NAME
from keyshift.service import entra as entra_service
from keyshift.service import estate as estate_service
from keyshift.service import foreign as foreign_service
from keyshift.service import integrations as integrations_service

entra_app = typer.Typer(
    help="Discover Entra ID app registrations and watch their secrets' expiry.",
    no_args_is_help=True,
)


@entra_app.command("sync")
@exit_on_error
def entra_sync(
    integration: Annotated[
        list[str] | None,
        typer.Option("--integration", "-i", help="Sync only this integration (repeatable)."),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Import every app registration with its owners, client secrets and certificates."""
    results = answer(
        server,
        lambda client: client.entra_sync(integration or None),
        lambda store: asyncio.run(
            entra_service.sync(
                store,
                actor=actor(),
                only=integration or None,
                on_progress=lambda line: err.print(line, markup=False),
            )
        ),
    )
    if not results:
        out.print("No entra integrations in the estate.")
    table = Table(title="Entra sync", title_justify="left")
    for col in ("integration", "apps", "credentials", "added", "changed", "removed"):
        table.add_column(col, justify="left" if col == "integration" else "right")
    for r in results:
        table.add_row(
            r.integration,
            str(r.apps),
            str(r.credentials),
            str(len(r.added)),
            str(len(r.changed)),
            str(len(r.removed)),
        )
    if results:
        out.print(table)


_STATE_COLOURS = {
    "Active": "green",
    "Expiring Soon": "yellow",
    "Expired": "red",
    "Needs Attention": "red",
    "Rotating": "cyan",
    "Grace Period": "cyan",
}


def _state(value: str) -> str:
    return f"[{_STATE_COLOURS.get(value, 'white')}]{value}[/]"


def _entra_table(title: str, creds: list[entra_service.EntraCredential]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("app", "appId", "kind", "keyId", "name", "expires", "days", "state", "managed by"):
        table.add_column(col, no_wrap=col in ("appId", "keyId", "expires"))
    for c in creds:
        table.add_row(
            c.app_name,
            c.app_id,
            "secret" if c.kind == entra_service.CLIENT_SECRET else "cert",
            c.key_id,
            c.display_name or "-",
            when(c.end),
            str(c.days_left) if c.days_left is not None else "-",
            _state(c.state.value),
            c.managed_by or "[dim]unmanaged[/]",
        )
    return table


@entra_app.command("list")
@exit_on_error
def entra_list(
    state: Annotated[
        str | None, typer.Option(help="Only this state, e.g. 'Expiring Soon'.")
    ] = None,
    app_name: Annotated[str | None, typer.Option("--app", help="Only this app (name).")] = None,
    removed: Annotated[bool, typer.Option("--removed", help="Include cleaned-up ones.")] = False,
    server: ServerOption = None,
) -> None:
    """Every discovered client secret and certificate with its lifecycle state."""
    if server:
        with client_of(server) as client:
            creds = client.entra_credentials(state=state, app=app_name, removed=removed)
        out.print(_entra_table(f"Entra credentials ({len(creds)})", creds))
        return
    with open_store() as store:
        alerts = estate_service.current_estate(store).alerts
        creds = entra_service.inventory(store, now=utcnow(), alerts=alerts, include_removed=removed)
    if state is not None:
        creds = [c for c in creds if c.state.value.lower() == state.lower()]
    if app_name is not None:
        creds = [c for c in creds if c.app_name == app_name]
    out.print(_entra_table(f"Entra credentials ({len(creds)})", creds))


@entra_app.command("summary")
@exit_on_error
def entra_summary(
    top: Annotated[int, typer.Option(help="How many of the most urgent to list.")] = 10,
    server: ServerOption = None,
) -> None:
    """Totals, counts expiring in 7/30/90 days, in grace, and the most urgent credentials."""
    found = answer(
        server,
        lambda client: client.entra_summary(top=top),
        lambda store: entra_service.summary(
            store, now=utcnow(), alerts=estate_service.current_estate(store).alerts, top=top
        ),
    )
    table = Table(title="Entra ID credentials", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in (
        ("applications", found.apps),
        ("client secrets", found.client_secrets),
        ("certificates", found.certificates),
        ("managed by keyshift", found.managed),
        ("expired", found.expired),
        ("expiring within 7 days", found.within[7]),
        ("expiring within 30 days", found.within[30]),
        ("expiring within 90 days", found.within[90]),
        ("rotating", found.rotating),
        ("in grace period", found.in_grace),
    ):
        table.add_row(label, str(value))
    out.print(table)
    if found.urgent:
        out.print(_entra_table("Most urgent", found.urgent))


@entra_app.command("report")
@exit_on_error
def entra_report(server: ServerOption = None) -> None:
    """Secrets created outside keyshift on managed apps, and lifetimes over the maximum,
    from the synced inventory (`keyshift foreign` asks every provider's issuer live)."""
    found = answer(
        server,
        lambda client: client.entra_findings(),
        lambda store: entra_service.findings(
            store,
            now=utcnow(),
            default_policy=estate_service.current_estate(store).named_policy(DEFAULT_POLICY_NAME),
        ),
    )
    if not found:
        out.print("No findings: no secrets created outside keyshift, no lifetime over maximum.")
        return
    table = Table(title=f"Entra findings ({len(found)})", title_justify="left")
    for col in ("finding", "app", "appId", "keyId", "name", "managed by", "detail"):
        table.add_column(col, no_wrap=col in ("finding", "appId", "keyId"))
    for f in found:
        c = f.credential
        table.add_row(
            f.kind.replace("_", " "),
            c.app_name,
            c.app_id,
            c.key_id,
            c.display_name or "-",
            c.managed_by or "-",
            f.detail,
        )
    out.print(table)
    raise typer.Exit(1)


@exit_on_error
def foreign(server: ServerOption = None) -> None:
    """Versions at the issuers of managed credentials that keyshift did not issue (a
    password or client secret made by hand), asked live of each issuer; exits 1 when
    there are any. Changes nothing."""
    report = answer(
        server,
        lambda client: client.foreign(),
        lambda store: asyncio.run(foreign_service.foreign_report(store, actor=actor())),
    )
    for skipped in report.unchecked:
        err.print(f"not checked: {skipped.credential}: {skipped.reason}", markup=False)
    if not report.found:
        out.print(
            f"No foreign versions: the issuers of {report.checked} credential(s) hold only "
            "what keyshift issued."
        )
        return
    table = Table(title=f"Foreign versions ({len(report.found)})", title_justify="left")
    for col in ("credential", "provider", "at the issuer", "expires", "owner", "what happens"):
        table.add_column(col, no_wrap=col in ("credential", "provider", "at the issuer"))
    for f in report.found:
        table.add_row(f.credential, f.provider, f.ref, when(f.expires_at), f.owner or "-", f.detail)
    out.print(table)
    raise typer.Exit(1)


integrations_app = typer.Typer(
    help="Check the connections keyshift uses to reach issuers and stores.",
    no_args_is_help=True,
)


@integrations_app.command("test")
@exit_on_error
def integrations_test(
    name: Annotated[str, typer.Argument(help="Integration name.")],
    server: ServerOption = None,
) -> None:
    """Sign in, read the granted permissions and read from the API. Changes nothing;
    exits 1 when a check fails."""
    checks = answer(
        server,
        lambda client: client.test_integration(name),
        lambda store: asyncio.run(
            integrations_service.check_integration(store, name, actor=actor())
        ),
    )
    table = Table(title=f"Integration {name}", title_justify="left")
    for col in ("check", "result", "detail"):
        table.add_column(col, no_wrap=col != "detail")
    for check in checks:
        table.add_row(check.name, "[green]ok[/]" if check.ok else "[red]failed[/]", check.detail)
    out.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
