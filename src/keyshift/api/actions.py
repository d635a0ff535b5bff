"""The server's actions that both the REST routes and the web pages take: request a
rotation, decide on an approval, roll a rotation back. One copy of each rule (the
`entra:rotate` check, the self-approval refusal the service raises), so a page can do
nothing a route would refuse, and the reverse. The caller runs the requested or
approved rotation on in the background (`BackgroundRotations.start`)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from starlette.concurrency import run_in_threadpool

from keyshift.api.routes.common import actor_of, require_entra_rotate, require_entra_rotate_for
from keyshift.api.runner import BackgroundRotations
from keyshift.domain.rbac import Permission
from keyshift.domain.states import Trigger
from keyshift.service import approvals as approvals_service
from keyshift.service import rotations
from keyshift.service.identities import Identity
from keyshift.store.store import Store


async def request_rotation(
    store: Store,
    who: Identity,
    name: str,
    *,
    grace: timedelta | None,
    reason: str,
    trigger: Trigger = Trigger.API,
) -> str:
    """Record a rotation of `name` requested by the caller (an Entra ID credential also
    needs `entra:rotate`; a break-glass one of a `prod` credential `rotations:break_glass`,
    refused and audited by the engine); governance refusals raise as the service raises
    them."""
    await run_in_threadpool(require_entra_rotate, store, who, name)
    return await run_in_threadpool(
        lambda: rotations.request(
            store,
            name,
            actor=actor_of(who),
            grace=grace,
            reason=reason,
            trigger=trigger,
            break_glass_permitted=Permission.BREAK_GLASS in who.permissions,
        )
    )


async def record_decision(
    store: Store, who: Identity, request_id: str, *, approve: bool, comment: str, now: datetime
) -> tuple[str, str]:
    """Store the caller's decision on an approval request (refused: `ApprovalRefused`);
    approving an Entra ID rotation also needs `entra:rotate`. Returns (request id,
    rotation id); the caller then runs the rotation on in the background."""

    def record() -> tuple[str, str]:
        if approve:
            pending = approvals_service.show(store, request_id)
            require_entra_rotate_for(
                who, rotations.rotation_ref(store, pending.rotation_id).provider_type
            )
        rotation_id = approvals_service.record(
            store, request_id, approver=actor_of(who), approve=approve, comment=comment, now=now
        )
        return approvals_service.show(store, request_id).id, rotation_id

    return await run_in_threadpool(record)


async def roll_back(
    store: Store, background: BackgroundRotations, who: Identity, rotation_id: str, *, reason: str
) -> str:
    """Roll the rotation back as the caller (an Entra ID credential also needs
    `entra:rotate`) and return its full id once done."""
    ref = await run_in_threadpool(rotations.rotation_ref, store, rotation_id)
    require_entra_rotate_for(who, ref.provider_type)

    def in_thread() -> None:
        asyncio.run(
            rotations.roll_back(
                store, ref.id, actor=actor_of(who), reason=reason, context=background.context
            )
        )

    await asyncio.to_thread(in_thread)
    return ref.id
