"""Every API route x every role: a role lacking the route's permission gets 403, no token
gets 401, and every role holding it gets through (whatever the route then answers).

The table is derived from the app's own routes, so a new route cannot escape it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from keyshift.api import PUBLIC_PATHS, Require, create_app
from keyshift.api.auth import TokenOrSignature
from keyshift.domain.rbac import ROLE_PERMISSIONS, Permission, Role
from keyshift.domain.states import RotationState
from keyshift.service import approvals as approvals_service
from keyshift.service import estate as estate_service
from keyshift.service import rotations
from keyshift.store.store import Store
from keyshift.web.render import PageRoute
from tests.api.conftest import Api, open_api

ROLES = [r.value for r in Role]


def _requires(dependant: Dependant) -> list[Permission]:
    found = [
        d.call.permission
        for d in dependant.dependencies
        if isinstance(d.call, Require | TokenOrSignature)
    ]
    for sub in dependant.dependencies:
        found += _requires(sub)
    return found


def _api_routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included router
        if included is not None:
            yield from _api_routes(included.routes)
        elif isinstance(route, APIRoute) and not isinstance(route, PageRoute):
            # The dashboard's pages are walked by tests/web/test_page_rbac.py.
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
        Permission.ENTRA_ROTATE,  # checked inside the CONDITIONAL routes for Entra credentials
        Permission.BREAK_GLASS,  # checked when starting a break-glass rotation of prod
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


# Entra ID rotations: `entra:rotate` on top of the route's permission ---------------------

ENTRA, OTHER = "payments-entra", "orders-db"
CONDITIONAL = [
    ("POST", "/v1/credentials/{credential}/rotations", Permission.ROTATIONS_RUN),
    ("POST", "/v1/rotations/{rotation}/resume", Permission.ROTATIONS_RUN),
    ("POST", "/v1/rotations/{rotation}/rollback", Permission.ROTATIONS_RUN),
    ("POST", "/v1/approvals/{request}/approve", Permission.APPROVALS_DECIDE),
]
"""The routes that act on one credential's rotation, and their own permission."""


def _estate(tmp: Path) -> dict[str, object]:
    """An Entra ID credential and a `random` one, each delivered to a file; both wait for
    an approver nobody here is, so no request below ever lets a rotation run."""
    policy = {
        "grace_period": "1h",
        "max_lifetime": "90d",
        "approval": {"approvers": ["user:nobody-here"], "min_approvals": 1},
    }

    def action(name: str) -> list[dict[str, object]]:
        path = str(tmp / f"{name}.json")
        config = {"path": path, "key": "Secret", "file_format": "json"}
        return [{"type": "file", "order": 10, "on_failure": "abort", "config": config}]

    return {
        "integrations": [
            {
                "name": "contoso",
                "type": "entra",
                "tenant_id": "11111111-2222-3333-4444-555555555555",
                "client_id": "keyshift-client",
                "auth": {"method": "client_secret", "secret_from": "env:KS_ENTRA_ADMIN"},
            }
        ],
        "policies": [{"name": "supervised", **policy}],
        "credentials": [
            {
                "name": ENTRA,
                "owner": "team-payments",
                "policy": "supervised",
                "provider": {
                    "type": "entra_client_secret",
                    "integration": "contoso",
                    "app_id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                },
                "actions": action(ENTRA),
            },
            {
                "name": OTHER,
                "owner": "team-orders",
                "policy": "supervised",
                "provider": {"type": "random", "length": 32},
                "actions": action(OTHER),
            },
        ],
    }


@pytest.fixture(scope="module")
def supervised(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Api, dict[str, dict[str, str]]]]:
    """The API over a store where each credential has a rotation awaiting approval; with
    the ids to put in CONDITIONAL's paths, per credential."""
    tmp = tmp_path_factory.mktemp("entra-rbac")
    store = Store.open({"KEYSHIFT_HOME": str(tmp / "home")})
    try:
        estate_service.apply_estate(store, estate_service.parse_estate(_estate(tmp)), actor="t")
        ids: dict[str, dict[str, str]] = {}
        for name in (ENTRA, OTHER):
            rotation_id = rotations.request(store, name, actor="requester")
            state = asyncio.run(rotations.run(store, rotation_id, actor="requester"))
            assert state == RotationState.AWAITING_APPROVAL
            [request] = [r for r in approvals_service.requests(store) if r.credential == name]
            ids[name] = {"credential": name, "rotation": rotation_id, "request": request.id}
        for api in open_api(store):
            yield api, ids
    finally:
        store.close()


