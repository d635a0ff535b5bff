"""The REST API (`keyshift serve`): the service layer over HTTP, with RBAC and problem JSON."""

from __future__ import annotations

from keyshift.api.app import PUBLIC_PATHS, create_app
from keyshift.api.auth import Require

__all__ = ["PUBLIC_PATHS", "Require", "create_app"]
