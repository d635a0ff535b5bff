"""Inbound events: `POST /v1/events/rotate/{trigger}` starts the rotations an event of a
trigger the estate declares asks for (`keyshift.service.triggers`). Authenticated by the
trigger's HMAC-SHA256 signature of the raw body, or by an API token with
`rotations:trigger`; the answer holds ids and names only, never anything of the body."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from keyshift.api import problems
from keyshift.api.auth import EventCaller, StoreDep, TokenOrSignature
from keyshift.api.routes.common import BackgroundDep, actor_of, require_entra_rotate, v1_router
from keyshift.domain.clock import utcnow
from keyshift.domain.rbac import Permission
from keyshift.errors import NotFound
from keyshift.service import triggers

router = v1_router()


@dataclass(frozen=True)
class EventRotation:
    credential: str
    rotation_id: str
    location: str


@dataclass(frozen=True)
class EventReceived:
    trigger: str
    event_id: str | None
    duplicate: bool
    """A redelivery of an event already taken: `rotations` are the ones it started then."""
    rotations: list[EventRotation] = field(default_factory=list)
    refused: dict[str, list[str]] = field(default_factory=dict)
    """Credentials the event named that did not start, with every reason."""
    ignored: str | None = None
    """Why the event asks for no rotation (a GitHub ping, a resolved alert, an unmapped
    secret type)."""


@router.post(
    "/events/rotate/{trigger}",
    status_code=202,
    tags=["events"],
    responses=problems.responses(
        "invalid-event", "not-found", "rate-limited", "policy-refused", "unauthenticated"
    ),
)
async def rotate_on_event(
    request: Request,
    background: BackgroundDep,
    store: StoreDep,
    caller: Annotated[EventCaller, Depends(TokenOrSignature(Permission.TRIGGER))],
    trigger: str,
) -> EventReceived:
    """Start the rotations an event asks for. A `generic` trigger takes `{event_id,
    credential}` or `{event_id, owner, reason}`; a `github_secret_scanning` one GitHub's
    `secret_scanning_alert` webhook (the delivery id is the event id, the trigger's
    `match` names the credential). A redelivered event id is answered with the first
    rotations; past the trigger's `rate_limit`, 429 with Retry-After. Freezes, governance
    and approvals hold: when no rotation could start, 409 `policy-refused`."""
    spec = caller.trigger or await run_in_threadpool(triggers.declared, store, trigger)
    if spec is None:
        raise NotFound(f"no trigger named {trigger} in the estate")
    who = caller.identity
    actor = actor_of(who) if who is not None else f"trigger:{spec.name}"
    body = await request.body()

    def may_rotate(credential: str) -> None:
        if who is not None:
            require_entra_rotate(store, who, credential)

    received = await run_in_threadpool(
        lambda: triggers.receive(
            store,
            spec,
            body,
            request.headers,
            actor=actor,
            now=utcnow(),
            may_rotate=may_rotate,
            context=background.rotations.context,
        )
    )
    started: list[EventRotation] = []
    for r in received.rotations:
        location = (
            f"/v1/rotations/{r.rotation_id}"
            if received.duplicate
            else background.start(r.rotation_id, actor=actor)
        )
        started.append(EventRotation(r.credential, r.rotation_id, location))
    return EventReceived(
        trigger=received.trigger,
        event_id=received.event_id,
        duplicate=received.duplicate,
        rotations=started,
        refused=received.refused,
        ignored=received.ignored,
    )
