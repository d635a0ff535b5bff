"""Supervision and evidence: `approvals`, `approve`, `reject`, `alerts`, `evidence` and
the `audit` trail."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from keyshift import files
from keyshift.cli import runs
from keyshift.cli._common import (
    ServerOption,
    actor,
    answer,
    bad_usage,
    client_of,
    exit_on_error,
    open_store,
)
from keyshift.cli.output import Format, OutputOption, emit, err, new_table, out, when
from keyshift.domain.clock import utcnow

if TYPE_CHECKING:
    from keyshift.service import approvals as approvals_service
    from keyshift.service import scheduler

approvals_app = typer.Typer(
    help="Supervised mode: the approval requests of rotations.", no_args_is_help=False
)


@approvals_app.callback(invoke_without_command=True)
@exit_on_error
def approvals_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include decided requests.")] = False,
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """Approval requests waiting for a decision (all of them with --all)."""
    if ctx.invoked_subcommand is not None:
        return
    from keyshift.service import approvals as approvals_service

    views = answer(
        server,
        lambda client: client.approval_requests(pending_only=not all_),
        lambda store: approvals_service.requests(store, pending_only=not all_),
    )
    emit(output, views, lambda: _print_requests(views, all_=all_))


def _print_requests(views: list[approvals_service.ApprovalView], *, all_: bool) -> None:
    if not views:
        out.print("No approval requests waiting." if not all_ else "No approval requests.")
        return
    columns = ("id", "credential", "kind", "status", "requested by", "approved", "plan")
    rows = (
        (
            v.id[:8],
            v.credential,
            v.kind,
            v.status,
            v.requested_by,
            f"{len(v.approvals)}/{v.needed}",
            v.plan_hash[:12],
        )
        for v in views
    )
    out.print(new_table("Approval requests", columns, rows, no_wrap=True))


@approvals_app.command("show")
@exit_on_error
def approvals_show(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="Request id.")],
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """What an approver decides on: credential, app, expiry, steps and rollback plan."""
    # `keyshift approvals --server URL show ID` names the server (or -o) on the group.
    group = ctx.parent.params if ctx.parent else {}
    server = server or group.get("server")
    output = output if output != Format.TABLE else group.get("output", output)
    from keyshift.service import approvals as approvals_service

    view = answer(
        server,
        lambda client: client.approval(request_id),
        lambda store: approvals_service.show(store, request_id),
    )
    emit(output, view, lambda: _print_request(view))


def _print_request(view: approvals_service.ApprovalView) -> None:
    out.print(
        f"Request {view.id} ({view.kind}) for rotation {view.rotation_id}: {view.status}",
        markup=False,
    )
    out.print(
        f"  approvals {len(view.approvals)}/{view.needed} from {', '.join(view.approvers)}"
        + (f"; rejected by {', '.join(view.rejections)}" if view.rejections else ""),
        markup=False,
    )
    sys.stdout.flush()
    out.print(json.dumps(view.summary, indent=2), markup=False)


def _decide(
    request_id: str, *, approve: bool, comment: str, server: str | None, no_wait: bool
) -> None:
    """Record the decision and run the rotation on as far as it goes (at the server, by
    following it there); exit 1 unless it ends healthy."""
    if no_wait and not server:
        bad_usage("--no-wait: only with --server (an embedded decision runs here)")
    if server:
        with client_of(server) as client:
            view = client.approval(request_id)
            shown = runs.ended_steps(client.rotation(view.rotation_id))
            decision = client.decide(request_id, approve=approve, comment=comment)
            if no_wait:
                out.print(
                    f"{decision.decision} request {decision.request_id[:8]}; rotation "
                    f"{decision.rotation_id} goes on at the server",
                    markup=False,
                )
                return
            timeline = runs.follow(client, decision.rotation_id, shown=shown)
            runs.print_rotation_end(timeline, client.approval_requests)
        runs.exit_unless_healthy(timeline.rotation.state)
        return
    import asyncio

    from keyshift.service import approvals as approvals_service

    with open_store() as store:
        rotation_id, state = asyncio.run(
            approvals_service.decide(
                store,
                request_id,
                approver=actor(),
                approve=approve,
                comment=comment,
                on_event=runs.progress,
            )
        )
        runs.print_stored_rotation_end(store, rotation_id)
    runs.exit_unless_healthy(state)


NoWait = Annotated[
    bool,
    typer.Option("--no-wait", help="With --server: record the decision and return."),
]


def _decision(*, approve: bool, doc: str) -> Callable[..., None]:
    """`approve` or `reject`: the same command but for the decision."""

    def decide(
        request_id: Annotated[str, typer.Argument(help="Approval request id (or its start).")],
        comment: Annotated[str, typer.Option(help="Why, for the record.")] = "",
        no_wait: NoWait = False,
        server: ServerOption = None,
    ) -> None:
        _decide(request_id, approve=approve, comment=comment, server=server, no_wait=no_wait)

    decide.__name__ = decide.__qualname__ = "approve" if approve else "reject"
    decide.__doc__ = doc
    return exit_on_error(decide)


approve = _decision(
    approve=True, doc="Approve a rotation (or a revocation); it runs as soon as enough approved."
)
reject = _decision(
    approve=False,
    doc="""Reject a rotation (it fails, nothing changed) or a revocation (the old version
    stays valid and the rotation needs attention).""",
)


@exit_on_error
def alerts(
    limit: Annotated[int, typer.Option(help="How many of the newest to show.")] = 50,
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """The alerts the worker raised: expiry thresholds crossed, secrets added outside
    keyshift, lifetimes over the maximum."""
    from keyshift.service import scheduler

    rows = answer(
        server,
        lambda client: client.alerts(limit=limit),
        lambda store: scheduler.alerts(store, limit=limit),
    )
    emit(output, rows, lambda: _print_alerts(rows))


def _print_alerts(rows: list[scheduler.Alert]) -> None:
    if not rows:
        out.print("No alerts raised.")
        return
    columns = ("raised", "kind", "threshold", "subject", "what", "expires", "sent")
    table_rows = (
        (
            when(row.raised_at),
            row.kind.replace("_", " "),
            row.threshold or "-",
            row.subject,
            str(
                row.detail.get("credential")
                or f"{row.detail.get('app', '?')} ({row.detail.get('app_id', '?')})"
            ),
            str(row.detail.get("expires_at", "-"))[:19],
            "yes" if row.delivered else "[yellow]pending[/]",
        )
        for row in rows
    )
    title = f"Alerts (newest {len(rows)})"
    out.print(new_table(title, columns, table_rows, no_wrap=("raised", "kind", "subject")))


@exit_on_error
def evidence(
    rotation_id: Annotated[
        str,
        typer.Argument(
            help="Rotation id (or a unique prefix); or `verify` to check a bundle file."
        ),
    ],
    file: Annotated[
        Path | None, typer.Argument(help="With `verify`: the bundle file to check.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the bundle here, not stdout.")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Export one rotation's evidence bundle as JSON; `evidence verify FILE` checks one.

    A bundle verifies when its audit entries recompute, its statements agree with
    them, each entry is unchanged in the store and the store's chain verifies;
    otherwise the first mismatch is named and the exit code is 3.
    """
    from keyshift.service import evidence as evidence_service

    if rotation_id == "verify":
        if file is None or output is not None:
            bad_usage("usage: keyshift evidence verify FILE")
        bundle = evidence_service.load(files.read_text(file))
        if server:
            with client_of(server) as client:
                result = client.verify_evidence(bundle)
        else:
            with open_store() as store:
                result = evidence_service.verify(store, bundle)
        if not result.ok:
            err.print(f"evidence does NOT verify: {result.problem}", markup=False)
            raise typer.Exit(3)
        out.print(
            f"evidence OK: {result.entries} audit entries of rotation "
            f"{bundle['rotation']['id']} match the store; chain of "
            f"{result.chain_entries} entries verified"
        )
        return
    if file is not None:
        bad_usage("unexpected argument; did you mean `keyshift evidence verify FILE`?")
    if server:
        with client_of(server) as client:
            bundle = client.evidence(rotation_id)
    else:
        with open_store() as store:
            bundle = evidence_service.export(store, rotation_id, actor=actor(), now=utcnow())
    text = evidence_service.dumps(bundle)
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    out.print(
        f"evidence of rotation {bundle['rotation']['id']} written to {output} "
        f"({len(bundle['audit']['entries'])} audit entries)"
    )


audit_app = typer.Typer(
    help="Verify and export the tamper-evident audit trail.", no_args_is_help=True
)


@audit_app.command("verify")
@exit_on_error
def audit_verify(server: ServerOption = None) -> None:
    """Recompute the hash chain; name the first broken entry (exit 3) if any."""
    if server:
        with client_of(server) as client:
            count = client.audit_verify()
    else:
        from keyshift.store import audit

        with open_store() as store, store.transaction() as s:
            count = audit.verify(s)
    out.print(f"audit chain OK: {count} entries verified")


@audit_app.command("export")
@exit_on_error
def audit_export(
    format: Annotated[str, typer.Option("--format", help="Only jsonl.")] = "jsonl",
    server: ServerOption = None,
) -> None:
    """Write every audit entry as JSON Lines to stdout (for a SIEM)."""
    if format != "jsonl":
        bad_usage("--format: must be jsonl")
    if server:
        with client_of(server) as client:
            for entry in client.audit_entries():
                sys.stdout.write(json.dumps(entry, sort_keys=True) + "\n")
        return
    with open_store() as store:
        for entry in store.audit_entries():
            sys.stdout.write(json.dumps(entry, sort_keys=True) + "\n")
