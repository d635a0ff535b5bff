"""Filtering, sorting and paging status rows (the credentials page, `GET /v1/credentials`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event

from keyshift.domain.states import Lifecycle
from keyshift.errors import ConfigError
from keyshift.service import catalog, rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.service.rotations import StatusRow
from keyshift.store.models import DiscoveredApp, DiscoveredCredential
from keyshift.store.store import Store

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


MANY = [
    _row(
        f"cred-{i:03d}",
        days=None if i % 7 == 0 else (i * 37) % 90 - 5,  # repeated days: the name decides
        owner=None if i % 5 == 0 else f"team-{i % 3}",
        env=("prod", "dev", "staging")[i % 3],
        kind=("random", "redis")[i % 2],
    )
    for i in range(300)
]


@pytest.mark.parametrize("sort", list(catalog.SORTS))
@pytest.mark.parametrize("descending", [False, True])
def test_an_early_page_of_many_rows_is_the_page_of_them_all_in_order(
    sort: str, descending: bool
) -> None:
    # With 300 rows, pages 1 and 2 of 50 put only their first rows in order; page 6 sorts
    # all of them. Each must be the slice of the whole order.
    whole = sorted(MANY, key=catalog.SORTS[sort], reverse=descending)
    for page in (1, 2, 6):
        criteria = catalog.Criteria(sort=sort, descending=descending, page=page)
        found = catalog.listing(list(reversed(MANY)), criteria)
        start = (page - 1) * catalog.PAGE_SIZE
        assert found.rows == whole[start : start + catalog.PAGE_SIZE]
        assert (found.total, found.pages) == (300, 6)


@pytest.mark.parametrize(
    ("fields", "bad"),
    [({"sort": "password"}, "sort"), ({"page": 0}, "page"), ({"page_size": 501}, "page_size")],
)
def test_a_bad_criterion_names_its_field(fields: dict[str, object], bad: str) -> None:
    with pytest.raises(ConfigError) as refused:
        catalog.Criteria(**fields)  # type: ignore[arg-type]
    assert refused.value.path == bad


# Paging by cursor over a store ------------------------------------------------------------


def _estate_of(count: int) -> dict[str, object]:
    """`count` credentials cred-000…: owners alternate, every fifth is in staging (not
    prod, which would require a check), and every third is manual, to filter on."""
    return {
        "credentials": [
            {
                "name": f"cred-{i:03d}",
                "owner": f"team-{i % 2}",
                "environment": "staging" if i % 5 == 0 else "dev",
                "auto_rotate": i % 3 != 0,
                "provider": {"type": "random", "length": 24},
                "actions": [],
            }
            for i in range(count)
        ]
    }


def _pages(store: Store, criteria: catalog.Criteria, limit: int) -> list[list[str]]:
    """Every page, following each page's cursor to the end."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = catalog.page_by_name(store, criteria, now=NOW, limit=limit, cursor=cursor)
        pages.append([r.credential for r in page.rows])
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


