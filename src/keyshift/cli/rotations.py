"""Rotations: `preflight`, `rotate`, `resume`, `rollback`, `history`, `show`, `impact`
and the `worker` that runs them unattended."""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

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
from keyshift.cli.output import (
    Format,
    OutputOption,
    clock,
    day,
    emit,
    ms,
    new_table,
    out,
    plain,
    short_fingerprint,
    when,
)
from keyshift.domain.clock import utcnow
from keyshift.domain.preflight import PreflightResult, Readiness
from keyshift.domain.states import RotationState, Trigger
from keyshift.errors import ServerRefused

if TYPE_CHECKING:
    from rich.table import Table

    from keyshift.service import rotations

CredentialName = Annotated[str, typer.Argument(help="Credential name.")]
RotationId = Annotated[str, typer.Argument(help="Rotation id (or a unique prefix).")]

READINESS_COLOURS = {"ready": "green", "manual review required": "yellow", "blocked": "red"}


def _preflight(name: str, server: str | None, output: Format = Format.TABLE) -> None:
    """Preflight at the server (its dry-run route) or on the local store and print it;
    exit 1 unless every step is ready."""
    import asyncio

    from keyshift.service import rotations

    plan_hash, results = answer(
        server,
        lambda client: client.dry_run(name),
        lambda store: asyncio.run(rotations.preflight(store, name, actor=actor())),
    )
    data = {
        "credential": name,
        "plan_hash": plan_hash,
        "ready": all(r.readiness == Readiness.READY for _step, r in results),
        "steps": [
            {"step": step, "readiness": r.readiness, "reason": r.reason} for step, r in results
        ],
    }
    emit(output, data, lambda: _print_preflight(name, plan_hash, results))
    if not data["ready"]:
        raise typer.Exit(1)


def _print_preflight(name: str, plan_hash: str, results: list[tuple[str, PreflightResult]]) -> None:
    """One row per step: step, readiness, reason."""
    rows = (
        (
            Text(step),
            Text(r.readiness.value, style=READINESS_COLOURS.get(r.readiness.value, "")),
            Text(r.reason or "-"),
        )
        for step, r in results
    )
    title = f"Preflight of {name} (plan {plan_hash[:12]})"
    out.print(
        new_table(title, ("step", "readiness", "reason"), rows, no_wrap=("step", "readiness"))
    )


@exit_on_error
def preflight(
    name: CredentialName, server: ServerOption = None, output: OutputOption = Format.TABLE
) -> None:
    """Check every step of a rotation of a credential, provider first, changing nothing:
    one row per step (ready, manual review required, blocked) and why. Exits 0 only when
    every step is ready; the result is recorded in the audit trail."""
    _preflight(name, server, output)


@exit_on_error
def rotate(
    name: CredentialName,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Preflight only (same as `keyshift preflight`).")
    ] = False,
    grace: Annotated[str | None, typer.Option(help="Override the grace period, e.g. 0s.")] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            help="Why it is rotated now, for the audit trail and the evidence (default "
            "`manual`; required with --break-glass)."
        ),
    ] = None,
    break_glass: Annotated[
        bool,
        typer.Option(
            "--break-glass",
            help="Rotate now, outside the policy's window and through any freeze of this "
            "credential (a leaked secret). Needs --reason; at a server, a prod credential "
            "also needs rotations:break_glass, and approvals become one from a second person.",
        ),
    ] = False,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="With --server: print the rotation id and return."),
    ] = False,
    server: ServerOption = None,
) -> None:
    """Rotate a credential now (or preflight it with --dry-run). With --server the server
    runs it and the command follows it, step by step, until it rests; the exit code is the
    same as an embedded run's."""
    import asyncio

    from keyshift.domain.durations import parse_duration

    grace_td = None
    if grace is not None:
        try:
            grace_td = parse_duration(grace)
        except ValueError as exc:
            bad_usage(f"--grace: {exc}")
    if break_glass and reason is None:
        bad_usage("--reason: required with --break-glass (say why it cannot wait)")
    reason = (reason if reason is not None else "manual").strip()
    if not reason or len(reason) > 200:
        bad_usage("--reason: give 1 to 200 characters")
    if break_glass and dry_run:
        bad_usage("--break-glass: not with --dry-run (a preflight changes nothing)")
    if no_wait and not server:
        bad_usage("--no-wait: only with --server (an embedded rotation runs here)")
    if dry_run:
        _preflight(name, server)
        return
    if server:
        with client_of(server) as client:
            started = client.start_rotation(
                name, grace=grace, reason=reason, break_glass=break_glass
            )
            out.print(f"Rotating {name} (rotation {started.rotation_id})")
            if no_wait:
                out.print(
                    f"  it runs at the server; `keyshift show {started.rotation_id}` "
                    "shows its steps"
                )
                return
            timeline = runs.follow(client, started.rotation_id, shown=set())
            runs.print_rotation_end(timeline, client.approval_requests)
        runs.exit_unless_healthy(timeline)
        return
    from keyshift.service import rotations

    with open_store() as store:
        rotation_id, _state = asyncio.run(
            rotations.rotate(
                store,
                name,
                actor=actor(),
                grace=grace_td,
                reason=reason,
                trigger=Trigger.BREAK_GLASS if break_glass else Trigger.CLI,
                on_event=runs.progress_with_header(name),
            )
        )
        runs.exit_unless_healthy(runs.print_stored_rotation_end(store, rotation_id))


