"""Entra ID inventory (`entra sync|list|summary|report`), versions at the issuers that
keyshift did not issue (`foreign`) and `integrations test`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from keyshift.cli._common import ServerOption, actor, answer, client_of, exit_on_error, open_store
from keyshift.cli.output import Format, OutputOption, emit, err, lifecycle, new_table, out, when
from keyshift.domain.clock import utcnow

if TYPE_CHECKING:
    from rich.table import Table

    from keyshift.service import entra as entra_service
    from keyshift.service import foreign as foreign_service

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
    import asyncio

    from keyshift.service import entra as entra_service

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
    if results:
        columns = ("integration", "apps", "credentials", "added", "changed", "removed")
        rows = (
            (
                r.integration,
                str(r.apps),
                str(r.credentials),
                *(str(len(ids)) for ids in (r.added, r.changed, r.removed)),
            )
            for r in results
        )
        out.print(new_table("Entra sync", columns, rows, right=columns[1:]))


def _entra_table(title: str, creds: list[entra_service.EntraCredential]) -> Table:
    from keyshift.service import entra as entra_service

    columns = ("app", "appId", "kind", "keyId", "name", "expires", "days", "state", "managed by")
    rows = (
        (
            c.app_name,
            c.app_id,
            "secret" if c.kind == entra_service.CLIENT_SECRET else "cert",
            c.key_id,
            c.display_name or "-",
            when(c.end),
            str(c.days_left) if c.days_left is not None else "-",
            lifecycle(c.state.value),
            c.managed_by or "[dim]unmanaged[/]",
        )
        for c in creds
    )
    return new_table(title, columns, rows, no_wrap=("appId", "keyId", "expires"))


@entra_app.command("list")
@exit_on_error
def entra_list(
    state: Annotated[
        str | None, typer.Option(help="Only this state, e.g. 'Expiring Soon'.")
    ] = None,
    app_name: Annotated[str | None, typer.Option("--app", help="Only this app (name).")] = None,
    removed: Annotated[bool, typer.Option("--removed", help="Include cleaned-up ones.")] = False,
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """Every discovered client secret and certificate with its lifecycle state."""
    if server:
        with client_of(server) as client:
            creds = client.entra_credentials(state=state, app=app_name, removed=removed)
    else:
        from keyshift.service import entra as entra_service
        from keyshift.service import estate as estate_service

        with open_store() as store:
            alerts = estate_service.current_estate(store, with_credentials=False).alerts
            creds = entra_service.inventory(
                store, now=utcnow(), alerts=alerts, include_removed=removed
            )
        if state is not None:
            creds = [c for c in creds if c.state.value.lower() == state.lower()]
        if app_name is not None:
            creds = [c for c in creds if c.app_name == app_name]
    emit(output, creds, lambda: out.print(_entra_table(f"Entra credentials ({len(creds)})", creds)))


@entra_app.command("summary")
@exit_on_error
def entra_summary(
    top: Annotated[int, typer.Option(help="How many of the most urgent to list.")] = 10,
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """Totals, counts expiring in 7/30/90 days, in grace, and the most urgent credentials."""
    from keyshift.service import entra as entra_service
    from keyshift.service import estate as estate_service

    found = answer(
        server,
        lambda client: client.entra_summary(top=top),
        lambda store: entra_service.summary(
            store,
            now=utcnow(),
            alerts=estate_service.current_estate(store, with_credentials=False).alerts,
            top=top,
        ),
    )
    emit(output, found, lambda: _print_summary(found))


def _print_summary(found: entra_service.Summary) -> None:
    counts = (
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
    )
    rows = ((label, str(value)) for label, value in counts)
    out.print(
        new_table(
            "Entra ID credentials", ("what", "count"), rows, right=("count",), show_header=False
        )
    )
    if found.urgent:
        out.print(_entra_table("Most urgent", found.urgent))


@entra_app.command("report")
@exit_on_error
def entra_report(server: ServerOption = None, output: OutputOption = Format.TABLE) -> None:
    """Secrets created outside keyshift on managed apps, and lifetimes over the maximum,
    from the synced inventory (`keyshift foreign` asks every provider's issuer live).
    Exits 1 when there are any."""
    from keyshift.domain.estate import DEFAULT_POLICY_NAME
    from keyshift.service import entra as entra_service
    from keyshift.service import estate as estate_service

    found = answer(
        server,
        lambda client: client.entra_findings(),
        lambda store: entra_service.findings(
            store,
            now=utcnow(),
            default_policy=estate_service.current_estate(
                store, with_credentials=False
            ).named_policy(DEFAULT_POLICY_NAME),
        ),
    )
    emit(output, found, lambda: _print_findings(found))
    if found:
        raise typer.Exit(1)


def _print_findings(found: list[entra_service.Finding]) -> None:
    if not found:
        out.print("No findings: no secrets created outside keyshift, no lifetime over maximum.")
        return
    columns = ("finding", "app", "appId", "keyId", "name", "managed by", "detail")
    rows = (
        (
            f.kind.replace("_", " "),
            f.credential.app_name,
            f.credential.app_id,
            f.credential.key_id,
            f.credential.display_name or "-",
            f.credential.managed_by or "-",
            f.detail,
        )
        for f in found
    )
    out.print(
        new_table(
            f"Entra findings ({len(found)})", columns, rows, no_wrap=columns[:1] + columns[2:4]
        )
    )


@exit_on_error
def foreign(server: ServerOption = None, output: OutputOption = Format.TABLE) -> None:
    """Versions at the issuers of managed credentials that keyshift did not issue (a
    password or client secret made by hand), asked live of each issuer; exits 1 when
    there are any. Changes nothing."""
    import asyncio

    from keyshift.service import foreign as foreign_service

    report = answer(
        server,
        lambda client: client.foreign(),
        lambda store: asyncio.run(foreign_service.foreign_report(store, actor=actor())),
    )
    for skipped in report.unchecked:
        err.print(f"not checked: {skipped.credential}: {skipped.reason}", markup=False)
    emit(output, report, lambda: _print_foreign(report))
    if report.found:
        raise typer.Exit(1)


def _print_foreign(report: foreign_service.ForeignReport) -> None:
    if not report.found:
        out.print(
            f"No foreign versions: the issuers of {report.checked} credential(s) hold only "
            "what keyshift issued."
        )
        return
    columns = ("credential", "provider", "at the issuer", "expires", "owner", "what happens")
    rows = (
        (f.credential, f.provider, f.ref, when(f.expires_at), f.owner or "-", f.detail)
        for f in report.found
    )
    out.print(
        new_table(f"Foreign versions ({len(report.found)})", columns, rows, no_wrap=columns[:3])
    )


integrations_app = typer.Typer(
    help="Check the connections keyshift uses to reach issuers and stores.",
    no_args_is_help=True,
)


@integrations_app.command("test")
@exit_on_error
def integrations_test(
    name: Annotated[str, typer.Argument(help="Integration name.")],
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """Sign in, read the granted permissions and read from the API. Changes nothing;
    exits 1 when a check fails."""
    import asyncio

    from keyshift.service import integrations as integrations_service

    checks = answer(
        server,
        lambda client: client.test_integration(name),
        lambda store: asyncio.run(
            integrations_service.check_integration(store, name, actor=actor())
        ),
    )
    rows = ((c.name, "[green]ok[/]" if c.ok else "[red]failed[/]", c.detail) for c in checks)
    emit(
        output,
        checks,
        lambda: out.print(
            new_table(
                f"Integration {name}",
                ("check", "result", "detail"),
                rows,
                no_wrap=("check", "result"),
            )
        ),
    )
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
