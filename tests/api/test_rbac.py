"""Every API route x every role: a role lacking the route's permission gets 403, no token
gets 401, and every role holding it gets through (whatever the route then answers).

The table is derived from the app's own routes, so a new route cannot escape it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from keyshift.api import PUBLIC_PATHS, Require, create_app
from keyshift.domain.rbac import ROLE_PERMISSIONS, Permission, Role
from keyshift.store.store import Store
from tests.api.conftest import Api, open_api

ROLES = [r.value for r in Role]


def _requires(dependant: Dependant) -> list[Permission]:
    found = [d.call.permission for d in dependant.dependencies if isinstance(d.call, Require)]
    for sub in dependant.dependencies:
        found += _requires(sub)
    return found


def _api_routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            yield from _api_routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


def guarded_routes() -> list[tuple[str, str, Permission]]:
    """(method, path, permission) of every non-public route of the app. The walk is checked
    against the operations the served OpenAPI document lists, so none is missed."""
    app = create_app()
    out: list[tuple[str, str, Permission]] = []
    for route in _api_routes(app.routes):
        if route.path in PUBLIC_PATHS:
            continue
        permissions = _requires(route.dependant)
        assert len(permissions) == 1, f"{route.path} requires {permissions}, not one permission"
        out += [(method, route.path, permissions[0]) for method in sorted(route.methods)]
    served = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path not in PUBLIC_PATHS
        for method in operations
    }
    assert {(m, p) for m, p, _ in out} == served
    return out


ROUTES = guarded_routes()


def test_every_route_is_public_or_requires_exactly_one_permission() -> None:
    assert len(ROUTES) >= 24  # the table is not silently empty
    assert {p for _m, _p, p in ROUTES} >= set(Permission) - {
        Permission.ENTRA_ROTATE,  # checked inside rotation start/resume for Entra credentials
    }


@pytest.fixture(scope="module")
def rbac_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("rbac") / "home"
    store = Store.open({"KEYSHIFT_HOME": str(home)})
    try:
        yield from open_api(store)
    finally:
        store.close()


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "no-such-thing", path)


@pytest.mark.parametrize("role", [*ROLES, None], ids=[*ROLES, "no-token"])
@pytest.mark.parametrize(
    ("method", "path", "permission"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES]
)
def test_route_admits_exactly_the_roles_holding_its_permission(
    rbac_api: Api, method: str, path: str, permission: Permission, role: str | None
) -> None:
    response = rbac_api.call(method, _concrete(path), role=role)
    if role is None:
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "unauthenticated"
    elif permission in ROLE_PERMISSIONS[Role(role)]:
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "forbidden"
        assert response.json()["permission"] == permission.value


def test_a_bad_token_is_refused_like_no_token(rbac_api: Api, tmp_path: Path) -> None:
    for token in ("nonsense", "ks_0123456789abcdef_" + "A" * 43, rbac_api.tokens["admin"] + "x"):
        response = rbac_api.client.get(
            "/v1/credentials", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, token
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