@exit_on_error
def resume(server: ServerOption = None) -> None:
    """Continue every unfinished rotation from its journal (after a crash or a grace period)."""
    import asyncio

    from keyshift.service import rotations

    if server:
        _resume_at(server)
        return
    with open_store() as store:
        results = asyncio.run(rotations.resume(store, actor=actor(), on_event=runs.progress))
        if not results:
            out.print("No unfinished rotations.")
        ends: list[rotations.Timeline] = []
        for rotation_id, credential, state in results:
            if state is None:
                out.print(f"rotation {rotation_id} ({credential}) is held by a live worker")
                continue
            ends.append(runs.print_stored_rotation_end(store, rotation_id))
        runs.exit_unless_healthy(*ends)


def _resume_at(server: str) -> None:
    """`resume` at a server: resume each unfinished rotation there and runs.follow it."""
    with client_of(server) as client:
        found = client.unfinished()
        if not found:
            out.print("No unfinished rotations.")
        ends: list[rotations.Timeline] = []
        for unfinished in found:
            rotation_id = unfinished.rotation_id
            shown = runs.ended_steps(client.rotation(rotation_id))
            try:
                client.resume(rotation_id)
            except ServerRefused as exc:
                if exc.code == "lease-held":
                    out.print(
                        f"rotation {rotation_id} ({unfinished.credential}) is held by a live worker"
                    )
                    continue
                # Already running at the server, or finished meanwhile: runs.follow it to its end.
                if exc.code not in ("rotation-in-progress", "conflict"):
                    raise
            ends.append(runs.follow(client, rotation_id, shown=shown))
        for timeline in ends:
            runs.print_rotation_end(timeline, client.approval_requests)
    runs.exit_unless_healthy(*ends)


@exit_on_error
def rollback(
    rotation_id: RotationId,
    reason: Annotated[
        str, typer.Option("--reason", help="Why the new version is rolled back (audited).")
    ],
    server: ServerOption = None,
) -> None:
    """Roll back a rotation whose new version is bad, while the old one is still valid (in
    grace, awaiting revoke approval, or ended needs_attention): the old value goes back to
    the consumers that were switched and they reload; the new version is kept disabled.
    Exits 1 when refused (nothing changed) or when a consumer could not be restored."""
    import asyncio

    from keyshift.service import rotations

    if server:
        with client_of(server) as client:
            timeline = client.roll_back(rotation_id, reason)
            state = RotationState(timeline.rotation.state)
            runs.print_rotation_end(timeline, client.approval_requests)
    else:
        with open_store() as store:
            full_id, state = asyncio.run(
                rotations.roll_back(
                    store, rotation_id, actor=actor(), reason=reason, on_event=runs.progress
                )
            )
            runs.print_stored_rotation_end(store, full_id)
    if state != RotationState.ROLLED_BACK:
        raise typer.Exit(1)


