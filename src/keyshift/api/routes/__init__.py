"""The `/v1` routes: the CLI's use cases over HTTP. Each route requires one permission.

Responses carry ids, fingerprints, states and times, never a secret value; the only
value the API ever returns is a new API token, once, to the admin who created it.

One router per group of nouns, each in its module; `ROUTERS` lists them in the order
the app includes them (the order of the OpenAPI document's paths).
"""

from __future__ import annotations

from fastapi import APIRouter

from keyshift.api.routes import (
    access,
    approvals,
    estate,
    events,
    evidence,
    freezes,
    inventory,
    notifications,
    rotations,
)
from keyshift.api.routes.rotations import rotation_out

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    estate.router,
    rotations.router,
    approvals.router,
    freezes.router,
    events.router,
    evidence.router,
    inventory.router,
    notifications.router,
    access.router,
)

_rotation_out = rotation_out
"""The name tests/engine/test_propagation.py imports `rotations.rotation_out` by."""
