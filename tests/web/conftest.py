"""Fixtures for the dashboard's tests: the app over a store (the API fixture's), and a
signed-in browser session per principal, each with its own session cookie and the CSRF
token its pages carry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from keyshift.store.store import Store
from keyshift.web.auth import LOGIN_COOKIE, SESSION_COOKIE
from tests.api.conftest import Api, open_api

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_in(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = _CSRF.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


class Session:
    """One signed-in browser: requests carry its session cookie; `post` adds the CSRF
    token its pages' forms carry."""

    def __init__(self, api: Api, cookie: str) -> None:
        self.api = api
        self.cookie = cookie
        self.csrf = csrf_in(self.get("/alerts").text) if cookie else ""

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}", **(extra or {})}

    def get(self, path: str, **kwargs: Any) -> Any:
        self.api.client.cookies.clear()
        return self.api.client.get(
            path,
            headers=self._headers(kwargs.pop("headers", None)),
            follow_redirects=False,
            **kwargs,
        )

    def post(
        self,
        path: str,
        data: dict[str, str] | None = None,
        *,
        csrf: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """POST a form; `csrf=None` sends this session's token, `csrf=""` sends none."""
        form = dict(data or {})
        token = self.csrf if csrf is None else csrf
        if token:
            form["csrf"] = token
        self.api.client.cookies.clear()
        return self.api.client.post(
            path,
            data=form,
            headers=self._headers(kwargs.pop("headers", None)),
            follow_redirects=False,
            **kwargs,
        )


def submit_login(
    api: Api, token: str, *, next_: str = "/", csrf: str | None = None, base: str = ""
) -> Any:
    """Load the sign-in form (its login cookie and CSRF token) and submit `token` with it;
    `csrf` replaces the form's token. The response, not followed."""
    client = api.client
    client.cookies.clear()
    form = client.get(f"{base}/login", params={"next": next_})
    assert form.status_code == 200, form.text
    nonce = form.cookies[LOGIN_COOKIE]
    client.cookies.clear()
    response = client.post(
        f"{base}/login",
        data={"token": token, "csrf": csrf_in(form.text) if csrf is None else csrf, "next": next_},
        headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"},
        follow_redirects=False,
    )
    client.cookies.clear()
    return response


def session_cookie_header(response: Any) -> str:
    """The Set-Cookie header of the session cookie a sign-in set."""
    return next(h for h in response.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE))


def sign_in(api: Api, principal: str) -> Session:
    """Sign in through the form with `principal`'s API token; the session that results."""
    done = submit_login(api, api.tokens[principal], next_="/credentials")
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/credentials"
    return Session(api, done.cookies[SESSION_COOKIE])


@pytest.fixture
def web(store: Store) -> Iterator[Api]:
    """The app over the test's store (SQLite and PostgreSQL), one token per role."""
    yield from open_api(store)