@exit_on_error
def history(
    name: CredentialName, server: ServerOption = None, output: OutputOption = Format.TABLE
) -> None:
    """Every rotation of a credential, oldest first."""
    from keyshift.service import rotations

    found = answer(
        server,
        lambda client: client.history_rows(name),
        lambda store: rotations.history_rows(store, name),
    )
    columns = (
        "rotation",
        "state",
        "trigger",
        "requested by",
        "requested",
        "took",
        "new version",
        "reason",
    )
    rows = (
        (
            r.id,
            r.state,
            r.trigger or "-",
            r.requested_by,
            when(r.requested_at),
            ms(r.duration),
            (r.new_version_id or "-")[:8],
            r.reason or "",
            r.error or "",
        )
        for r in found
    )
    emit(
        output,
        found,
        lambda: out.print(new_table(f"Rotations of {name}", (*columns, "error"), rows)),
    )


@exit_on_error
def versions(
    name: CredentialName, server: ServerOption = None, output: OutputOption = Format.TABLE
) -> None:
    """Every version of a credential, oldest first: id, status, fingerprint, expiry; for a
    certificate its subject, SANs, not_after and thumbprint (never a value or a key)."""
    from keyshift.service import rotations

    detail = answer(
        server,
        lambda client: client.credential_detail(name),
        lambda store: rotations.credential_detail(store, name, now=utcnow()),
    )
    emit(output, detail.versions, lambda: out.print(versions_table(name, detail.versions)))


def versions_table(name: str, lines: list[rotations.VersionLine]) -> Table:
    """One line per version, narrow enough for a terminal: id and fingerprint shortened
    (for a certificate the fingerprint is its thumbprint, and its expiry its not_after),
    with subject and SANs when the credential has certificates (`-o json` has every field
    whole)."""
    columns = ("version", "#", "status", "provenance", "fingerprint", "created", "expires")
    certificates = any(line.certificate is not None for line in lines)

    def row(line: rotations.VersionLine) -> tuple[str, ...]:
        base = (
            line.id[:8],
            str(line.serial),
            line.status,
            line.provenance,
            short_fingerprint(line.fingerprint),
            day(line.created_at),
            day(line.expires_at),
        )
        if not certificates:
            return base
        cert = line.certificate
        if cert is None:
            return (*base, "-", "-")
        return (*base, cert.subject, ", ".join(cert.sans) or "-")

    extra = ("subject", "sans") if certificates else ()
    return new_table(
        f"Versions of {name}", (*columns, *extra), (row(line) for line in lines), no_wrap=columns
    )


def timeline_table(t: rotations.Timeline) -> Table:
    title = (
        f"Rotation {t.rotation.id} of {t.credential}: {t.rotation.state} (plan {t.plan_hash[:12]})"
    )
    columns = ("#", "step", "try", "outcome", "started", "duration", "error", "note")
    rows = (
        (
            str(s.seq),
            s.name,
            str(s.attempt),
            s.status,
            clock(s.started_at),
            ms(s.duration),
            s.error or "",
            s.note or "",
        )
        for s in t.steps
    )
    return new_table(title, columns, rows)


def _timeline_data(t: rotations.Timeline) -> dict[str, Any]:
    """A rotation with its steps, as the API's `GET /v1/rotations/{id}` has them (but each
    step's duration in seconds)."""
    return {
        **plain(t.rotation),
        "credential": t.credential,
        "plan_hash": t.plan_hash,
        "grace_until": t.grace_until,
        "attention": t.attention,
        "running": t.running,
        "steps": [{**plain(s), "duration_seconds": plain(s.duration)} for s in t.steps],
        "tickets": [plain(k) for k in t.tickets],
        "rollout": str(t.rollout),
        "split": t.split,
    }


def _print_timeline(t: rotations.Timeline) -> None:
    out.print(timeline_table(t))
    if t.attention:
        out.print(f"Needs attention: {t.attention}", markup=False)
    if t.split:
        _print_split(t.split)
    if t.tickets:
        out.print("Tickets: " + ", ".join(f"{k.channel} {k.reference}" for k in t.tickets))


def _print_split(split: dict[str, Any]) -> None:
    """Who a `rollback: failing_only` rotation left on which version, one line each."""
    lines = [
        (f"on the new version {split['new_version_id']}", split["on_new"]),
        (f"rolled back to the old version {split['old_version_id']}", split["rolled_back"]),
        ("not restored (still on the new version)", split["not_restored"]),
        ("never switched (on the old version)", split["never_switched"]),
    ]
    out.print("Consumers split (rollback: failing_only):", markup=False)
    for label, consumers in lines:
        if consumers:
            out.print(f"  {label}: {', '.join(consumers)}", markup=False)
    out.print(f"  resolve: {split['resolve']}", markup=False)


