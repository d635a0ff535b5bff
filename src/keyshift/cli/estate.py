"""The estate: `plan`, `apply`, `status` (one row per credential) and `reference`."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from keyshift.cli._common import ServerOption, actor, answer, client_of, exit_on_error, open_store
from keyshift.cli.output import (
    Format,
    OutputOption,
    emit,
    err,
    lifecycle,
    new_table,
    out,
    short_fingerprint,
)
from keyshift.domain.clock import utcnow

if TYPE_CHECKING:
    from rich.table import Table

    from keyshift.service import ca_plan, rotations
    from keyshift.service import estate as estate_service


def print_changes(changes: list[estate_service.Change], *, applied: bool) -> None:
    if not changes:
        out.print("No changes. The store matches the estate file.")
        return
    colours = {"+": "green", "~": "yellow", "-": "red"}
    for c in changes:
        out.print(
            f"[{colours[c.op]}]{c.op} {c.kind:<11} {c.name}[/]"
            + (f"  ({c.detail})" if c.detail else ""),
            markup=True,
        )
    counts = {op: sum(1 for c in changes if c.op == op) for op in "+~-"}
    verb = "Applied" if applied else "Plan"
    out.print(f"{verb}: {counts['+']} to add, {counts['~']} to change, {counts['-']} to remove.")


EstateFile = Annotated[Path, typer.Option("-f", "--file", help="Estate YAML file.")]


def _plan_or_apply(file: Path, server: str | None, *, apply: bool) -> None:
    """Plan or apply here or at the server; warnings (legacy fields renamed, actions that
    need a person) go to stderr before the changes."""
    from keyshift.service import ca_plan
    from keyshift.service import estate as estate_service

    if server:
        # The server validates the document; its refusal lists the same problems.
        document = estate_service.read_document(file)
        with client_of(server) as client:
            changes, warnings, frozen = client.plan_estate(document, apply=apply)
        # Accepted there, the same document parses here: its CA rotations are shown.
        estate = estate_service.parse_estate(document)
    else:
        found: list[estate_service.EstateWarning] = []
        estate = estate_service.load_estate(file, found)
        warnings = [str(w) for w in found]
        with open_store() as store:
            changes = (
                estate_service.apply_estate(store, estate, actor=actor())
                if apply
                else estate_service.plan_estate(store, estate)
            )
            frozen = estate_service.frozen(store, estate)
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)
    print_changes(changes, applied=apply)
    print_frozen(frozen)
    if not apply:
        print_ca_phases(ca_plan.ca_phases(estate))


def print_ca_phases(phases: list[ca_plan.CaPhase]) -> None:
    """For each CA (trust_bundle), its rotation's phases and the consumers of each."""
    for p in phases:
        if p.number == 1:
            out.print(
                f"CA rotation of {p.credential} (trust first, identity second):", markup=False
            )
        consumers = "; ".join(p.consumers) or "-"
        out.print(
            f"  phase {p.number} {p.name}: {p.does}\n    consumers: {consumers}", markup=False
        )


def print_frozen(frozen: list[estate_service.Frozen]) -> None:
    """One line per credential a freeze covers, with the freeze and its reason."""
    for f in frozen:
        until = f" until {f.until:%Y-%m-%d %H:%M}Z" if f.until else ""
        which = f"freeze {f.freeze_id}" if f.freeze_id else "started by this apply"
        out.print(
            f"frozen: {f.credential} ({f.freeze}, {f.source}{until}; {which}): {f.reason}",
            markup=False,
        )


@exit_on_error
def plan(file: EstateFile, server: ServerOption = None) -> None:
    """Show what `apply` would change. Changes nothing."""
    _plan_or_apply(file, server, apply=False)


@exit_on_error
def apply(file: EstateFile, server: ServerOption = None) -> None:
    """Validate the estate file and store it. A refused file changes nothing (exit 2)."""
    _plan_or_apply(file, server, apply=True)


def status_table(status_rows: list[rotations.StatusRow]) -> Table:
    """One line per credential, narrow enough for a terminal: ids and fingerprints
    shortened, expiry as a date with the days left, dates of the last and the next
    rotation (`-o json` has every field whole)."""
    columns = ("credential", "lifecycle", "overlap", "version", "fingerprint", "expires")
    rotated = ("last rotated", "last rotation", "next rotation")
    return new_table(
        "Credentials",
        (*columns, *rotated, "owner"),
        (
            (
                row.credential,
                lifecycle(row.lifecycle.value),
                row.overlap if row.overlap == "dual" else f"[yellow]{row.overlap}[/]",
                row.version_id[:8] if row.version_id else "-",
                short_fingerprint(row.fingerprint),
                _expires(row),
                _date(row.last_rotated_at),
                row.last_rotation or "-",
                _next_rotation(row.next_rotation),
                row.owner or "-",
            )
            for row in status_rows
        ),
        no_wrap=(*columns, *rotated),
    )


def _date(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d") if moment else "-"


def _expires(row: rotations.StatusRow) -> str:
    if row.expires_at is None:
        return "-"
    return f"{_date(row.expires_at)} ({row.days_left}d)"


def _next_rotation(word: str) -> str:
    return {"due": "[yellow]due[/]", "rotating": "[cyan]rotating[/]"}.get(word, word)


@exit_on_error
def status(
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            max=500,
            help="Show at most this many credentials, by name; a large estate is read one "
            "page at a time.",
        ),
    ] = None,
    cursor: Annotated[
        str | None,
        typer.Option(
            "--cursor", help="Start after the page that printed it (with --limit; see stderr)."
        ),
    ] = None,
) -> None:
    """One row per credential: lifecycle, current version fingerprint, expiry."""
    from keyshift.service import catalog, rotations

    if limit is None and cursor is None:
        rows = answer(
            server,
            lambda client: client.status_rows(),
            lambda store: rotations.status_rows(store, now=utcnow()),
        )
        emit(output, rows, lambda: _print_status(rows))
        return
    size = limit or catalog.PAGE_SIZE
    page = answer(
        server,
        lambda client: client.status_page(limit=size, cursor=cursor),
        lambda store: catalog.page_by_name(
            store, catalog.Criteria(sort="name"), now=utcnow(), limit=size, cursor=cursor
        ),
    )
    emit(output, page.rows, lambda: _print_status(page.rows))
    if page.next_cursor:
        # On stderr, so that -o json stays one list a script can read.
        err.print(f"more: keyshift status --limit {size} --cursor {page.next_cursor}", markup=False)


def _print_status(rows: list[rotations.StatusRow]) -> None:
    """The table, then why each frozen credential is frozen."""
    out.print(status_table(rows))
    for row in rows:
        if row.frozen:
            out.print(f"{row.credential}: {row.frozen}", markup=False)


def reference() -> None:
    """Print the estate-file reference (Markdown), generated from the models."""
    from keyshift.service.reference import estate_reference

    sys.stdout.write(estate_reference())
