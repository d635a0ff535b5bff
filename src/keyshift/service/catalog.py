"""Filtering, sorting and paging the credentials' status rows: the one rule behind the
dashboard's credentials page and `GET /v1/credentials?lifecycle=…&owner=…`."""

from __future__ import annotations

import base64
import binascii
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func

from keyshift.errors import ConfigError
from keyshift.service import rotations
from keyshift.service.rotations import StatusRow
from keyshift.store.models import CredentialRow

if TYPE_CHECKING:
    from keyshift.store.store import Store

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_FAR = datetime.max.replace(tzinfo=UTC)


def _when(value: datetime | None) -> tuple[int, Any]:
    # Rows without a date sort after the dated ones (first when the order is reversed).
    # Every date of a status row is timezone-aware.
    return (0, value) if value is not None else (1, _FAR)


SORTS: dict[str, Callable[[StatusRow], Any]] = {
    "name": lambda r: r.credential,
    "lifecycle": lambda r: (r.lifecycle.value, r.credential),
    "expires": lambda r: (_when(r.expires_at), r.credential),
    "last_rotated": lambda r: (_when(r.last_rotated_at), r.credential),
    "next_rotation": lambda r: (_when(r.next_rotation_at), r.credential),
    "owner": lambda r: (r.owner or "~", r.credential),
    "environment": lambda r: (r.environment or "~", r.credential),
    "provider": lambda r: (r.provider, r.credential),
}
"""The columns a listing sorts by."""


@dataclass(frozen=True)
class Criteria:
    """Which rows, in which order, which page. Empty filters match every row."""

    lifecycle: str | None = None
    owner: str | None = None
    environment: str | None = None
    provider: str | None = None
    text: str | None = None
    """A part of the credential's name."""
    sort: str = "expires"
    descending: bool = False
    page: int = 1
    page_size: int | None = PAGE_SIZE
    """None: every matching row on one page."""

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise ConfigError("sort", f"must be one of {', '.join(SORTS)}")
        if self.page < 1:
            raise ConfigError("page", "must be 1 or more")
        if self.page_size is not None and not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ConfigError("page_size", f"must be between 1 and {MAX_PAGE_SIZE}")

    def filtering(self) -> bool:
        """Whether any filter is set (every row matches otherwise)."""
        return any((self.lifecycle, self.owner, self.environment, self.provider, self.text))

    def matches(self, row: StatusRow) -> bool:
        return (
            (not self.lifecycle or row.lifecycle.value.lower() == self.lifecycle.lower())
            and (not self.owner or row.owner == self.owner)
            and (not self.environment or row.environment == self.environment)
            and (not self.provider or row.provider == self.provider)
            and (not self.text or self.text.lower() in row.credential.lower())
        )


@dataclass(frozen=True)
class Listing:
    rows: list[StatusRow]
    """The rows of the page asked for."""
    total: int
    """Rows matching the filters, over every page."""
    page: int
    pages: int
    owners: list[str]
    environments: list[str]
    providers: list[str]
    """The values each filter can take, over every row (for the filter's choices)."""


def listing(rows: Sequence[StatusRow], criteria: Criteria) -> Listing:
    """The page of `rows` that `criteria` asks for."""
    kept: Sequence[StatusRow] = rows
    if criteria.filtering():
        kept = [r for r in rows if criteria.matches(r)]
    size = criteria.page_size or max(1, len(kept))
    page = criteria.page if criteria.page_size else 1
    start = (page - 1) * size
    key = SORTS[criteria.sort]
    if (start + size) * 4 <= len(kept):
        # An early page of many rows: only the rows up to its end are put in order. Every
        # key ends with the unique name, so these are the sorted rows' first ones.
        pick = heapq.nlargest if criteria.descending else heapq.nsmallest
        ordered = pick(start + size, kept, key=key)
    else:
        ordered = sorted(kept, key=key, reverse=criteria.descending)
    return Listing(
        rows=ordered[start : start + size],
        total=len(kept),
        page=page,
        pages=max(1, -(-len(kept) // size)),
        owners=sorted({r.owner for r in rows if r.owner}),
        environments=sorted({r.environment for r in rows if r.environment}),
        providers=sorted({r.provider for r in rows}),
    )


# Paging by cursor -------------------------------------------------------------------------

SCAN_CHUNK = 500
"""Credentials read per query while a lifecycle filter (decided in Python) drops rows."""


@dataclass(frozen=True)
class Page:
    rows: list[StatusRow]
    """Up to `limit` rows, by name."""
    next_cursor: str | None
    """What to pass as `cursor` for the rows after these; None on the last page."""


def encode_cursor(name: str) -> str:
    """The opaque cursor that continues a listing after the credential `name`."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The credential name a cursor continues after (ConfigError naming `cursor`)."""
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if not name:
        raise ConfigError("cursor", "is not a cursor a listing gave; start without one")
    return name


def page_by_name(
    store: Store, criteria: Criteria, *, now: datetime, limit: int, cursor: str | None = None
) -> Page:
    """The first `limit` rows by name that match `criteria`, after `cursor`: one page of
    a large estate, read with indexed queries that stop at the page (the whole listing
    is never loaded). Filters on owner, environment, provider and name are conditions
    of the queries; a lifecycle filter reads on in chunks until the page is full."""
    if criteria.sort != "name" or criteria.descending:
        raise ConfigError("sort", "a listing paged by cursor is by name, ascending")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ConfigError("limit", f"must be between 1 and {MAX_PAGE_SIZE}")
    sql = _sql_criteria(criteria)
    after = decode_cursor(cursor) if cursor else None
    chunk = limit + 1 if not criteria.lifecycle else max(limit + 1, SCAN_CHUNK)
    kept: list[StatusRow] = []
    with store.transaction() as s:
        while len(kept) <= limit:
            where = sql if after is None else (*sql, CredentialRow.name > after)
            read = [row for _cred, row in rotations.status_of(s, where, now=now, limit=chunk)]
            kept += [r for r in read if criteria.matches(r)]
            if len(read) < chunk:
                break
            after = read[-1].credential
    more = len(kept) > limit
    rows = kept[:limit]
    return Page(rows, encode_cursor(rows[-1].credential) if more else None)


def _sql_criteria(criteria: Criteria) -> tuple[ColumnElement[bool], ...]:
    """The filters of `criteria` that the credentials table answers (all but lifecycle).
    Rows they keep are still checked by `Criteria.matches`."""
    out: list[ColumnElement[bool]] = []
    if criteria.owner:
        out.append(CredentialRow.owner == criteria.owner)
    if criteria.environment:
        out.append(CredentialRow.environment == criteria.environment)
    if criteria.provider:
        out.append(CredentialRow.provider_type == criteria.provider)
    if criteria.text and criteria.text.isascii():
        # SQLite's lower() folds ASCII only: other text is matched in Python alone.
        out.append(func.lower(CredentialRow.name).contains(criteria.text.lower(), autoescape=True))
    return tuple(out)
