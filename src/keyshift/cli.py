"""The `keyshift` command line. Every error is one clear line and a non-zero exit.

Exit codes: 0 success; 1 an operation failed or a rotation did not end healthy;
2 a refused estate file or bad option; 3 the audit chain (or an evidence bundle) does not
verify.
"""

from __future__ import annotations

import asyncio
import functools
import getpass
import json
import os
import socket
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from keyshift import __version__, logs
from keyshift.client import WAITING_STATES, Client, ServerRefused
from keyshift.domain.clock import utcnow
from keyshift.domain.durations import format_duration, parse_duration
from keyshift.domain.estate import DEFAULT_POLICY_NAME
from keyshift.domain.preflight import PreflightResult, Readiness
from keyshift.domain.states import RotationState, StepStatus
from keyshift.engine.journal import StepEvent
from keyshift.errors import AuditChainBroken, EstateInvalid, KeyshiftError
from keyshift.service import approvals as approvals_service
from keyshift.service import entra as entra_service
from keyshift.service import estate as estate_service
from keyshift.service import evidence as evidence_service
from keyshift.service import foreign as foreign_service
from keyshift.service import identities, rotations, scheduler
from keyshift.service import impact as impact_service
from keyshift.service import integrations as integrations_service
from keyshift.service import keys as keys_service
from keyshift.service.reference import estate_reference
from keyshift.store import audit
from keyshift.store.store import Store

