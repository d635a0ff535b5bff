"""What keyshift told operators: the outbox's events and their deliveries per channel,
and a test message to one channel."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel

from keyshift.api.auth import StoreDep, caller
from keyshift.api.routes.common import PathName, v1_router
from keyshift.context import PluginContext
from keyshift.domain.rbac import Permission
from keyshift.service import estate as estate_service
from keyshift.service import notifications as notifications_service
from keyshift.service.identities import Identity

router = v1_router()

Status = Literal["pending", "delivered", "dead", "no channel"]


@router.get("/notifications", tags=["notifications"])
def list_notifications(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[notifications_service.Delivery]:
    """The newest events with where each stands in each channel: pending (with its next
    attempt), delivered, dead-lettered (with its last error), or sent nowhere."""
    return notifications_service.listing(store, status=status, limit=limit)


class TestSent(BaseModel):
    channel: str
    detail: str
    """The channel's answer, e.g. `HTTP 200`."""


@router.post("/notifications/{channel}/test", tags=["notifications"])
async def test_channel(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_WRITE)],
    channel: PathName,
) -> TestSent:
    """Send a test message to one declared channel now (not through the outbox)."""
    estate = estate_service.current_estate(store)
    sent = await notifications_service.send_test(estate, channel, context=PluginContext())
    return TestSent(channel=channel, detail=sent.detail)
