"""A rotation as it runs: a line per step as it ends (here or followed at a server), and
the state it rests in with what comes next."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import typer

from keyshift.cli._common import HEALTHY
from keyshift.cli.output import err, ms, out, when
from keyshift.domain.states import RotationState, StepStatus
from keyshift.errors import KeyshiftError

if TYPE_CHECKING:
    from keyshift.client import Client
    from keyshift.engine.journal import StepEvent
    from keyshift.service import approvals as approvals_service
    from keyshift.service import rotations
    from keyshift.store.store import Store


def ended_steps(timeline: rotations.Timeline) -> set[int]:
    """The steps of the rotation that have ended (by `seq`)."""
    return {s.seq for s in timeline.steps if s.status != StepStatus.RUNNING}


def follow(client: Client, rotation_id: str, *, shown: set[int]) -> rotations.Timeline:
    """Print each step of a rotation at the server as it ends, as an embedded run prints
    it, until the rotation rests; return its last timeline. Steps in `shown` are not
    printed (they ended before)."""
    from keyshift.engine.journal import StepEvent

    last: rotations.Timeline | None = None
    try:
        for last in client.follow(rotation_id):
            for step in last.steps:
                if step.seq in shown or step.status == StepStatus.RUNNING:
                    continue
                shown.add(step.seq)
                seconds = step.duration.total_seconds() if step.duration is not None else None
                status = StepStatus(step.status)
                progress(StepEvent(last.rotation.id, step.name, status, seconds, step.error))
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


def exit_unless_healthy(*states: RotationState | str | rotations.Timeline) -> None:
    """Exit 1 when a rotation did not end healthy (as `rotate` does in both modes): a
    final or waiting state, or (given its timeline) resting until its signers get the
    new version."""
    if not all(healthy(state) for state in states):
        raise typer.Exit(1)


def healthy(state: RotationState | str | rotations.Timeline) -> bool:
    if not isinstance(state, RotationState | str):  # a timeline (its module loads lazily)
        if state.signers_from is not None:
            return True
        state = state.rotation.state
    return RotationState(state) in HEALTHY


def progress(event: StepEvent) -> None:
    if event.status == StepStatus.RUNNING:
        return
    mark = {"succeeded": "[green]✓[/]", "failed": "[red]✗[/]"}.get(event.status.value, "·")
    line = f"  {mark} {event.step:<34} {ms(event.duration_s):>8}"
    out.print(line + (f"  [red]{event.error}[/]" if event.error else ""))


def progress_with_header(credential: str) -> Callable[[StepEvent], None]:
    """Progress lines, headed by the rotation id once the rotation exists."""
    shown: set[str] = set()

    def report(event: StepEvent) -> None:
        if event.rotation_id not in shown:
            shown.add(event.rotation_id)
            out.print(f"Rotating {credential} (rotation {event.rotation_id})")
        progress(event)

    return report


def print_rotation_end(
    timeline: rotations.Timeline, pending: Callable[[], list[approvals_service.ApprovalView]]
) -> None:
    """The end of a run: the state reached and what comes next (`pending` lists the
    approval requests waiting, asked only when the rotation waits for one)."""
    rotation_id, state = timeline.rotation.id, RotationState(timeline.rotation.state)
    colour = "green" if healthy(timeline) else "red"
    out.print(f"{timeline.credential}: rotation {rotation_id} [{colour}]{state.value}[/]")
    if timeline.signers_from is not None:
        out.print(
            "  verifiers have the new key; its signers get it at "
            f"{when(timeline.signers_from)} (once verifiers' caches refreshed); "
            "`keyshift worker` or `keyshift resume` goes on then"
        )
    if state == RotationState.GRACE:
        out.print(
            f"  old version stays valid until {when(timeline.grace_until)}; "
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


def print_stored_rotation_end(store: Store, rotation_id: str) -> rotations.Timeline:
    """Print the end of a run from the store; returns the timeline printed."""
    from keyshift.service import approvals as approvals_service
    from keyshift.service import rotations

    timeline = rotations.rotation_timeline(store, rotation_id)
    print_rotation_end(timeline, lambda: approvals_service.requests(store))
    return timeline
