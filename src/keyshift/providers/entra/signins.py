"""Residual use of a client secret: the application's sign-ins with it, from Entra ID's
sign-in log. See `keyshift.providers.entra` for what this relies on."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from keyshift.domain.durations import format_duration
from keyshift.providers.base import UsageReport
from keyshift.providers.graph import GraphClient, SignIn

LISTED_AT_MOST: Final = 20
"""Distinct client addresses and resources kept in the residual-use evidence."""


async def sign_ins_with(
    graph: GraphClient, app_id: str, key_ids: list[str], window: timedelta, since: datetime
) -> UsageReport:
    """The sign-ins of `app_id` since `since` with any of `key_ids` (failed ones too), with
    the distinct client addresses and resources, and how many used other secrets."""
    wanted = {k.lower() for k in key_ids}
    matched: list[SignIn] = []
    others = 0
    async for sign_in in graph.list_service_principal_sign_ins(app_id, since):
        if sign_in.key_id is not None and sign_in.key_id.lower() in wanted:
            matched.append(sign_in)
        else:
            others += 1
    addresses = sorted({s.ip_address for s in matched if s.ip_address})
    resources = sorted({s.resource for s in matched if s.resource})
    detail: dict[str, Any] = {
        "source": "Entra ID sign-in log (service principal sign-ins)",
        "app_id": app_id,
        "key_ids": ",".join(key_ids),
        "window": format_duration(window),
        "since": since.isoformat(),
        "sign_ins": len(matched),
        "failed_sign_ins": sum(1 for s in matched if s.error_code != 0),
        "last_sign_in": max(s.created for s in matched).isoformat() if matched else None,
        "ip_addresses": addresses[:LISTED_AT_MOST],
        "resources": resources[:LISTED_AT_MOST],
        "sign_ins_with_other_secrets": others,
    }
    if len(addresses) > LISTED_AT_MOST or len(resources) > LISTED_AT_MOST:
        detail["listed_at_most"] = LISTED_AT_MOST
    return UsageReport(sessions=len(matched), detail=detail)