def _expected_refusal(role: Role, permission: Permission, credential: str) -> Permission | None:
    """The permission a 403 names for this role, or None when the role gets through."""
    granted = ROLE_PERMISSIONS[role]
    if permission not in granted:
        return permission
    if credential == ENTRA and Permission.ENTRA_ROTATE not in granted:
        return Permission.ENTRA_ROTATE
    return None


@pytest.mark.parametrize("credential", [ENTRA, OTHER], ids=["entra", "not-entra"])
@pytest.mark.parametrize("role", list(Role), ids=ROLES)
@pytest.mark.parametrize(
    ("method", "path", "permission"), CONDITIONAL, ids=[p for _m, p, _ in CONDITIONAL]
)
def test_a_rotation_of_an_entra_credential_also_needs_entra_rotate(
    supervised: tuple[Api, dict[str, dict[str, str]]],
    method: str,
    path: str,
    permission: Permission,
    role: Role,
    credential: str,
) -> None:
    api, ids = supervised
    body = {"reason": "rbac"} if path.endswith("rollback") else {}
    response = api.call(method, path.format(**ids[credential]), role=role.value, json=body)
    refused = _expected_refusal(role, permission, credential)
    if refused is None:
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["permission"] == refused.value


def test_the_rotator_role_rotates_anything_but_entra_credentials() -> None:
    rotator = ROLE_PERMISSIONS[Role.ROTATOR]
    assert Permission.ROTATIONS_RUN in rotator
    assert Permission.ENTRA_ROTATE not in rotator
    assert Permission.CREDENTIALS_WRITE not in rotator
    assert Permission.ENTRA_ROTATE in ROLE_PERMISSIONS[Role.OPERATOR]


def test_an_approver_without_entra_rotate_cannot_approve_an_entra_rotation(
    supervised: tuple[Api, dict[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every built-in role that decides holds `entra:rotate`, so the route's check is shown
    with an approver role that lacks it."""
    api, ids = supervised
    without = ROLE_PERMISSIONS[Role.APPROVER] - {Permission.ENTRA_ROTATE}
    monkeypatch.setitem(ROLE_PERMISSIONS, Role.APPROVER, without)

    entra = api.call("POST", f"/v1/approvals/{ids[ENTRA]['request']}/approve", role="approver")
    other = api.call("POST", f"/v1/approvals/{ids[OTHER]['request']}/approve", role="approver")

    assert (entra.status_code, entra.json()["permission"]) == (403, "entra:rotate")
    assert (other.status_code, other.json()["code"]) == (409, "approval-refused")


def test_the_routes_without_a_token_are_exactly_the_public_ones(rbac_api: Api) -> None:
    """Public key material is the one data route without a token: the JWKS a `jwks_serve`
    credential publishes, as an OIDC provider serves its JWKS. Every other route without
    a permission is a named exception in PUBLIC_PATHS."""
    app = create_app()
    open_routes = {r.path for r in _api_routes(app.routes) if not _requires(r.dependant)}
    assert open_routes <= PUBLIC_PATHS
    assert "/.well-known/jwks/{credential}.json" in open_routes
    assert PUBLIC_PATHS - open_routes <= {"/openapi.json", "/docs", "/docs/oauth2-redirect"}
    answer = rbac_api.call("GET", "/.well-known/jwks/no-such-thing.json", role=None)
    assert answer.status_code == 404, "no token asked: not found, not unauthenticated"
    assert answer.json()["code"] == "not-found"