@exit_on_error
def show(
    rotation_id: RotationId, server: ServerOption = None, output: OutputOption = Format.TABLE
) -> None:
    """The step timeline of one rotation, with durations."""
    from keyshift.service import rotations

    timeline = answer(
        server,
        lambda client: client.rotation(rotation_id),
        lambda store: rotations.rotation_timeline(store, rotation_id),
    )
    emit(output, _timeline_data(timeline), lambda: _print_timeline(timeline))


@exit_on_error
def worker(
    interval: Annotated[str, typer.Option(help="Time between scans.")] = "60s",
    once: Annotated[bool, typer.Option("--once", help="Run one scan and exit.")] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=256,
            help="Rotations run at once (default: the estate's worker.concurrency, 16).",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Serve Prometheus /metrics on this port."),
    ] = None,
    metrics_address: Annotated[
        str, typer.Option(help="Address /metrics listens on (no token: keep it local).")
    ] = "127.0.0.1",
    output: OutputOption = Format.TABLE,
) -> None:
    """Resume unfinished rotations, revoke after grace periods, start due auto-rotations
    (several at once, the most urgent first), and deliver notifications. Several workers
    may share a PostgreSQL store; an SQLite store takes one."""
    import asyncio

    import prometheus_client

    from keyshift.cli.fleet import FleetProgress, summary
    from keyshift.context import PluginContext
    from keyshift.domain.durations import parse_duration
    from keyshift.service import metrics as metrics_service
    from keyshift.service import scheduler

    try:
        every = parse_duration(interval)
    except ValueError as exc:
        bad_usage(f"--interval: {exc}")
    as_json = output != Format.TABLE
    if output == Format.YAML:
        bad_usage("-o yaml: the worker prints a table or one JSON summary per scan")
    with open_store() as store, store.single_worker():
        context = PluginContext()
        if metrics_port is not None:
            registry = metrics_service.registry_for(store, pacer=context.pacing)
            prometheus_client.start_http_server(metrics_port, metrics_address, registry=registry)
            out.print(f"metrics on http://{metrics_address}:{metrics_port}/metrics")
        progress = FleetProgress(out, context.pacing)

        def scanned(c: dict[str, int]) -> None:
            progress.finish()
            if as_json:
                sys.stdout.write(summary(c, progress, context.pacing) + "\n")
                sys.stdout.flush()
                return
            out.print(
                f"{utcnow():%H:%M:%S} scan: {c['synced']} synced, {c['resumed']} "
                f"resumed, {c['retired']} retired, {c['alerts']} alerts, "
                f"{c['notified']} notified, {c['started']} started, "
                f"{progress.failed} failed, {c['waiting']} waiting for window"
            )

        try:
            asyncio.run(
                scheduler.worker_loop(
                    store,
                    actor=f"worker:{socket.gethostname()}",
                    interval=every,
                    once=once,
                    on_event=None if as_json else runs.progress,
                    on_scan=scanned,
                    concurrency=concurrency,
                    tally=progress,
                    context=context,
                )
            )
        except KeyboardInterrupt:
            progress.finish()
            out.print("worker stopped")


@exit_on_error
def impact(
    name: CredentialName,
    as_json: Annotated[bool, typer.Option("--json", help="Same as -o json.")] = False,
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """Every issuer and consumer a rotation of NAME touches, in run order, and where."""
    from keyshift.service import impact as impact_service

    if as_json and output == Format.YAML:
        bad_usage("--json: not with -o yaml (--json is -o json)")
    rows = answer(
        server, lambda client: client.impact(name), lambda store: impact_service.impact(store, name)
    )
    columns = ("#", "phase", "order", "type", "on_failure", "consumer", "runs on", "where")
    table_rows = (
        (
            str(row.position),
            row.phase,
            "" if row.order is None else str(row.order),
            row.type,
            row.on_failure or "",
            row.consumer or "",
            row.runs_on,
            row.where_text,
        )
        for row in rows
    )
    emit(
        Format.JSON if as_json else output,
        rows,
        lambda: out.print(new_table(f"Blast radius of rotating {name}", columns, table_rows)),
    )