def test_cursor_pages_hold_every_credential_once_in_name_order(store: Store) -> None:
    apply_estate(store, parse_estate(_estate_of(23)), actor="test")
    whole = [r.credential for r in rotations.status_rows(store, now=NOW)]
    pages = _pages(store, catalog.Criteria(sort="name"), 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [name for page in pages for name in page] == whole
    # A page that ends exactly at the last credential gives no cursor to an empty page.
    assert [len(p) for p in _pages(store, catalog.Criteria(sort="name"), 23)] == [23]


def test_cursor_pages_filter_in_the_query_and_by_lifecycle_in_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_estate(store, parse_estate(_estate_of(30)), actor="test")
    rows = rotations.status_rows(store, now=NOW)
    criteria = catalog.Criteria(sort="name", owner="team-0", environment="dev", text="CRED-0")
    wanted = [r.credential for r in catalog.listing(rows, criteria).rows]
    assert wanted
    assert [n for p in _pages(store, criteria, 2) for n in p] == wanted
    # A lifecycle is decided in Python: the scan reads on past rows it drops.
    monkeypatch.setattr(catalog, "SCAN_CHUNK", 4)
    never = catalog.Criteria(sort="name", lifecycle="never rotated", owner="team-1")
    expected = [r.credential for r in catalog.listing(rows, never).rows]
    assert len(expected) == 15
    assert [n for p in _pages(store, never, 4) for n in p] == expected
    assert _pages(store, catalog.Criteria(sort="name", lifecycle="expired"), 4) == [[]]


def _first_page(store: Store, limit: int) -> tuple[catalog.Page, list[str]]:
    """The first page by name, and every SQL statement reading it took."""
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        page = catalog.page_by_name(store, catalog.Criteria(sort="name"), now=NOW, limit=limit)
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    return page, statements


def test_a_page_reads_only_its_own_rows(store: Store) -> None:
    """The queries of a page stop at it: every statement on the credentials or their
    versions carries the page's LIMIT, so a page of a large estate never loads the rest."""
    apply_estate(store, parse_estate(_estate_of(12)), actor="test")
    page, statements = _first_page(store, 3)
    assert [r.credential for r in page.rows] == ["cred-000", "cred-001", "cred-002"]
    reads = [s for s in statements if "FROM credentials" in s or "FROM versions" in s]
    assert len(reads) == 2
    assert all("LIMIT" in s for s in reads), reads


def test_bad_paging_is_refused_naming_the_field(store: Store) -> None:
    apply_estate(store, parse_estate(_estate_of(3)), actor="test")
    for criteria, limit, cursor, field in [
        (catalog.Criteria(sort="name"), 5, "%%%", "cursor"),
        (catalog.Criteria(sort="name"), 5, "", None),
        (catalog.Criteria(sort="expires"), 5, None, "sort"),
        (catalog.Criteria(sort="name", descending=True), 5, None, "sort"),
        (catalog.Criteria(sort="name"), 0, None, "limit"),
        (catalog.Criteria(sort="name"), catalog.MAX_PAGE_SIZE + 1, None, "limit"),
    ]:
        if field is None:
            assert len(catalog.page_by_name(store, criteria, now=NOW, limit=limit).rows) == 3
            continue
        with pytest.raises(ConfigError) as refused:
            catalog.page_by_name(store, criteria, now=NOW, limit=limit, cursor=cursor)
        assert refused.value.path == field


def test_a_page_reads_the_synced_secret_ends_of_its_own_entra_applications_only(
    store: Store,
) -> None:
    """An Entra credential not yet rotated by keyshift is due before its application's
    secrets end, as last synced: a page reads those ends for its own applications, not
    for the whole inventory, and shows what the whole listing shows."""
    integration = {
        "name": "contoso",
        "type": "entra",
        "tenant_id": "00000000-0000-0000-0000-00000000000a",
        "client_id": "00000000-0000-0000-0000-00000000000b",
        "auth": {"method": "client_secret", "secret_from": "env:KS_TEST_SECRET"},
    }
    apps = [f"00000000-0000-0000-0000-{i:012d}" for i in range(6)]
    credentials = [
        {
            "name": f"entra-{i}",
            "owner": "team-a",
            "environment": "dev",
            "auto_rotate": True,
            "policy": {"rotate_before_expiry": "7d"},
            "provider": {"type": "entra_client_secret", "integration": "contoso", "app_id": app},
            "actions": [],
        }
        for i, app in enumerate(apps)
    ]
    estate = parse_estate({"integrations": [integration], "credentials": credentials})
    apply_estate(store, estate, actor="test")
    with store.transaction() as s:
        for i, app in enumerate([*apps, "00000000-0000-0000-0000-999999999999"]):
            row = DiscoveredApp(
                id=f"app-{i}",
                integration="contoso",
                object_id=f"object-{i}",
                app_id=app,
                display_name=f"app {i}",
                owners=[],
                first_seen=NOW,
                changed_at=NOW,
            )
            s.add(row)
            s.flush()
            for k in range(2):
                s.add(
                    DiscoveredCredential(
                        id=f"secret-{i}-{k}",
                        app_row_id=row.id,
                        kind="client_secret",
                        key_id=f"key-{i}-{k}",
                        end_at=NOW + timedelta(days=10 * i + k),
                        first_seen=NOW,
                    )
                )
    whole = {r.credential: r.next_rotation_at for r in rotations.status_rows(store, now=NOW)}
    assert whole["entra-3"] == NOW + timedelta(days=31 - 7), "before the latest secret end"
    page, statements = _first_page(store, 2)
    assert {r.credential: r.next_rotation_at for r in page.rows} == {
        name: whole[name] for name in ("entra-0", "entra-1")
    }
    [ends] = [s for s in statements if "FROM discovered_apps" in s]
    assert " IN (" in ends, "the page's applications only"
