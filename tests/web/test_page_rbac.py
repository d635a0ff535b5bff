"""Every dashboard route x every role, like the API's table: a role lacking the route's
permission gets the 403 page, no session gets sent to sign in (401 for a form), every
role holding it gets through. Every POST without the session's CSRF token is refused
before anything else is looked at.

The table is derived from the app's own page routes, so a new page cannot escape it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.dependencies.models import Dependant
from starlette.routing import BaseRoute

from keyshift.api import create_app
from keyshift.domain.rbac import ROLE_PERMISSIONS, Permission, Role
from keyshift.store.store import Store
from keyshift.web import PUBLIC_PATHS
from keyshift.web.auth import Page
from keyshift.web.render import PageRoute
from tests.api.conftest import Api, open_api
from tests.web.conftest import Session, sign_in

ROLES = [r.value for r in Role]
SIGNED_IN = "signed-in"
"""A route open to any signed-in viewer (`Page(None)`: sign-out)."""


def _pages(dependant: Dependant) -> list[Page]:
    found = [d.call for d in dependant.dependencies if isinstance(d.call, Page)]
    for sub in dependant.dependencies:
        found += _pages(sub)
    return found


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's included router
        yield from _routes(included.routes) if included is not None else [route]


def page_routes() -> list[tuple[str, str, str]]:
    """(method, path, permission or SIGNED_IN) of every page route but sign-in."""
    out: list[tuple[str, str, str]] = []
    for route in _routes(create_app().routes):
        if not isinstance(route, PageRoute) or route.path in PUBLIC_PATHS:
            continue
        pages = _pages(route.dependant)
        assert len(pages) == 1, f"{route.path} has {len(pages)} Page dependencies, not one"
        permission = pages[0].permission
        out += [
            (method, route.path, permission.value if permission else SIGNED_IN)
            for method in sorted(route.methods)
        ]
    return out


ROUTES = page_routes()


def test_every_page_but_sign_in_needs_a_session_and_names_its_permission() -> None:
    assert len(ROUTES) >= 20
    assert {p for _m, _p, p in ROUTES} >= {
        Permission.CREDENTIALS_READ.value,
        Permission.ROTATIONS_RUN.value,
        Permission.APPROVALS_DECIDE.value,
        Permission.AUDIT_READ.value,
        Permission.ENTRA_READ.value,
        Permission.ADMIN.value,
        SIGNED_IN,
    }


@pytest.fixture(scope="module")
def rbac_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, dict[str, Session]]]:
    home = tmp_path_factory.mktemp("web-rbac") / "home"
    store = Store.open({"KEYSHIFT_HOME": str(home)})
    try:
        for api in open_api(store):
            yield api, {role: sign_in(api, role) for role in ROLES}
    finally:
        store.close()


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "no-such-thing", path)


def _allowed(permission: str, role: str) -> bool:
    return permission == SIGNED_IN or Permission(permission) in ROLE_PERMISSIONS[Role(role)]


@pytest.mark.parametrize("role", [*ROLES, None], ids=[*ROLES, "no-session"])
@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [r for r in ROUTES if r[1] != "/logout"],
    ids=[f"{m} {p}" for m, p, _ in ROUTES if p != "/logout"],
)
def test_page_admits_exactly_the_roles_holding_its_permission(
    rbac_web: tuple[Api, dict[str, Session]],
    method: str,
    path: str,
    permission: str,
    role: str | None,
) -> None:
    api, sessions = rbac_web
    url = _concrete(path)
    if role is None:
        api.client.cookies.clear()
        response = api.client.request(method, url, follow_redirects=False)
        if method == "GET":
            assert response.status_code == 303, response.text
            assert response.headers["location"].startswith("/login?next=")
        else:
            assert response.status_code == 401, response.text
        return
    browser = sessions[role]
    response = browser.get(url) if method == "GET" else browser.post(url)
    if _allowed(permission, role):
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 403, response.text
        assert 'data-code="forbidden"' in response.text
        assert permission in response.text


@pytest.mark.parametrize(
    "path", sorted({p for m, p, _ in ROUTES if m == "POST"}), ids=lambda p: f"POST {p}"
)
def test_a_post_without_the_csrf_token_is_refused(
    rbac_web: tuple[Api, dict[str, Session]], path: str
) -> None:
    _api, sessions = rbac_web
    admin = sessions["admin"]
    for token in ("", "0" * 64, sessions["viewer"].csrf):
        response = admin.post(_concrete(path), csrf=token)
        assert response.status_code == 403, (path, token, response.text)
        assert 'data-code="csrf-refused"' in response.text


def test_sign_out_ends_only_the_signed_in_session(
    rbac_web: tuple[Api, dict[str, Session]],
) -> None:
    api, _sessions = rbac_web
    first, second = sign_in(api, "viewer"), sign_in(api, "viewer")
    assert first.post("/logout").status_code == 303
    assert first.get("/").status_code == 303
    assert second.get("/").status_code == 200