app = typer.Typer(
    name="keyshift",
    help="Rotate non-human credentials without outages, with evidence an auditor accepts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
audit_app = typer.Typer(
    help="Verify and export the tamper-evident audit trail.", no_args_is_help=True
)
keys_app = typer.Typer(help="Manage the keys that protect secrets at rest.", no_args_is_help=True)
entra_app = typer.Typer(
    help="Discover Entra ID app registrations and watch their secrets' expiry.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
integrations_app = typer.Typer(
    help="Check the connections keyshift uses to reach issuers and stores.",
    no_args_is_help=True,
)
approvals_app = typer.Typer(
    help="Supervised mode: the approval requests of rotations.", no_args_is_help=False
)
app.add_typer(entra_app, name="entra")
app.add_typer(approvals_app, name="approvals")
app.add_typer(integrations_app, name="integrations")

# Piped output (CI logs, files) gets wide tables instead of rich's 80-column default.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

HEALTHY = {RotationState.COMPLETED, *WAITING_STATES}
"""The states a rotation command exits 0 in (in both modes)."""


def _actor() -> str:
    explicit = os.environ.get("KEYSHIFT_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def _errors(func: F) -> F:
    """Turn keyshift errors into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EstateInvalid as exc:
            for problem in exc.problems:
                err.print(f"error: {problem}", markup=False)
            raise typer.Exit(2) from None
        except AuditChainBroken as exc:
            err.print(f"audit chain BROKEN at {exc}", markup=False)
            raise typer.Exit(3) from None
        except ServerRefused as exc:
            # The server's refusal exits as the same error would locally: a refused estate
            # file 2 with one line per problem, everything else 1.
            if exc.code == ESTATE_INVALID and exc.problems:
                for path, message in exc.problems:
                    err.print(f"error: {path}: {message}", markup=False)
                raise typer.Exit(2) from None
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from None
        except KeyshiftError as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            # A bug or an unexpected library error: one line, no traceback (whose
            # frames could hold values), and the first line of the message only
            # (driver errors append statements and parameters below it).
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            err.print(f"error: internal error ({exc.__class__.__name__}): {first}", markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def _store(env: dict[str, str] | None = None) -> Iterator[Store]:
    if env is None and os.environ.get(SERVER_ENV):
        _refuse_embedded()
    store = Store.open(env if env is not None else dict(os.environ))
    try:
        yield store
    finally:
        store.close()


# Server mode (issue 7): `--server URL` / KEYSHIFT_SERVER, with KEYSHIFT_TOKEN ----------

SERVER_ENV = "KEYSHIFT_SERVER"
TOKEN_ENV = "KEYSHIFT_TOKEN"  # noqa: S105 (the variable's name, not a token)
SERVER_COMMANDS = (
    "alerts",
    "apply",
    "approvals",
    "approvals show",
    "approve",
    "audit export",
    "audit verify",
    "entra list",
    "entra report",
    "entra summary",
    "entra sync",
    "evidence",
    "foreign",
    "history",
    "impact",
    "integrations test",
    "plan",
    "preflight",
    "reject",
    "resume",
    "roles list",
    "rollback",
    "rotate",
    "show",
    "status",
    "tokens create",
    "tokens list",
    "tokens revoke",
    "users add",
    "users disable",
    "users list",
)
"""The commands that can talk to a server (each has `--server`); the others run embedded
only, and refuse while KEYSHIFT_SERVER is set."""

ESTATE_INVALID = "estate-invalid"
"""The problem code of a refused estate document."""

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        show_envvar=True,
        help="Ask this keyshift server (e.g. https://keyshift.example:8080) instead of the "
        f"local store, with the API token in {TOKEN_ENV}.",
    ),
]


def _client(server: str) -> Client:
    """A client of `server` with the token from KEYSHIFT_TOKEN (never a flag, so it stays
    out of shell history and process listings)."""
    return Client(server, os.environ.get(TOKEN_ENV) or None)


def _answer(server: str | None, remote: Callable[[Client], T], local: Callable[[Store], T]) -> T:
    """A command's answer from the server (`remote`) when `server` is set, else from the
    local store (`local`): the one place that decides where it comes from."""
    if server:
        with _client(server) as client:
            return remote(client)
    with _store() as store:
        return local(store)


def _refuse_embedded() -> NoReturn:
    """With KEYSHIFT_SERVER set, a command that cannot use the server would silently act
    on a local store instead; refuse rather than change the wrong estate."""
    raise KeyshiftError(
        f"{SERVER_ENV} is set, but this command runs only on the local store; unset "
        f"{SERVER_ENV} to run it here (server mode: {', '.join(SERVER_COMMANDS)})"
    )


def _embedded_only() -> None:
    """For commands that open no store of the test's choosing (`serve`, `demo`)."""
    if os.environ.get(SERVER_ENV):
        _refuse_embedded()


def _ended(timeline: rotations.Timeline) -> set[int]:
    """The steps of the rotation that have ended (by `seq`)."""
    return {s.seq for s in timeline.steps if s.status != StepStatus.RUNNING}


def _follow(client: Client, rotation_id: str, *, shown: set[int]) -> rotations.Timeline:
    """Print each step of a rotation at the server as it ends, as an embedded run prints
    it, until the rotation rests; return its last timeline. Steps in `shown` are not
    printed (they ended before)."""
    last: rotations.Timeline | None = None
    try:
        for last in client.follow(rotation_id):
            for step in last.steps:
                if step.seq in shown or step.status == StepStatus.RUNNING:
                    continue
                shown.add(step.seq)
                seconds = step.duration.total_seconds() if step.duration is not None else None
                status = StepStatus(step.status)
                _progress(StepEvent(last.rotation.id, step.name, status, seconds, step.error))
    except KeyboardInterrupt:
        err.print(
            f"stopped following rotation {rotation_id}; it goes on at the server "
            f"(`keyshift show {rotation_id}`)",
            markup=False,
        )
        raise typer.Exit(130) from None
    if last is None:  # follow yields at least once; this keeps the type exact
        raise KeyshiftError(f"rotation {rotation_id}: no answer from the server")
    return last


def _exit_unless_healthy(*states: RotationState | str) -> None:
    """Exit 1 when a rotation did not end healthy (as `rotate` does in both modes)."""
    if any(RotationState(state) not in HEALTHY for state in states):
        raise typer.Exit(1)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _clock(value: datetime) -> str:
    return value.strftime("%H:%M:%S.%f")[:-3]


def _ms(value: timedelta | float | None) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return (
        f"{seconds * 1000:.0f} ms"
        if seconds < 10
        else format_duration(timedelta(seconds=round(seconds)))
    )


def _progress(event: StepEvent) -> None:
    if event.status == StepStatus.RUNNING:
        return
    mark = {"succeeded": "[green]✓[/]", "failed": "[red]✗[/]"}.get(event.status.value, "·")
    line = f"  {mark} {event.step:<34} {_ms(event.duration_s):>8}"
    out.print(line + (f"  [red]{event.error}[/]" if event.error else ""))


def _progress_with_header(credential: str) -> Callable[[StepEvent], None]:
    """Progress lines, headed by the rotation id once the rotation exists."""
    shown: set[str] = set()

    def report(event: StepEvent) -> None:
        if event.rotation_id not in shown:
            shown.add(event.rotation_id)
            out.print(f"Rotating {credential} (rotation {event.rotation_id})")
        _progress(event)

    return report


def _print_changes(changes: list[estate_service.Change], *, applied: bool) -> None:
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


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
    log_level: Annotated[str | None, typer.Option(help="Log level (default WARNING).")] = None,
) -> None:
    logs.configure(log_level)
    if version:
        out.print(f"keyshift {__version__}")
        raise typer.Exit(0)


EstateFile = Annotated[Path, typer.Option("-f", "--file", help="Estate YAML file.")]


def _plan_or_apply(file: Path, server: str | None, *, apply: bool) -> None:
    """Plan or apply here or at the server; warnings (legacy fields renamed, actions that
    need a person) go to stderr before the changes."""
    if server:
        # The server validates the document; its refusal lists the same problems.
        document = estate_service.read_document(file)
        with _client(server) as client:
            changes, warnings = client.plan_estate(document, apply=apply)
    else:
        found: list[estate_service.EstateWarning] = []
        estate = estate_service.load_estate(file, found)
        warnings = [str(w) for w in found]
        with _store() as store:
            changes = (
                estate_service.apply_estate(store, estate, actor=_actor())
                if apply
                else estate_service.plan_estate(store, estate)
            )
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)
    _print_changes(changes, applied=apply)


@app.command()
@_errors
def plan(file: EstateFile, server: ServerOption = None) -> None:
    """Show what `apply` would change. Changes nothing."""
    _plan_or_apply(file, server, apply=False)


@app.command()
@_errors
def apply(file: EstateFile, server: ServerOption = None) -> None:
    """Validate the estate file and store it. A refused file changes nothing (exit 2)."""
    _plan_or_apply(file, server, apply=True)


def _status_table(status_rows: list[rotations.StatusRow]) -> Table:
    table = Table(title="Credentials", title_justify="left")
    for col in (
        "credential",
        "lifecycle",
        "overlap",
        "version",
        "fingerprint",
        "expires",
        "days left",
        "last rotation",
        "owner",
    ):
        table.add_column(col, no_wrap=col != "owner")
    colours = {
        "Active": "green",
        "Expiring Soon": "yellow",
        "Expired": "red",
        "Needs Attention": "red",
        "Rotating": "cyan",
        "Grace Period": "cyan",
    }
    for row in status_rows:
        colour = colours.get(row.lifecycle.value, "white")
        table.add_row(
            row.credential,
            f"[{colour}]{row.lifecycle.value}[/]",
            row.overlap if row.overlap == "dual" else f"[yellow]{row.overlap}[/]",
            row.version_id[:8] if row.version_id else "-",
            row.fingerprint or "-",
            _when(row.expires_at),
            str(row.days_left) if row.days_left is not None else "-",
            row.last_rotation or "-",
            row.owner or "-",
        )
    return table


@app.command()
@_errors
def status(server: ServerOption = None) -> None:
    """One row per credential: lifecycle, current version fingerprint, expiry."""
    rows = _answer(
        server,
        lambda client: client.status_rows(),
        lambda store: rotations.status_rows(store, now=utcnow()),
    )
    out.print(_status_table(rows))


def _print_rotation_end(
    timeline: rotations.Timeline, pending: Callable[[], list[approvals_service.ApprovalView]]
) -> None:
    """The end of a run: the state reached and what comes next (`pending` lists the
    approval requests waiting, asked only when the rotation waits for one)."""
    rotation_id, state = timeline.rotation.id, RotationState(timeline.rotation.state)
    colour = "green" if state in HEALTHY else "red"
    out.print(f"{timeline.credential}: rotation {rotation_id} [{colour}]{state.value}[/]")
    if state == RotationState.GRACE:
        out.print(
            f"  old version stays valid until {_when(timeline.grace_until)}; "
            "`keyshift worker` or `keyshift resume` revokes it then"
        )
    if state in (RotationState.AWAITING_APPROVAL, RotationState.AWAITING_REVOKE_APPROVAL):
        for view in pending():
            if view.rotation_id == rotation_id:
                out.print(
                    f"  waiting for approval: request {view.id[:8]} needs {view.needed} of "
                    f"{', '.join(view.approvers)}; `keyshift approve {view.id[:8]}`"
                )
    if timeline.rotation.error:
        out.print(f"  error: {timeline.rotation.error}", markup=False)
    if timeline.attention:
        out.print(f"  needs attention: {timeline.attention}", markup=False)


def _print_stored_rotation_end(store: Store, rotation_id: str) -> None:
    _print_rotation_end(
        rotations.rotation_timeline(store, rotation_id), lambda: approvals_service.requests(store)
    )


READINESS_COLOURS = {"ready": "green", "manual review required": "yellow", "blocked": "red"}


def _preflight(name: str, server: str | None) -> None:
    """Preflight at the server (its dry-run route) or on the local store, and print it."""
    plan_hash, results = _answer(
        server,
        lambda client: client.dry_run(name),
        lambda store: asyncio.run(rotations.preflight(store, name, actor=_actor())),
    )
    _print_preflight(name, plan_hash, results)


def _print_preflight(name: str, plan_hash: str, results: list[tuple[str, PreflightResult]]) -> None:
    """Print one row per step (step, readiness, reason); exit 1 unless every step is ready."""
    table = Table(title=f"Preflight of {name} (plan {plan_hash[:12]})", title_justify="left")
    for col in ("step", "readiness", "reason"):
        table.add_column(col, no_wrap=col != "reason")
    for step, result in results:
        readiness = result.readiness.value
        table.add_row(
            Text(step),
            Text(readiness, style=READINESS_COLOURS.get(readiness, "")),
            Text(result.reason or "-"),
        )
    out.print(table)
    if any(r.readiness != Readiness.READY for _step, r in results):
        raise typer.Exit(1)


@app.command("preflight")
@_errors
def preflight_command(
    name: Annotated[str, typer.Argument(help="Credential name.")], server: ServerOption = None
) -> None:
    """Check every step of a rotation of a credential, provider first, changing nothing:
    one row per step (ready, manual review required, blocked) and why. Exits 0 only when
    every step is ready; the result is recorded in the audit trail."""
    _preflight(name, server)


@app.command()
@_errors
def rotate(
    name: Annotated[str, typer.Argument(help="Credential name.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Preflight only (same as `keyshift preflight`).")
    ] = False,
    grace: Annotated[str | None, typer.Option(help="Override the grace period, e.g. 0s.")] = None,
    no_wait: Annotated[
        bool,
        typer.Option("--no-wait", help="With --server: print the rotation id and return."),
    ] = False,
    server: ServerOption = None,
) -> None:
    """Rotate a credential now (or preflight it with --dry-run). With --server the server
    runs it and the command follows it, step by step, until it rests; the exit code is the
    same as an embedded run's."""
    grace_td = None
    if grace is not None:
        try:
            grace_td = parse_duration(grace)
        except ValueError as exc:
            err.print(f"error: --grace: {exc}", markup=False)
            raise typer.Exit(2) from None
    if no_wait and not server:
        err.print("error: --no-wait: only with --server (an embedded rotation runs here)")
        raise typer.Exit(2)
    if dry_run:
        _preflight(name, server)
        return
    if server:
        with _client(server) as client:
            started = client.start_rotation(name, grace=grace, reason="manual")
            out.print(f"Rotating {name} (rotation {started.rotation_id})")
            if no_wait:
                out.print(
                    f"  it runs at the server; `keyshift show {started.rotation_id}` "
                    "shows its steps"
                )
                return
            timeline = _follow(client, started.rotation_id, shown=set())
            _print_rotation_end(timeline, client.approval_requests)
        _exit_unless_healthy(timeline.rotation.state)
        return
    with _store() as store:
        rotation_id, state = asyncio.run(
            rotations.rotate(
                store, name, actor=_actor(), grace=grace_td, on_event=_progress_with_header(name)
            )
        )
        _print_stored_rotation_end(store, rotation_id)
        _exit_unless_healthy(state)


@app.command()
@_errors
def resume(server: ServerOption = None) -> None:
    """Continue every unfinished rotation from its journal (after a crash or a grace period)."""
    if server:
        _resume_at(server)
        return
    with _store() as store:
        results = asyncio.run(rotations.resume(store, actor=_actor(), on_event=_progress))
        if not results:
            out.print("No unfinished rotations.")
        states: list[RotationState] = []
        for rotation_id, credential, state in results:
            if state is None:
                out.print(f"rotation {rotation_id} ({credential}) is held by a live worker")
                continue
            _print_stored_rotation_end(store, rotation_id)
            states.append(state)
        _exit_unless_healthy(*states)


def _resume_at(server: str) -> None:
    """`resume` at a server: resume each unfinished rotation there and follow it."""
    with _client(server) as client:
        found = client.unfinished()
        if not found:
            out.print("No unfinished rotations.")
        ends: list[rotations.Timeline] = []
        for unfinished in found:
            rotation_id = unfinished.rotation_id
            shown = _ended(client.rotation(rotation_id))
            try:
                client.resume(rotation_id)
            except ServerRefused as exc:
                if exc.code == "lease-held":
                    out.print(
                        f"rotation {rotation_id} ({unfinished.credential}) is held by a live worker"
                    )
                    continue
                # Already running at the server, or finished meanwhile: follow it to its end.
                if exc.code not in ("rotation-in-progress", "conflict"):
                    raise
            ends.append(_follow(client, rotation_id, shown=shown))
        for timeline in ends:
            _print_rotation_end(timeline, client.approval_requests)
    _exit_unless_healthy(*(t.rotation.state for t in ends))


@app.command()
@_errors
def rollback(
    rotation_id: Annotated[str, typer.Argument(help="Rotation id (or a unique prefix).")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why the new version is rolled back (audited).")
    ],
    server: ServerOption = None,
) -> None:
    """Roll back a rotation whose new version is bad, while the old one is still valid (in
    grace, awaiting revoke approval, or ended needs_attention): the old value goes back to
    the consumers that were switched and they reload; the new version is kept disabled.
    Exits 1 when refused (nothing changed) or when a consumer could not be restored."""
    if server:
        with _client(server) as client:
            timeline = client.roll_back(rotation_id, reason)
            state = RotationState(timeline.rotation.state)
            _print_rotation_end(timeline, client.approval_requests)
    else:
        with _store() as store:
            full_id, state = asyncio.run(
                rotations.roll_back(
                    store, rotation_id, actor=_actor(), reason=reason, on_event=_progress
                )
            )
            _print_stored_rotation_end(store, full_id)
    if state != RotationState.ROLLED_BACK:
        raise typer.Exit(1)


@app.command()
@_errors
def history(
    name: Annotated[str, typer.Argument(help="Credential name.")],
    server: ServerOption = None,
) -> None:
    """Every rotation of a credential, oldest first."""
    found = _answer(
        server,
        lambda client: client.history_rows(name),
        lambda store: rotations.history_rows(store, name),
    )
    table = Table(title=f"Rotations of {name}", title_justify="left")
    for col in (
        "rotation",
        "state",
        "requested by",
        "requested",
        "finished",
        "new version",
        "error",
    ):
        table.add_column(col)
    for r in found:
        table.add_row(
            r.id,
            r.state,
            r.requested_by,
            _when(r.requested_at),
            _when(r.finished_at),
            (r.new_version_id or "-")[:8],
            r.error or "",
        )
    out.print(table)


def _timeline_table(t: rotations.Timeline) -> Table:
    table = Table(
        title=f"Rotation {t.rotation.id} of {t.credential}: {t.rotation.state} "
        f"(plan {t.plan_hash[:12]})",
        title_justify="left",
    )
    for col in ("#", "step", "try", "outcome", "started", "duration", "error", "note"):
        table.add_column(col)
    for s in t.steps:
        table.add_row(
            str(s.seq),
            s.name,
            str(s.attempt),
            s.status,
            _clock(s.started_at),
            _ms(s.duration),
            s.error or "",
            s.note or "",
        )
    return table


@app.command()
@_errors
def show(
    rotation_id: Annotated[str, typer.Argument(help="Rotation id (or a unique prefix).")],
    server: ServerOption = None,
) -> None:
    """The step timeline of one rotation, with durations."""
    timeline = _answer(
        server,
        lambda client: client.rotation(rotation_id),
        lambda store: rotations.rotation_timeline(store, rotation_id),
    )
    out.print(_timeline_table(timeline))


@audit_app.command("verify")
@_errors
def audit_verify(server: ServerOption = None) -> None:
    """Recompute the hash chain; name the first broken entry (exit 3) if any."""
    if server:
        with _client(server) as client:
            count = client.audit_verify()
    else:
        with _store() as store, store.transaction() as s:
            count = audit.verify(s)
    out.print(f"audit chain OK: {count} entries verified")


@audit_app.command("export")
@_errors
def audit_export(
    format: Annotated[str, typer.Option("--format", help="Only jsonl.")] = "jsonl",
    server: ServerOption = None,
) -> None:
    """Write every audit entry as JSON Lines to stdout (for a SIEM)."""
    if format != "jsonl":
        err.print("error: --format: must be jsonl")
        raise typer.Exit(2)
    if server:
        with _client(server) as client:
            for entry in client.audit_entries():
                sys.stdout.write(json.dumps(entry, sort_keys=True) + "\n")
        return
    with _store() as store:
        for entry in store.audit_entries():
            sys.stdout.write(json.dumps(entry, sort_keys=True) + "\n")


@keys_app.command("rotate-master")
@_errors
def keys_rotate_master() -> None:
    """Re-wrap every data key under a new master key; no value is lost."""
    with _store() as store:
        result = keys_service.rotate_master_key(store, actor=_actor())
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


@app.command()
@_errors
def worker(
    interval: Annotated[str, typer.Option(help="Time between scans.")] = "60s",
    once: Annotated[bool, typer.Option("--once", help="Run one scan and exit.")] = False,
) -> None:
    """Resume unfinished rotations, revoke after grace periods, start due auto-rotations."""
    try:
        every = parse_duration(interval)
    except ValueError as exc:
        err.print(f"error: --interval: {exc}", markup=False)
        raise typer.Exit(2) from None
    with _store() as store:
        try:
            asyncio.run(
                scheduler.worker_loop(
                    store,
                    actor=f"worker:{socket.gethostname()}",
                    interval=every,
                    once=once,
                    on_event=_progress,
                    on_scan=lambda c: out.print(
                        f"{utcnow():%H:%M:%S} scan: {c['synced']} synced, {c['resumed']} "
                        f"resumed, {c['retired']} retired, {c['alerts']} alerts, "
                        f"{c['started']} started"
                    ),
                )
            )
        except KeyboardInterrupt:
            out.print("worker stopped")


@entra_app.command("sync")
@_errors
def entra_sync(
    integration: Annotated[
        list[str] | None,
        typer.Option("--integration", "-i", help="Sync only this integration (repeatable)."),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Import every app registration with its owners, client secrets and certificates."""
    results = _answer(
        server,
        lambda client: client.entra_sync(integration or None),
        lambda store: asyncio.run(
            entra_service.sync(
                store,
                actor=_actor(),
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
            _when(c.end),
            str(c.days_left) if c.days_left is not None else "-",
            _state(c.state.value),
            c.managed_by or "[dim]unmanaged[/]",
        )
    return table


@entra_app.command("list")
@_errors
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
        with _client(server) as client:
            creds = client.entra_credentials(state=state, app=app_name, removed=removed)
        out.print(_entra_table(f"Entra credentials ({len(creds)})", creds))
        return
    with _store() as store:
        alerts = estate_service.current_estate(store).alerts
        creds = entra_service.inventory(store, now=utcnow(), alerts=alerts, include_removed=removed)
    if state is not None:
        creds = [c for c in creds if c.state.value.lower() == state.lower()]
    if app_name is not None:
        creds = [c for c in creds if c.app_name == app_name]
    out.print(_entra_table(f"Entra credentials ({len(creds)})", creds))


@entra_app.command("summary")
@_errors
def entra_summary(
    top: Annotated[int, typer.Option(help="How many of the most urgent to list.")] = 10,
    server: ServerOption = None,
) -> None:
    """Totals, counts expiring in 7/30/90 days, in grace, and the most urgent credentials."""
    found = _answer(
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
@_errors
def entra_report(server: ServerOption = None) -> None:
    """Secrets created outside keyshift on managed apps, and lifetimes over the maximum,
    from the synced inventory (`keyshift foreign` asks every provider's issuer live)."""
    found = _answer(
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


@app.command()
@_errors
def foreign(server: ServerOption = None) -> None:
    """Versions at the issuers of managed credentials that keyshift did not issue (a
    password or client secret made by hand), asked live of each issuer; exits 1 when
    there are any. Changes nothing."""
    report = _answer(
        server,
        lambda client: client.foreign(),
        lambda store: asyncio.run(foreign_service.foreign_report(store, actor=_actor())),
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
        table.add_row(
            f.credential, f.provider, f.ref, _when(f.expires_at), f.owner or "-", f.detail
        )
    out.print(table)
    raise typer.Exit(1)


@integrations_app.command("test")
@_errors
def integrations_test(
    name: Annotated[str, typer.Argument(help="Integration name.")],
    server: ServerOption = None,
) -> None:
    """Sign in, read the granted permissions and read from the API. Changes nothing;
    exits 1 when a check fails."""
    checks = _answer(
        server,
        lambda client: client.test_integration(name),
        lambda store: asyncio.run(
            integrations_service.check_integration(store, name, actor=_actor())
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


@approvals_app.callback(invoke_without_command=True)
@_errors
def approvals_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include decided requests.")] = False,
    server: ServerOption = None,
) -> None:
    """Approval requests waiting for a decision (all of them with --all)."""
    if ctx.invoked_subcommand is not None:
        return
    views = _answer(
        server,
        lambda client: client.approval_requests(pending_only=not all_),
        lambda store: approvals_service.requests(store, pending_only=not all_),
    )
    if not views:
        out.print("No approval requests waiting." if not all_ else "No approval requests.")
        return
    table = Table(title="Approval requests", title_justify="left")
    for col in ("id", "credential", "kind", "status", "requested by", "approved", "plan"):
        table.add_column(col, no_wrap=True)
    for v in views:
        table.add_row(
            v.id[:8],
            v.credential,
            v.kind,
            v.status,
            v.requested_by,
            f"{len(v.approvals)}/{v.needed}",
            v.plan_hash[:12],
        )
    out.print(table)


@approvals_app.command("show")
@_errors
def approvals_show(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="Request id.")],
    server: ServerOption = None,
) -> None:
    """What an approver decides on: credential, app, expiry, steps and rollback plan."""
    # `keyshift approvals --server URL show ID` names the server on the group.
    server = server or (ctx.parent.params.get("server") if ctx.parent else None)
    view = _answer(
        server,
        lambda client: client.approval(request_id),
        lambda store: approvals_service.show(store, request_id),
    )
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
        err.print("error: --no-wait: only with --server (an embedded decision runs here)")
        raise typer.Exit(2)
    if server:
        with _client(server) as client:
            view = client.approval(request_id)
            shown = _ended(client.rotation(view.rotation_id))
            decision = client.decide(request_id, approve=approve, comment=comment)
            if no_wait:
                out.print(
                    f"{decision.decision} request {decision.request_id[:8]}; rotation "
                    f"{decision.rotation_id} goes on at the server",
                    markup=False,
                )
                return
            timeline = _follow(client, decision.rotation_id, shown=shown)
            _print_rotation_end(timeline, client.approval_requests)
        _exit_unless_healthy(timeline.rotation.state)
        return
    with _store() as store:
        rotation_id, state = asyncio.run(
            approvals_service.decide(
                store,
                request_id,
                approver=_actor(),
                approve=approve,
                comment=comment,
                on_event=_progress,
            )
        )
        _print_stored_rotation_end(store, rotation_id)
    _exit_unless_healthy(state)


NoWait = Annotated[
    bool,
    typer.Option("--no-wait", help="With --server: record the decision and return."),
]


@app.command()
@_errors
def approve(
    request_id: Annotated[str, typer.Argument(help="Approval request id (or its start).")],
    comment: Annotated[str, typer.Option(help="Why, for the record.")] = "",
    no_wait: NoWait = False,
    server: ServerOption = None,
) -> None:
    """Approve a rotation (or a revocation); it runs as soon as enough approved."""
    _decide(request_id, approve=True, comment=comment, server=server, no_wait=no_wait)


@app.command()
@_errors
def reject(
    request_id: Annotated[str, typer.Argument(help="Approval request id (or its start).")],
    comment: Annotated[str, typer.Option(help="Why, for the record.")] = "",
    no_wait: NoWait = False,
    server: ServerOption = None,
) -> None:
    """Reject a rotation (it fails, nothing changed) or a revocation (the old version
    stays valid and the rotation needs attention)."""
    _decide(request_id, approve=False, comment=comment, server=server, no_wait=no_wait)


@app.command()
@_errors
def alerts(
    limit: Annotated[int, typer.Option(help="How many of the newest to show.")] = 50,
    server: ServerOption = None,
) -> None:
    """The alerts the worker raised: expiry thresholds crossed, secrets added outside
    keyshift, lifetimes over the maximum."""
    rows = _answer(
        server,
        lambda client: client.alerts(limit=limit),
        lambda store: scheduler.alerts(store, limit=limit),
    )
    if not rows:
        out.print("No alerts raised.")
        return
    table = Table(title=f"Alerts (newest {len(rows)})", title_justify="left")
    for col in ("raised", "kind", "threshold", "subject", "what", "expires", "sent"):
        table.add_column(col, no_wrap=col in ("raised", "kind", "subject"))
    for row in rows:
        d = row.detail
        what = d.get("credential") or f"{d.get('app', '?')} ({d.get('app_id', '?')})"
        table.add_row(
            _when(row.raised_at),
            row.kind.replace("_", " "),
            row.threshold or "-",
            row.subject,
            str(what),
            str(d.get("expires_at", "-"))[:19],
            "yes" if row.delivered else "[yellow]pending[/]",
        )
    out.print(table)


@app.command()
def reference() -> None:
    """Print the estate-file reference (Markdown), generated from the models."""
    sys.stdout.write(estate_reference())


DEMO_CONSUMER = textwrap.dedent(
    """
    import json, os, sys
    env = dict(l.split("=", 1) for l in open(sys.argv[1]).read().split() if "=" in l)
    cfg = json.load(open(sys.argv[2]))
    assert env["API_KEY"] == cfg["Demo"]["ApiKey"], "consumers disagree"
    print("reloaded with version", os.environ["KEYSHIFT_VERSION_ID"][:8])
    """
)


@app.command()
@_errors
def demo(
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to build it.")] = None,
) -> None:
    """Build a throw-away estate, rotate it twice, and show status, timeline and audit."""
    _embedded_only()
    root = Path(directory or tempfile.mkdtemp(prefix="keyshift-demo-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    consumer = root / "consumer.py"
    consumer.write_text(DEMO_CONSUMER, encoding="utf-8")
    json_file, env_file = root / "appsettings.json", root / "app.env"
    json_file.write_text('{\n  "Logging": {"Level": "Information"}\n}\n', encoding="utf-8")
    env_file.write_text("# demo service settings\nPORT=8080\n", encoding="utf-8")
    estate_file = root / "estate.yaml"
    estate_file.write_text(
        textwrap.dedent(
            f"""\
            credentials:
              - name: demo-api-key
                owner: team-demo
                environment: dev
                policy: {{ grace_period: 1h, max_lifetime: 90d }}
                provider: {{ type: random, length: 40 }}
                actions:
                  - type: file
                    order: 10
                    on_failure: abort
                    agent_id: null
                    config: {{ path: {json_file}, key: "Demo:ApiKey", file_format: json }}
                  - type: file
                    order: 20
                    on_failure: abort
                    config: {{ path: {env_file}, key: API_KEY, file_format: env }}
                  - type: command
                    order: 30
                    on_failure: abort
                    config:
                      argv: [{sys.executable}, {consumer}, {env_file}, {json_file}]
                      timeout: 10s
            """
        ),
        encoding="utf-8",
    )
    env = {**os.environ, "KEYSHIFT_HOME": str(root / "home")}
    env.pop("KEYSHIFT_DATABASE_URL", None)
    env.pop("KEYSHIFT_MASTER_KEY", None)
    out.print(f"[bold]keyshift demo[/] in {root}\n")
    estate = estate_service.load_estate(estate_file)
    with _store(env) as store:
        out.print(f"$ keyshift apply -f {estate_file}")
        _print_changes(estate_service.apply_estate(store, estate, actor="demo"), applied=True)
        out.print("\n$ keyshift rotate demo-api-key            # first issuance")
        asyncio.run(rotations.rotate(store, "demo-api-key", actor="demo", on_event=_progress))
        out.print("\n$ keyshift rotate demo-api-key --grace 0s # rotate, revoke the old at once")
        rotation_id, state = asyncio.run(
            rotations.rotate(
                store, "demo-api-key", actor="demo", grace=timedelta(0), on_event=_progress
            )
        )
        _print_stored_rotation_end(store, rotation_id)
        out.print("\n$ keyshift status")
        out.print(_status_table(rotations.status_rows(store, now=utcnow())))
        out.print(f"\n$ keyshift show {rotation_id}")
        out.print(_timeline_table(rotations.rotation_timeline(store, rotation_id)))
        with store.transaction() as s:
            count = audit.verify(s)
        out.print(f"\n$ keyshift audit verify\naudit chain OK: {count} entries verified")
    out.print(
        f"\nConsumers written: {json_file}, {env_file} "
        f"(values are never printed; compare fingerprints instead)."
    )
    out.print(f"Explore further with KEYSHIFT_HOME={root / 'home'} keyshift history demo-api-key")
    if state != RotationState.COMPLETED:
        raise typer.Exit(1)


# Blast radius and evidence (issue 7) --------------------------------------------------


@app.command()
@_errors
def impact(
    name: Annotated[str, typer.Argument(help="Credential name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    server: ServerOption = None,
) -> None:
    """Every issuer and consumer a rotation of NAME touches, in run order, and where."""
    if server:
        with _client(server) as client:
            rows = client.impact(name)
    else:
        with _store() as store:
            rows = impact_service.impact(store, name)
    if as_json:
        sys.stdout.write(json.dumps(impact_service.to_json(rows), indent=2) + "\n")
        return
    table = Table(title=f"Blast radius of rotating {name}", title_justify="left")
    for col in ("#", "phase", "order", "type", "on_failure", "consumer", "runs on", "where"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            str(row.position),
            row.phase,
            "" if row.order is None else str(row.order),
            row.type,
            row.on_failure or "",
            row.consumer or "",
            row.runs_on,
            row.where_text,
        )
    out.print(table)


@app.command()
@_errors
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
    if rotation_id == "verify":
        if file is None or output is not None:
            err.print("error: usage: keyshift evidence verify FILE")
            raise typer.Exit(2)
        bundle = evidence_service.load(file.read_text(encoding="utf-8"))
        if server:
            with _client(server) as client:
                result = client.verify_evidence(bundle)
        else:
            with _store() as store:
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
        err.print("error: unexpected argument; did you mean `keyshift evidence verify FILE`?")
        raise typer.Exit(2)
    if server:
        with _client(server) as client:
            bundle = client.evidence(rotation_id)
    else:
        with _store() as store:
            bundle = evidence_service.export(store, rotation_id, actor=_actor(), now=utcnow())
    text = evidence_service.dumps(bundle)
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    out.print(
        f"evidence of rotation {bundle['rotation']['id']} written to {output} "
        f"({len(bundle['audit']['entries'])} audit entries)"
    )


# Identities, API tokens and the server ---------------------------------------------

users_app = typer.Typer(
    help="Users and service accounts that may call the API.", no_args_is_help=True
)
tokens_app = typer.Typer(help="API tokens (stored hashed, shown once).", no_args_is_help=True)
roles_app = typer.Typer(help="The built-in roles and their permissions.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(roles_app, name="roles")


def _lifetime(expires_in: str) -> timedelta | None:
    if expires_in == "never":
        return None
    try:
        return parse_duration(expires_in)
    except ValueError as exc:
        err.print(f"error: --expires-in: {exc}", markup=False)
        raise typer.Exit(2) from None


def _print_token_once(issued: identities.IssuedToken) -> None:
    expires = _when(issued.info.expires_at) if issued.info.expires_at else "never"
    err.print(
        f"API token {issued.info.prefix} for {issued.info.principal} (expires {expires}). "
        "It is shown once; store it now:",
        markup=False,
    )
    # The token alone on stdout, so `TOKEN=$(keyshift tokens create ...)` captures it.
    sys.stdout.write(issued.token.reveal() + "\n")


@app.command()
@_errors
def init(
    name: Annotated[str, typer.Option(help="Name of the first admin user.")] = "admin",
    expires_in: Annotated[
        str, typer.Option("--expires-in", help="Token lifetime, e.g. 90d, or never.")
    ] = "90d",
) -> None:
    """Create the first admin and print its API token once. Refused once an admin exists."""
    lifetime = _lifetime(expires_in)
    with _store() as store:
        issued = identities.init_admin(store, name=name, actor=_actor(), lifetime=lifetime)
    _print_token_once(issued)


@users_app.command("add")
@_errors
def users_add(
    name: Annotated[str, typer.Argument(help="User or service account name.")],
    role: Annotated[list[str], typer.Option("--role", "-r", help="A built-in role (repeatable).")],
    service_account: Annotated[
        bool, typer.Option("--service-account", help="A service account, not a person.")
    ] = False,
    server: ServerOption = None,
) -> None:
    """Add a user (or service account) holding the given roles."""
    kind = "service_account" if service_account else "user"
    if server:
        with _client(server) as client:
            added = client.add_user(name, kind=kind, roles=role)
    else:
        with _store() as store:
            added = identities.add_principal(
                store, name=name, kind=kind, roles=role, actor=_actor()
            )
    out.print(f"added {added.kind} {added.name} with roles {', '.join(added.roles)}")


@users_app.command("list")
@_errors
def users_list(server: ServerOption = None) -> None:
    """Every user and service account with its roles."""
    if server:
        with _client(server) as client:
            found = client.users()
    else:
        with _store() as store:
            found = identities.list_principals(store)
    table = Table(title=f"Users and service accounts ({len(found)})", title_justify="left")
    for col in ("name", "kind", "roles", "created", "created by", "disabled"):
        table.add_column(col)
    for p in found:
        table.add_row(
            p.name,
            p.kind.replace("_", " "),
            ", ".join(p.roles),
            _when(p.created_at),
            p.created_by,
            _when(p.disabled_at) if p.disabled_at else "",
        )
    out.print(table)


@users_app.command("disable")
@_errors
def users_disable(
    name: Annotated[str, typer.Argument(help="User or service account.")],
    server: ServerOption = None,
) -> None:
    """Disable a user or service account; its tokens stop working at once."""
    if server:
        with _client(server) as client:
            client.disable_user(name)
    else:
        with _store() as store:
            identities.disable_principal(store, name, actor=_actor())
    out.print(f"disabled {name}")


@tokens_app.command("create")
@_errors
def tokens_create(
    principal: Annotated[str, typer.Argument(help="User or service account.")],
    name: Annotated[str, typer.Option(help="What the token is for.")] = "api token",
    expires_in: Annotated[
        str, typer.Option("--expires-in", help="Lifetime, e.g. 90d, or never.")
    ] = "90d",
    server: ServerOption = None,
) -> None:
    """Create an API token and print it once (only its hash is stored)."""
    lifetime = _lifetime(expires_in)
    if server:
        with _client(server) as client:
            issued = client.create_token(principal, name=name, expires_in=expires_in)
    else:
        with _store() as store:
            issued = identities.create_token(
                store, principal, name=name, lifetime=lifetime, actor=_actor()
            )
    _print_token_once(issued)


@tokens_app.command("list")
@_errors
def tokens_list(
    principal: Annotated[str | None, typer.Option(help="Only this principal's tokens.")] = None,
    server: ServerOption = None,
) -> None:
    """Every API token by id, with its state and dates (never the token)."""
    if server:
        with _client(server) as client:
            found = client.tokens(principal=principal)
    else:
        with _store() as store:
            found = identities.list_tokens(store, principal=principal)
    table = Table(title=f"API tokens ({len(found)})", title_justify="left")
    for col in ("id", "principal", "name", "state", "created", "expires", "last used"):
        table.add_column(col, no_wrap=col in ("id", "state"))
    for t in found:
        table.add_row(
            t.prefix,
            t.principal,
            t.name,
            t.state,
            _when(t.created_at),
            _when(t.expires_at) if t.expires_at else "never",
            _when(t.last_used_at),
        )
    out.print(table)


@tokens_app.command("revoke")
@_errors
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id or ks_<id>.")],
    server: ServerOption = None,
) -> None:
    """Revoke an API token; it stops working at once."""
    if server:
        with _client(server) as client:
            revoked = client.revoke_token(token_id)
    else:
        with _store() as store:
            revoked = identities.revoke_token(store, token_id, actor=_actor())
    out.print(f"revoked {revoked.prefix} of {revoked.principal}")


@roles_app.command("list")
@_errors
def roles_list(server: ServerOption = None) -> None:
    """The built-in roles and the permissions each grants (the server's, with --server)."""
    if server:
        with _client(server) as client:
            found = client.roles()
    else:
        found = identities.roles()
    table = Table(title="Roles", title_justify="left")
    for col in ("role", "permissions", "for"):
        table.add_column(col)
    for role in found:
        table.add_row(role.role, ", ".join(role.permissions), role.description)
    out.print(table)


@app.command()
@_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve the REST API (OpenAPI at /openapi.json) over the store. Every /v1 route needs
    a bearer token; create the first with `keyshift init`."""
    _embedded_only()
    import uvicorn  # noqa: PLC0415 (only the server needs it)

    from keyshift.api import create_app  # noqa: PLC0415 (FastAPI loads only for serve)

    uvicorn.run(create_app(env=dict(os.environ)), host=host, port=port, log_config=None)


agent_app = typer.Typer(
    help="The host agent: file writes and reloads on a managed host.", no_args_is_help=True
)
app.add_typer(agent_app, name="agent")


@agent_app.command("run")
@_errors
def agent_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="The agent's agent.yaml.")],
) -> None:
    """Run the agent: HTTPS on `listen`, signed requests only, within its allow-list."""
    from keyshift import agent  # noqa: PLC0415 (only a host running the agent needs it)

    logs.configure(os.environ.get("KEYSHIFT_LOG_LEVEL") or "INFO")
    agent.run_agent(agent.load_agent_config(config))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
