"""Fixtures for the API tests: an app over a store, and a token per built-in role."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyshift.api import create_app
from keyshift.domain.rbac import Role
from keyshift.service import identities
from keyshift.store.store import Store

with warnings.catch_warnings():
    # Starlette asks for the httpx2 package, which the lead has not installed; the
    # TestClient works the same over httpx. Only this import's warning is ignored.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


class Api:
    """A TestClient over the app with a bearer token per role (`None` = no token)."""

    def __init__(self, client: TestClient, store: Store, tokens: dict[str, str]) -> None:
        self.client = client
        self.store = store
        self.tokens = tokens

    def headers(self, role: str | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}

    def call(self, method: str, path: str, role: str | None = "admin", **kwargs: Any) -> Any:
        return self.client.request(method, path, headers=self.headers(role), **kwargs)

    def wait_for(
        self, rotation_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll the rotation until `done(body)` holds (background runs take wall time)."""
        deadline = time.monotonic() + timeout
        while True:
            body: dict[str, Any] = self.call("GET", f"/v1/rotations/{rotation_id}").json()
            if done(body) or time.monotonic() > deadline:
                return body
            time.sleep(0.05)


def role_tokens(store: Store) -> dict[str, str]:
    """One principal per built-in role, each with a token: {role: token}."""
    tokens = {"admin": identities.init_admin(store, name="root", actor="test").token.reveal()}
    for role in Role:
        if role == Role.ADMIN:
            continue
        identities.add_principal(
            store, name=f"{role.value}-1", kind="user", roles=[role.value], actor="test"
        )
        issued = identities.create_token(store, f"{role.value}-1", name="t", actor="test")
        tokens[role.value] = issued.token.reveal()
    return tokens


def open_api(store: Store) -> Iterator[Api]:
    tokens = role_tokens(store)
    with TestClient(create_app(store)) as client:
        yield Api(client, store, tokens)


@pytest.fixture
def api(store: Store) -> Iterator[Api]:
    """The API over the test's store (SQLite and PostgreSQL), one token per role."""
    yield from open_api(store)
