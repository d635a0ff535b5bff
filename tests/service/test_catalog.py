"""Filtering, sorting and paging status rows (the credentials page, `GET /v1/credentials`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keyshift.domain.states import Lifecycle
from keyshift.errors import ConfigError
from keyshift.service import catalog
from keyshift.service.rotations import StatusRow

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def _row(name: str, *, days: int | None, owner: str | None, env: str, kind: str) -> StatusRow:
    expires = NOW + timedelta(days=days) if days is not None else None
    return StatusRow(
        credential=name,
        lifecycle=Lifecycle.ACTIVE if expires else Lifecycle.NEVER_ROTATED,
        version_id=None,
        fingerprint=None,
        expires_at=expires,
        days_left=days,
        last_rotation=None,
        owner=owner,
        overlap="dual",
        last_rotated_at=None,
        last_rotation_id=None,
        next_rotation_at=None,
        next_rotation="manual",
        environment=env,
        provider=kind,
    )


ROWS = [
    _row("db-prod", days=40, owner="team-a", env="prod", kind="postgres"),
    _row("api-key", days=None, owner=None, env="dev", kind="random"),
    _row("cache", days=3, owner="team-b", env="prod", kind="redis"),
    _row("entra-app", days=90, owner="team-a", env="staging", kind="entra_client_secret"),
]


def _names(criteria: catalog.Criteria) -> list[str]:
    return [r.credential for r in catalog.listing(ROWS, criteria).rows]


def test_sorts_by_expiry_with_undated_rows_last_and_reverses() -> None:
    assert _names(catalog.Criteria(sort="expires")) == ["cache", "db-prod", "entra-app", "api-key"]
    assert _names(catalog.Criteria(sort="expires", descending=True)) == [
        "api-key",
        "entra-app",
        "db-prod",
        "cache",
    ]
    assert _names(catalog.Criteria(sort="owner")) == ["db-prod", "entra-app", "cache", "api-key"]


def test_filters_combine_and_list_the_choices_of_every_row() -> None:
    found = catalog.listing(ROWS, catalog.Criteria(owner="team-a", environment="prod"))
    assert [r.credential for r in found.rows] == ["db-prod"]
    assert found.total == 1
    assert found.owners == ["team-a", "team-b"]  # choices come from all rows, not the match
    assert found.environments == ["dev", "prod", "staging"]
    assert _names(catalog.Criteria(lifecycle="never rotated")) == ["api-key"]
    assert _names(catalog.Criteria(text="PROD")) == ["db-prod"]
    assert _names(catalog.Criteria(provider="redis")) == ["cache"]


def test_pages_hold_page_size_rows_and_count_every_match() -> None:
    first = catalog.listing(ROWS, catalog.Criteria(sort="name", page_size=3))
    second = catalog.listing(ROWS, catalog.Criteria(sort="name", page_size=3, page=2))
    assert [r.credential for r in first.rows] == ["api-key", "cache", "db-prod"]
    assert [r.credential for r in second.rows] == ["entra-app"]
    assert (first.total, first.pages, second.page) == (4, 2, 2)
    beyond = catalog.listing(ROWS, catalog.Criteria(page_size=3, page=9))
    assert (beyond.rows, beyond.pages) == ([], 2)
    everything = catalog.listing(ROWS, catalog.Criteria(page_size=None, page=5))
    assert (len(everything.rows), everything.page, everything.pages) == (4, 1, 1)


@pytest.mark.parametrize(
    ("fields", "bad"),
    [({"sort": "password"}, "sort"), ({"page": 0}, "page"), ({"page_size": 501}, "page_size")],
)
def test_a_bad_criterion_names_its_field(fields: dict[str, object], bad: str) -> None:
    with pytest.raises(ConfigError) as refused:
        catalog.Criteria(**fields)  # type: ignore[arg-type]
    assert refused.value.path == bad
