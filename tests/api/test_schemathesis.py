"""Property-based run of the served OpenAPI document: no operation answers 5xx.

Bounded: a few examples per operation, with an admin token so every route is reached
past authentication.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from keyshift.api import create_app
from keyshift.service import estate as estate_service
from keyshift.service import identities
from keyshift.store.store import Store
from tests.helpers import write_estate


@pytest.fixture
def admin_token(tmp_path: Path) -> Iterator[tuple[Store, str]]:
    store = Store.open({"KEYSHIFT_HOME": str(tmp_path / "home")})
    try:
        estate = estate_service.load_estate(write_estate(tmp_path))
        estate_service.apply_estate(store, estate, actor="test")
        token = identities.init_admin(store, name="root", actor="test").token.reveal()
        yield store, token
    finally:
        store.close()


def test_no_operation_answers_5xx(admin_token: tuple[Store, str]) -> None:
    store, token = admin_token
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(store))
    headers = {"Authorization": f"Bearer {token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 24
    seen: dict[str, set[int]] = {}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=5,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def no_5xx(case: Any) -> None:
            response = case.call(headers=headers)
            seen.setdefault(f"{case.method} {case.operation.path}", set()).add(response.status_code)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.text[:300]}"
            )

        no_5xx()

    # Every operation was called, and the admin token got past authentication.
    assert len(seen) == len(operations)
    assert all(401 not in codes and 403 not in codes for codes in seen.values()), seen
    assert sum(200 in codes for codes in seen.values()) >= 10, seen
